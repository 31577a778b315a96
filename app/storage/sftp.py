"""SFTP backend: `sftp://[user@]host[:port]/path`, on asyncssh.

- Login as OpenSSH would: ssh agent, identity files and `~/.ssh/config` host entries (or the files the settings name).
  A password in the URI works but is logged against: it travels with the destination into logs and process lists.
- Host keys are checked against known_hosts unless `ARTIFACT_PROXY_SFTP_KNOWN_HOSTS=none`.
- One SSH connection per process, opened in `start()`; SFTP multiplexes concurrent requests over it. A lost
  connection is reopened on the next request, and idempotent operations are retried once on the new one.
- Uploads stream to `.artifact.uploading.<random>` beside the target, then rename into place: posix-rename replaces
  atomically; create-only writes hard-link (fails if the target exists) or fall back to the standard rename, which
  never replaces. Downloads read at offsets in bounded chunks from a handle opened once, so one response never mixes
  two versions. Multipart and presigned URLs do not exist here: the routes answer 501.

Settings, login options and the shared connection live in `sftp_connect`, error mapping in `sftp_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial
from typing import cast

import anyio
import asyncssh
from asyncssh.constants import FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_REGULAR, FILEXFER_TYPE_SYMLINK

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    InvalidParameter,
    IsADirectoryArtifact,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage.base import DEFAULT_WRITE, FileInfo, ObjectMeta, WriteOptions
from app.storage.chunks import rechunk
from app.storage.sftp_connect import SFTPConfig, SFTPConnection, SFTPTarget, check_files, parse_sftp_uri
from app.storage.sftp_errors import MISSING

# SFTPConfig, SFTPTarget and parse_sftp_uri live in sftp_connect; callers import them from here too.
__all__ = ["SFTPConfig", "SFTPReadHandle", "SFTPStore", "SFTPTarget", "parse_sftp_uri"]

logger = logging.getLogger("artifact_proxy.storage.sftp")


def _meta(attrs: asyncssh.SFTPAttrs) -> ObjectMeta:
    size, mtime = attrs.size or 0, attrs.mtime or 0
    return ObjectMeta(size=size, etag=f'"{mtime:x}-{size:x}"', last_modified=float(mtime) if mtime else None)


class SFTPReadHandle:
    def __init__(
        self, store: SFTPStore, sftp: asyncssh.SFTPClient, file: asyncssh.SFTPClientFile, meta: ObjectMeta, where: str
    ) -> None:
        self.meta = meta
        self._store, self._sftp, self._file, self._where = store, sftp, file, where

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset, chunk_size = start, self._store.settings.download_chunk_size
        while offset < end:
            read = partial(self._read, min(chunk_size, end - offset), offset)
            chunk = await self._store.io("reading", self._where, self._sftp, read)
            if not chunk:  # truncated underneath us: stop rather than spin
                return
            offset += len(chunk)
            yield chunk

    async def _read(self, size: int, offset: int) -> bytes:
        return cast(bytes, await self._file.read(size, offset))  # opened "rb": always bytes

    async def aclose(self) -> None:
        with suppress(asyncssh.Error, OSError):
            await self._file.close()


class SFTPStore(SFTPConnection):
    """Artifacts as files under a directory on an SFTP server."""

    multipart_enabled = False
    presigned_download_enabled = False

    def __init__(self, uri: str, settings: Settings, config: SFTPConfig | None = None) -> None:
        self.settings, config = settings, config or SFTPConfig()
        super().__init__(parse_sftp_uri(uri), config, settings.storage_timeout)
        check_files(self.config)
        if self.target.password:
            logger.warning(
                "the sftp:// destination carries a password: prefer key-based login (ssh agent, "
                "ARTIFACT_PROXY_SFTP_IDENTITY_FILE or ~/.ssh/config); a URI ends up in logs and process listings"
            )

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._client()
        except (StorageUnavailable, StorageTimeout) as exc:
            # Serve anyway: requests answer 503 until the server is back, then the connection is reopened.
            logger.warning("SFTP server %s not reachable at startup (%s); will retry on use", self.target.host, exc)

    async def close(self) -> None:
        await self._drop(self._sftp)

    async def check_ready(self) -> None:
        await self.run("checking the root", self.root, lambda sftp: sftp.stat(self.root))

    # names ---------------------------------------------------------------------------------------------------------
    def _remote(self, path: ArtifactPath) -> str:
        return posixpath.join(self.root, path.canonical) if path.canonical else self.root

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> SFTPReadHandle:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient) -> SFTPReadHandle:
            try:
                file = await sftp.open(remote, "rb")
            except MISSING as exc:
                raise ArtifactNotFound(path.canonical) from exc
            except (asyncssh.SFTPFailure, asyncssh.SFTPFileIsADirectory, asyncssh.SFTPPermissionDenied):
                # Some servers refuse to open a directory: tell a directory apart from a real refusal.
                if await sftp.isdir(remote):
                    raise IsADirectoryArtifact(path.canonical) from None
                raise
            try:
                attrs = await file.stat()
                if attrs.type == FILEXFER_TYPE_DIRECTORY:
                    raise IsADirectoryArtifact(path.canonical)
                if attrs.type != FILEXFER_TYPE_REGULAR:
                    raise ArtifactNotFound(path.canonical)
            except BaseException:
                with suppress(Exception):
                    await file.close()
                raise
            return SFTPReadHandle(self, sftp, file, _meta(attrs), path.canonical)

        return await self.run("opening", path.canonical, op)

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        if path.is_root:
            raise InvalidParameter("Artifact path must include a filename (cannot end with '/').")
        target = self._remote(path)
        temp = posixpath.join(posixpath.dirname(target), f"{TEMP_PREFIX}{secrets.token_hex(16)}")
        sftp, file = await self.run("creating", path.canonical, lambda sftp: self._open_temp(sftp, temp, path))
        try:
            await self._pump(sftp, file, chunks, path.canonical)
            if self.settings.fsync_uploads:
                await self.io("syncing", path.canonical, sftp, partial(_fsync, file))
            await self.io("closing", path.canonical, sftp, file.close)
            await self.run(
                "publishing",
                path.canonical,
                lambda sftp: self._publish(sftp, temp, target, path, options.create_only),
                retry=False,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):  # a client that went away must not leave a temp file behind
                await self._discard(file, temp)
            raise

    async def _open_temp(
        self, sftp: asyncssh.SFTPClient, temp: str, path: ArtifactPath
    ) -> tuple[asyncssh.SFTPClient, asyncssh.SFTPClientFile]:
        try:
            return sftp, await sftp.open(temp, "xb")
        except MISSING:
            await self._makedirs(sftp, posixpath.dirname(temp), path)
            return sftp, await sftp.open(temp, "xb")

    async def _pump(
        self, sftp: asyncssh.SFTPClient, file: asyncssh.SFTPClientFile, chunks: AsyncIterator[bytes], where: str
    ) -> None:
        """Write the stream in blocks, sending one block while the next is received: at most two in memory."""
        offset, pending = 0, None
        try:
            async for block in rechunk(chunks, self.settings.upload_chunk_size):
                if pending is not None:
                    await pending
                # The coroutine is made inside the task: a task cancelled before it runs leaves none unawaited.
                pending = asyncio.ensure_future(self.io("writing", where, sftp, partial(file.write, block, offset)))
                offset += len(block)
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with suppress(BaseException):
                    await pending

    async def _publish(
        self, sftp: asyncssh.SFTPClient, temp: str, target: str, path: ArtifactPath, create_only: bool
    ) -> None:
        try:
            if create_only:
                await self._create(sftp, temp, target)
            else:
                await self._replace(sftp, temp, target)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPFileIsADirectory):
            if await sftp.isdir(target):
                raise InvalidParameter(f"Cannot write '{path.canonical}': it is a directory") from None
            if create_only and await sftp.exists(target):
                raise AlreadyExists(path.canonical) from None
            raise

    async def _create(self, sftp: asyncssh.SFTPClient, temp: str, target: str) -> None:
        try:
            await sftp.link(temp, target)  # a hard link fails if the target exists: atomic create-only
        except asyncssh.SFTPOpUnsupported:
            await sftp.rename(temp, target)  # the standard SFTP rename never replaces an existing file
            return
        with suppress(asyncssh.SFTPError):
            await sftp.remove(temp)

    async def _replace(self, sftp: asyncssh.SFTPClient, temp: str, target: str) -> None:
        try:
            await sftp.posix_rename(temp, target)
        except asyncssh.SFTPOpUnsupported:
            # A server without posix-rename: readers may briefly see no file, never a partial one.
            logger.debug("sftp server lacks posix-rename; replacing %r in two steps", target)
            with suppress(*MISSING):
                await sftp.remove(target)
            await sftp.rename(temp, target)

    async def _discard(self, file: asyncssh.SFTPClientFile, temp: str) -> None:
        with suppress(Exception):
            await asyncio.wait_for(file.close(), 5)
        with suppress(Exception):  # best effort: a leftover temp file stays hidden from listings
            await asyncio.wait_for(self.run("discarding", temp, lambda sftp: sftp.remove(temp)), 10)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient) -> list[FileInfo]:
            try:
                names = await sftp.readdir(remote)
            except MISSING:
                return []
            except asyncssh.SFTPFailure:
                if await sftp.isdir(remote):
                    raise
                return []  # a file: the contract lists it as nothing
            infos = [await self._info(sftp, remote, name) for name in names if _listable(name.filename)]
            return sorted((info for info in infos if info is not None), key=lambda info: info.path)

        return await self.run("listing", path.canonical, op)

    async def _info(self, sftp: asyncssh.SFTPClient, directory: str, name: asyncssh.SFTPName) -> FileInfo | None:
        attrs = name.attrs
        if attrs.type == FILEXFER_TYPE_SYMLINK:  # listed as what it points to; a dangling link is not listed
            try:
                attrs = await sftp.stat(posixpath.join(directory, str(name.filename)))
            except asyncssh.SFTPError:
                return None
        if attrs.type == FILEXFER_TYPE_DIRECTORY:
            return FileInfo(str(name.filename), True)
        if attrs.type == FILEXFER_TYPE_REGULAR:
            return FileInfo(str(name.filename), False, attrs.size)
        return None

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient) -> None:
            try:
                attrs = await sftp.lstat(remote)  # lstat: a symlink is removed, never what it points to
            except MISSING:
                return
            if attrs.type == FILEXFER_TYPE_DIRECTORY:
                await sftp.rmtree(remote)
            else:
                with suppress(*MISSING):
                    await sftp.remove(remote)

        # No deadline: a large tree takes as long as it takes; keepalives still notice a dead server.
        await self.run("deleting", path.canonical, op, timed=False)


async def _fsync(file: asyncssh.SFTPClientFile) -> None:
    with suppress(asyncssh.SFTPOpUnsupported):  # fsync@openssh.com is an extension: without it, the server decides
        await file.fsync()


def _listable(name: str | bytes) -> bool:
    text = str(name)
    return text not in (".", "..") and not text.startswith(TEMP_PREFIX)
