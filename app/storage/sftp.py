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
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import anyio
import asyncssh
from asyncssh.constants import FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_REGULAR, FILEXFER_TYPE_SYMLINK
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    InvalidPath,
    IsADirectoryArtifact,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import FileInfo, ObjectMeta, WriteOptions
from app.storage.chunks import rechunk

logger = logging.getLogger("artifact_proxy.storage.sftp")
# asyncssh logs every connection and channel at INFO; keep it quiet unless an operator lowers the level.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")
MISSING = (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath, asyncssh.SFTPNotADirectory)
# Errors after which the connection is unusable: drop it, reconnect on the next request.
CONNECTION_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection, asyncssh.DisconnectError,
                   asyncssh.ChannelOpenError, ConnectionError)
FAILURES = (asyncssh.Error, OSError, TimeoutError)  # what `map_error` translates


class SFTPConfig(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    # A known_hosts file, or "none" to accept any host key (only on a network you trust).
    known_hosts: str | None = Field(None, validation_alias="ARTIFACT_PROXY_SFTP_KNOWN_HOSTS")
    identity_file: str | None = Field(None, validation_alias="ARTIFACT_PROXY_SFTP_IDENTITY_FILE")
    # An OpenSSH client config to read instead of ~/.ssh/config.
    ssh_config: str | None = Field(None, validation_alias="ARTIFACT_PROXY_SFTP_CONFIG")
    keepalive: float = Field(15.0, ge=0, validation_alias="ARTIFACT_PROXY_SFTP_KEEPALIVE")


@dataclass(frozen=True, slots=True)
class SFTPTarget:
    host: str
    port: int | None
    username: str | None
    password: str | None
    root: str  # absolute, or relative to the login directory ("." for the login directory itself)


def parse_sftp_uri(uri: str) -> SFTPTarget:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "sftp" or not parts.hostname:
        raise StoreConfigError(f"Use sftp://[user@]host[:port]/path, not {uri!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise StoreConfigError(f"Invalid port in {uri!r}") from exc
    path = unquote(parts.path)
    # As in curl, `/~/dir` is relative to the login directory; any other path is absolute.
    root = "." if path in ("", "/~", "/~/") else path[3:].rstrip("/") if path.startswith("/~/") else path.rstrip("/")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SFTPTarget(parts.hostname, port, user, password, root or "/")


def check_files(config: SFTPConfig) -> None:
    """Read the key files once at startup, so a bad one stops the service with a clear message, not a 502 later."""
    files: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("KNOWN_HOSTS", config.known_hosts, asyncssh.read_known_hosts),
        ("IDENTITY_FILE", config.identity_file, asyncssh.read_private_key),
        ("CONFIG", config.ssh_config, lambda path: Path(path).read_text()),
    ]
    for name, value, read in files:
        if not value or value.lower() == "none":
            continue
        path = str(Path(value).expanduser())
        if not Path(path).is_file():
            raise StoreConfigError(f"ARTIFACT_PROXY_SFTP_{name}: the file {value!r} does not exist")
        try:
            read(path)
        except (OSError, ValueError) as exc:  # an encrypted key without the agent lands here too
            raise StoreConfigError(f"ARTIFACT_PROXY_SFTP_{name}: cannot use {value!r}: {exc}") from exc


def map_error(exc: BaseException, what: str, where: str) -> ArtifactProxyError:
    """Translate asyncssh and socket errors into the service's hierarchy; details go to the log."""
    logger.warning("sftp %s %r failed: %s: %s", what, where, type(exc).__name__, exc)
    if isinstance(exc, MISSING):
        return ArtifactNotFound(where)
    if isinstance(exc, TimeoutError):
        return StorageTimeout(f"The SFTP server did not answer in time while {what}")
    if isinstance(exc, (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable, ValueError)):
        return StorageMisconfigured(
            f"The SFTP server refused the proxy's login or its host key is not trusted ({type(exc).__name__}): "
            "check the user, keys and ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"
        )
    if isinstance(exc, (asyncssh.SFTPPermissionDenied, asyncssh.SFTPWriteProtect)):
        return StorageMisconfigured("The SFTP server denied access: check the account's rights on the destination")
    if isinstance(exc, (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)):
        return StorageMisconfigured("The SFTP server is out of space or over quota")
    if isinstance(exc, asyncssh.SFTPInvalidFilename):
        return InvalidPath()
    if isinstance(exc, (*CONNECTION_LOST, OSError)):
        return StorageUnavailable(f"The SFTP server is unreachable ({type(exc).__name__})")
    return ArtifactProxyError(f"SFTP error while {what}")


def _meta(attrs: asyncssh.SFTPAttrs) -> ObjectMeta:
    size, mtime = attrs.size or 0, attrs.mtime or 0
    return ObjectMeta(size=size, etag=f'"{mtime:x}-{size:x}"', last_modified=float(mtime) if mtime else None)


class SFTPReadHandle:
    def __init__(self, store: SFTPStore, sftp: asyncssh.SFTPClient, file: asyncssh.SFTPClientFile, meta: ObjectMeta,
                 where: str) -> None:
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


class SFTPStore:
    """Artifacts as files under a directory on an SFTP server."""

    multipart_enabled = False
    presigned_download_enabled = False

    def __init__(self, uri: str, settings: Settings, config: SFTPConfig | None = None) -> None:
        self.settings, self.config = settings, config or SFTPConfig()
        self.target = parse_sftp_uri(uri)
        self.root = self.target.root
        check_files(self.config)
        if self.target.password:
            logger.warning(
                "the sftp:// destination carries a password: prefer key-based login (ssh agent, "
                "ARTIFACT_PROXY_SFTP_IDENTITY_FILE or ~/.ssh/config); a URI ends up in logs and process listings"
            )
        self._timeout = settings.storage_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._attempts = 0  # connection attempts finished; with `_failure`, queued requests share a failed one
        self._failure: ArtifactProxyError | None = None

    # connection ----------------------------------------------------------------------------------------------------
    def _connect_options(self) -> dict[str, Any]:
        target, config = self.target, self.config
        options: dict[str, Any] = {
            "host": target.host,
            "connect_timeout": min(self._timeout, 30.0),
            "login_timeout": min(self._timeout, 30.0),
            # Notices a server that vanished without closing the socket, instead of hanging requests on it.
            "keepalive_interval": config.keepalive,
            "keepalive_count_max": 3,
        }
        optional = {"port": target.port, "username": target.username, "password": target.password}
        options.update({key: value for key, value in optional.items() if value is not None})
        if config.known_hosts:
            options["known_hosts"] = None if config.known_hosts.lower() == "none" else config.known_hosts
        if config.identity_file:
            options["client_keys"] = [str(Path(config.identity_file).expanduser())]
        if config.ssh_config:
            options["config"] = [str(Path(config.ssh_config).expanduser())]
        return options

    async def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
            return self._sftp
        attempts_seen = self._attempts
        async with self._lock:  # one reconnect, however many requests noticed the loss
            if self._sftp is None or self._conn is None or self._conn.is_closed():
                if self._attempts != attempts_seen and self._failure is not None:
                    raise self._failure  # queued behind an attempt that failed: fail now, not one timeout each
                await self._drop(self._sftp)
                try:
                    self._conn, self._sftp = await self._connect()
                except ArtifactProxyError as exc:
                    self._failure = exc
                    raise
                else:
                    self._failure = None
                finally:
                    self._attempts += 1
            return self._sftp

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        try:
            conn = await asyncssh.connect(**self._connect_options())
            try:
                sftp = await conn.start_sftp_client()
                if self.root not in (".", "/"):
                    await self._makedirs(sftp, self.root)
            except BaseException:
                conn.close()
                raise
        except (*FAILURES, ValueError) as exc:  # ValueError: asyncssh refusing a config file, key or option
            raise map_error(exc, "connecting", self.target.host) from exc
        logger.info("connected to sftp://%s, root %r", self.target.host, self.root)
        return conn, sftp

    async def _drop(self, sftp: asyncssh.SFTPClient | None) -> None:
        """Forget the connection behind `sftp` (unless a newer one replaced it already)."""
        if sftp is None or sftp is not self._sftp:
            return
        conn, self._conn, self._sftp = self._conn, None, None
        sftp.exit()
        if conn is not None:
            conn.close()
            with suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    async def run(self, what: str, where: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
                  retry: bool = True, timed: bool = True) -> T:
        """Run `op` on the shared client; after a lost connection, retry once on a new one when `retry`."""
        for attempt in (1, 2):
            sftp = await self._client()
            try:
                async with asyncio.timeout(self._timeout if timed else None):
                    return await op(sftp)
            except CONNECTION_LOST as exc:
                await self._drop(sftp)
                if attempt == 2 or not retry:
                    raise map_error(exc, what, where) from exc
                logger.info("sftp connection lost while %s %r; reconnecting", what, where)
            except FAILURES as exc:
                raise map_error(exc, what, where) from exc
        raise AssertionError("unreachable")

    async def io(self, what: str, where: str, sftp: asyncssh.SFTPClient, step: Callable[[], Awaitable[T]]) -> T:
        """One transfer step on a file opened through `sftp`: bounded in time, errors mapped, a lost link dropped."""
        try:
            async with asyncio.timeout(self._timeout):
                return await step()
        except CONNECTION_LOST as exc:
            await self._drop(sftp)
            raise map_error(exc, what, where) from exc
        except FAILURES as exc:
            raise map_error(exc, what, where) from exc

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
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = WriteOptions()
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
            await self.run("publishing", path.canonical,
                           lambda sftp: self._publish(sftp, temp, target, path, options.create_only), retry=False)
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

    async def _makedirs(self, sftp: asyncssh.SFTPClient, directory: str, path: ArtifactPath | None = None) -> None:
        """mkdir -p, from the deepest existing directory down: one request per missing level."""
        if directory in ("", ".", "/"):
            return
        try:
            await sftp.mkdir(directory)
            return
        except MISSING:
            await self._makedirs(sftp, posixpath.dirname(directory), path)
            with suppress(asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):  # a concurrent upload made it
                await sftp.mkdir(directory)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            pass  # it exists (or cannot be made): checked below
        if not await sftp.isdir(directory):
            where = path.canonical if path else directory
            raise InvalidParameter(f"Cannot write '{where}': a parent path is a file")

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

    async def _publish(self, sftp: asyncssh.SFTPClient, temp: str, target: str, path: ArtifactPath,
                       create_only: bool) -> None:
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

