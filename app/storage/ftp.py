"""FTP backend: `ftp://[user[:password]@]host[:port]/path`, and `ftps://` for explicit TLS (AUTH TLS), on aioftp.

- aioftp rather than a thread-wrapped ftplib: native asyncio, so a transfer costs no thread hop per chunk, and it
  does explicit TLS with the session reused on data connections (which vsftpd and others demand). Its `list`,
  `stat` fallback and `get_stream` leak the data socket when the server refuses the command, so transfers are
  opened by our own code instead (`ftp_commands`; the pool and the TLS workaround are in `ftp_session`, error
  mapping in `ftp_errors`).
- FTP runs one command at a time per connection: a small pool of logged-in connections per process, passive mode
  only. A connection whose state is unknown (a transfer cut short, a timeout) is closed, never reused; an idle one
  is probed with NOOP before reuse, and idempotent operations are retried once on a fresh connection.
- Uploads STOR `.artifact.uploading.<random>` beside the target, then RNFR/RNTO into place. FTP has no atomic
  create-only rename: create-only writes check for the target just before the rename (a concurrent writer can win
  that race). Downloads RETR with a REST offset for ranges. MLSD/MLST when the server has them, LIST otherwise.
  Multipart and presigned URLs do not exist here: the routes answer 501.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import aioftp
import anyio
from aioftp.client import DataConnectionThrottleStreamIO
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    InvalidParameter,
    IsADirectoryArtifact,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import DEFAULT_WRITE, FileInfo, ObjectMeta, WriteOptions
from app.storage.ftp_commands import FTPCommands, file_info, object_meta
from app.storage.ftp_errors import ftp_errors, map_error, refused, suppress_refused
from app.storage.ftp_session import FTPClient, FTPPool, Lease

logger = logging.getLogger("artifact_proxy.storage.ftp")

T = TypeVar("T")
MIN_YIELD = 64 * 1024  # download pieces are gathered to at least this size: fewer, larger ASGI sends


class FTPConfig(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    password: SecretStr | None = Field(None, validation_alias="ARTIFACT_PROXY_FTP_PASSWORD")  # keeps it out of URIs
    tls: bool = Field(False, validation_alias="ARTIFACT_PROXY_FTP_TLS")  # AUTH TLS on ftp:// too
    ca_file: str | None = Field(None, validation_alias="ARTIFACT_PROXY_FTP_CA_FILE")
    connections: int = Field(8, ge=1, le=64, validation_alias="ARTIFACT_PROXY_FTP_CONNECTIONS")


@dataclass(frozen=True, slots=True)
class FTPTarget:
    host: str
    port: int
    user: str
    password: str
    root: str  # absolute, or relative to the login directory ("." for the login directory itself)
    tls: bool


def parse_ftp_uri(uri: str, config: FTPConfig) -> FTPTarget:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("ftp", "ftps") or not parts.hostname:
        raise StoreConfigError(f"Use ftp://[user[:password]@]host[:port]/path (or ftps://), not {uri!r}")
    try:
        port = parts.port or 21
    except ValueError as exc:
        raise StoreConfigError(f"Invalid port in {uri!r}") from exc
    path = unquote(parts.path)
    # As in curl, `/~/dir` is relative to the login directory; any other path is absolute.
    root = "." if path in ("", "/~", "/~/") else path[3:].rstrip("/") if path.startswith("/~/") else path.rstrip("/")
    password = unquote(parts.password) if parts.password is not None else None
    if password is None:
        password = config.password.get_secret_value() if config.password else "anonymous@"
    user = unquote(parts.username) if parts.username else "anonymous"
    return FTPTarget(parts.hostname, port, user, password, root or "/", scheme == "ftps" or config.tls)


class FTPReadHandle:
    def __init__(self, store: FTPStore, remote: str, meta: ObjectMeta, where: str) -> None:
        self.meta = meta
        self._store, self._remote, self._where = store, remote, where
        self._streams: list[AsyncGenerator[bytes, None]] = []

    def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        stream = self._store.stream_range(self._remote, self._where, start, end, self.meta)
        self._streams.append(stream)  # closed in aclose, so the pooled connection comes back at once
        return stream

    async def aclose(self) -> None:
        for stream in self._streams:
            await stream.aclose()
        self._streams.clear()


class FTPStore(FTPCommands):
    """Artifacts as files under a directory on an FTP server."""

    multipart_enabled = False
    presigned_download_enabled = False

    def __init__(self, uri: str, settings: Settings, config: FTPConfig | None = None) -> None:
        self.settings, self.config = settings, config or FTPConfig()
        self.target = parse_ftp_uri(uri, self.config)
        self.root = self.target.root
        self._timeout = settings.storage_timeout
        self._ssl = ssl.create_default_context(cafile=self.config.ca_file) if self.target.tls else None
        self._pool = FTPPool(self._connect, self.config.connections, self._timeout)
        self._mlsx: bool | None = None  # whether the server has MLSD/MLST (RFC 3659); learnt on first use
        if urlsplit(uri).password:
            logger.warning(
                "the ftp:// destination carries a password: ARTIFACT_PROXY_FTP_PASSWORD keeps it out of the "
                "URI, which ends up in logs and process listings"
            )

    # connection ----------------------------------------------------------------------------------------------------
    async def _connect(self) -> aioftp.Client:
        target = self.target
        client = FTPClient(socket_timeout=self._timeout, connection_timeout=min(self._timeout, 30.0))
        with ftp_errors("connecting", target.host):
            try:
                await client.connect(target.host, target.port)
                if self._ssl is not None:
                    await client.upgrade_to_tls(self._ssl)  # before USER/PASS: credentials never travel in clear
                await client.login(target.user, target.password)
            except BaseException:
                client.close()
                raise
        return client

    async def run(self, what: str, where: str, op: Callable[[Lease], Awaitable[T]], retry: bool = True) -> T:
        """Run `op` on a pooled connection; a connection lost underneath is replaced and `op` retried once."""
        for attempt in (1, 2):
            try:
                async with self._pool.lease() as lease:
                    return await op(lease)
            except ConnectionError as exc:
                if attempt == 2 or not retry:
                    raise map_error(exc, what, where) from exc
                self._pool.close()  # a server restart kills every idle connection at once: retry on a fresh one
                logger.info("ftp connection lost while %s %r; retrying on a new one", what, where)
            except (aioftp.AIOFTPException, OSError, TimeoutError) as exc:
                raise map_error(exc, what, where) from exc
        raise AssertionError("unreachable")

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.run("creating the root", self.root, lambda lease: self._makedirs(lease, self.root))
        except (StorageUnavailable, StorageTimeout) as exc:
            # Serve anyway: requests answer 503 until the server is back.
            logger.warning("FTP server %s not reachable at startup (%s); will retry on use", self.target.host, exc)

    async def close(self) -> None:
        self._pool.close(final=True)

    async def check_ready(self) -> None:
        async def op(lease: Lease) -> None:
            await lease.client.command("NOOP", "2xx")
            if await self._stat(lease, self.root) is None:
                raise StorageMisconfigured(f"The FTP destination directory {self.root!r} does not exist")

        await self.run("checking the root", self.root, op)

    # names ---------------------------------------------------------------------------------------------------------
    def _remote(self, path: ArtifactPath) -> str:
        # Never a bare relative name: `LIST -x` would be read as options by some servers; `./-x` is a path.
        return posixpath.join(self.root, path.canonical) if path.canonical else self.root

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> FTPReadHandle:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        remote = self._remote(path)

        async def op(lease: Lease) -> FTPReadHandle:
            info = await self._stat(lease, remote)
            if info is not None and info.get("type") == "dir":
                raise IsADirectoryArtifact(path.canonical)
            if info is None or info.get("type") != "file":
                raise ArtifactNotFound(path.canonical)
            return FTPReadHandle(self, remote, object_meta(info), path.canonical)

        return await self.run("opening", path.canonical, op)

    async def stream_range(
        self, remote: str, where: str, start: int, end: int, expected: ObjectMeta
    ) -> AsyncGenerator[bytes, None]:
        if end <= start:
            return
        floor = min(MIN_YIELD, self.settings.download_chunk_size)
        with ftp_errors("reading", where):
            async with self._pool.lease() as lease:
                stream = await self._transfer(lease, f"RETR {remote}", offset=start)
                remaining, block = end - start, bytearray()
                try:
                    while remaining > 0:
                        data = await stream.read(min(self.settings.download_chunk_size - len(block), remaining))
                        if not data:  # the file shrank underneath us: stop rather than spin
                            break
                        remaining, block = remaining - len(data), block + data
                        if len(block) >= floor and remaining > 0:
                            yield bytes(block)
                            block = bytearray()
                    # Read to the end, the file's: a byte more means RETR opened a longer version. The check below
                    # cannot see it when the version that was opened came back since (same size, same second, a
                    # reused inode: MLST's facts are equal).
                    longer = remaining == 0 and end == expected.size and bool(await stream.read(1))
                finally:
                    stream.close()
                # Closing early makes the server abort the transfer (426); either answer leaves a clean session.
                async with asyncio.timeout(5):
                    await lease.client.command(None, ("2xx", "4xx"), "1xx")
                # RETR opens by name, so an overwrite since open_read would send the new bytes under the old
                # version's size: the last block goes out only once the file is still the version that was opened.
                info = await self._stat(lease, remote)
                lease.reusable = True
        if remaining or longer or info is None or object_meta(info).etag != expected.etag:
            raise StorageUnavailable("The artifact changed while it was being read; retry")
        if block:
            yield bytes(block)

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        if path.is_root:
            raise InvalidParameter("Artifact path must include a filename (cannot end with '/').")
        target = self._remote(path)
        temp = posixpath.join(posixpath.dirname(target), f"{TEMP_PREFIX}{secrets.token_hex(16)}")
        try:
            with ftp_errors("writing", path.canonical):
                async with self._pool.lease() as lease:
                    stream = await self._open_upload(lease, temp, path)
                    try:
                        async for chunk in chunks:
                            await stream.write(chunk)
                    except (OSError, RuntimeError) as exc:  # asyncio's RuntimeError: the transport is closed
                        await _raise_servers_reason(stream, exc)
                    except BaseException:
                        stream.close()
                        raise
                    await stream.finish()  # the server's 226: every byte is stored
                    lease.reusable = True
                    await self._publish(lease, temp, target, path, options.create_only)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a client that went away must not leave a temp file behind
                await self._discard(temp)
            raise

    async def _open_upload(self, lease: Lease, temp: str, path: ArtifactPath) -> DataConnectionThrottleStreamIO:
        try:
            return await self._transfer(lease, f"STOR {temp}")
        except aioftp.StatusCodeError as exc:
            if not refused(exc):
                raise
        await self._makedirs(lease, posixpath.dirname(temp), path.canonical)
        return await self._transfer(lease, f"STOR {temp}")

    async def _publish(self, lease: Lease, temp: str, target: str, path: ArtifactPath, create_only: bool) -> None:
        client = lease.client
        if create_only and (info := await self._stat(lease, target)) is not None:
            if info.get("type") == "dir":
                raise InvalidParameter(f"Cannot write '{path.canonical}': it is a directory")
            raise AlreadyExists(path.canonical)  # not atomic: FTP cannot rename only-if-absent
        try:
            await client.rename(temp, target)
            return
        except aioftp.StatusCodeError:
            info = await self._stat(lease, target)
            if info is not None and info.get("type") == "dir":
                raise InvalidParameter(f"Cannot write '{path.canonical}': it is a directory") from None
            if info is None or create_only:
                raise
        # Some servers (IIS) refuse to rename onto an existing file: remove it first; readers briefly see no file.
        logger.debug("ftp server refused to replace %r by rename; replacing in two steps", target)
        await client.remove_file(target)
        await client.rename(temp, target)

    async def _discard(self, temp: str) -> None:
        async def op(lease: Lease) -> None:
            with suppress(aioftp.StatusCodeError):  # never created, or already renamed
                await lease.client.remove_file(temp)

        with suppress(Exception):  # best effort: a leftover temp file stays hidden from listings
            await asyncio.wait_for(self.run("discarding", temp, op), 10)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        remote = self._remote(path)

        async def op(lease: Lease) -> list[FileInfo]:
            infos = [file_info(name, info) for name, info in await self._entries(lease, remote) or []]
            return sorted((info for info in infos if info is not None), key=lambda info: info.path)

        return await self.run("listing", path.canonical, op)

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        remote = self._remote(path)

        async def op(lease: Lease) -> None:
            info = await self._stat(lease, remote)
            if info is None:
                return
            if info.get("type") == "dir":
                await self._rmtree(lease, remote)
            else:
                await self._remove_file(lease, remote)

        await self.run("deleting", path.canonical, op)

    async def _rmtree(self, lease: Lease, directory: str) -> None:
        for name, info in await self._entries(lease, directory) or []:
            child = posixpath.join(directory, name)
            if info.get("type") == "dir":
                await self._rmtree(lease, child)
            else:
                await self._remove_file(lease, child)
        with suppress_refused():  # removed concurrently
            await lease.client.remove_directory(directory)

    async def _remove_file(self, lease: Lease, remote: str) -> None:
        with suppress_refused():  # removed concurrently
            await lease.client.remove_file(remote)


async def _raise_servers_reason(stream: DataConnectionThrottleStreamIO, exc: BaseException) -> NoReturn:
    """The server closed the data connection mid-upload: its control reply says why (a full disk is a 426, 451,
    452 or 552 naming the reason), so raise that reply rather than the bare connection error."""
    try:
        await asyncio.wait_for(stream.finish(), 10)
    except aioftp.StatusCodeError as reply:
        raise reply from exc
    except Exception:
        stream.close()
    raise ConnectionResetError(f"the FTP server closed the data connection: {exc}") from exc
