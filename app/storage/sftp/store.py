"""SFTPStore: artifacts as files under a directory on an SFTP server, `sftp://[user@]host[:port]/path`, on asyncssh.

- Login as OpenSSH would: ssh agent, identity files and `~/.ssh/config` host entries (or the files the settings name).
  A password in the URI works but is logged against: it travels with the destination into logs and process lists.
- Host keys are checked against known_hosts unless `ARTIFACT_PROXY_SFTP_KNOWN_HOSTS=none`.
- One SSH connection per process (`connection`), opened in `start()`; SFTP multiplexes concurrent requests over it.
- Uploads stream to a temp file and rename into place (`upload`); downloads read a handle opened once (`read`).
  Multipart and presigned URLs do not exist here: the routes answer 501.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from functools import partial

import asyncssh
from asyncssh.constants import FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_REGULAR, FILEXFER_TYPE_SYMLINK

from app.errors import StorageTimeout, StorageUnavailable
from app.paths import ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.base import DEFAULT_WRITE, Capabilities, FileInfo, ObjectMeta, WalkEntry, WriteOptions
from app.storage.remote_paths import by_name, listable, remote_path
from app.storage.sftp.config import check_files, parse_sftp_uri
from app.storage.sftp.connection import SFTPConnection
from app.storage.sftp.errors import MISSING
from app.storage.sftp.read import SFTPReadHandle, open_download, stat_file
from app.storage.sftp.upload import SFTPUploads
from app.storage.walks import Level, visible, walk_levels

logger = logging.getLogger("artifact_proxy.storage.sftp")


class SFTPStore:
    """Artifacts as files under a directory on an SFTP server."""

    capabilities = Capabilities()  # SFTP cannot presign: multipart and presigned downloads answer 501

    def __init__(self, uri: str, settings: Settings) -> None:
        self.settings, config = settings, settings.sftp
        self.target = parse_sftp_uri(uri)
        self.root = self.target.root
        check_files(config)
        self._connection = SFTPConnection(self.target, config, settings.storage_timeout)
        self._uploads = SFTPUploads(self._connection, settings)
        if self.target.password:
            logger.warning(
                "the sftp:// destination carries a password: prefer key-based login (ssh agent, "
                "ARTIFACT_PROXY_SFTP_IDENTITY_FILE or ~/.ssh/config); a URI ends up in logs and process listings"
            )

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._connection.open()
        except (StorageUnavailable, StorageTimeout) as exc:
            # Serve anyway: requests answer 503 until the server is back, then the connection is reopened.
            logger.warning("SFTP server %s not reachable at startup (%s); will retry on use", self.target.host, exc)

    async def close(self) -> None:
        await self._connection.close()

    async def check_ready(self) -> None:
        await self._connection.run("checking the root", self.root, lambda sftp: sftp.stat(self.root))

    # read and write ------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        return await stat_file(self._connection, remote_path(self.root, path), path.canonical)

    async def open_read(self, path: EntryPath) -> SFTPReadHandle:
        chunk_size = self.settings.download_chunk_size
        return await open_download(self._connection, chunk_size, remote_path(self.root, path), path.canonical)

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        await self._uploads.write(remote_path(self.root, path), path.canonical, chunks, options.create_only)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        remote = remote_path(self.root, path)

        async def op(sftp: asyncssh.SFTPClient) -> list[FileInfo]:
            try:
                names = await sftp.readdir(remote)
            except MISSING:
                return []
            except asyncssh.SFTPFailure:
                if await sftp.isdir(remote):
                    raise
                return []  # a file: the contract lists it as nothing
            return by_name([await _info(sftp, remote, name) for name in names if listable(str(name.filename))])

        return await self._connection.run("listing", path.canonical, op)

    async def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        """One READDIR per directory; links are not followed (the backend interface says why)."""
        base = remote_path(self.root, path)

        async def level(sftp: asyncssh.SFTPClient, relative: str) -> Level:
            try:
                names = await sftp.readdir(posixpath.join(base, relative) if relative else base)
            except asyncssh.SFTPError:
                return [], []  # missing, a file, or gone since its parent was read
            found: list[WalkEntry] = []
            subdirs: list[str] = []
            for name in names:
                filename, attrs = str(name.filename), name.attrs
                if not visible(filename):
                    continue
                child = f"{relative}/{filename}" if relative else filename
                if attrs.type == FILEXFER_TYPE_DIRECTORY:
                    subdirs.append(child)
                elif attrs.type == FILEXFER_TYPE_REGULAR:
                    found.append(WalkEntry(child, attrs.size or 0, attrs.mtime))
            return found, subdirs

        async def read_level(relative: str) -> Level:
            return await self._connection.run("listing", path.canonical, partial(level, relative=relative))

        async for entry in walk_levels(read_level):
            yield entry

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: EntryPath) -> None:
        remote = remote_path(self.root, path)

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
        await self._connection.run("deleting", path.canonical, op, timed=False)


async def _info(sftp: asyncssh.SFTPClient, directory: str, name: asyncssh.SFTPName) -> FileInfo | None:
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
