"""FTP backend: `ftp://[user[:password]@]host[:port]/path`, and `ftps://` for explicit TLS (AUTH TLS), on aioftp.

- aioftp rather than a thread-wrapped ftplib: native asyncio, so a transfer costs no thread hop per chunk, and it
  does explicit TLS with the session reused on data connections (which vsftpd and others demand). Its `list`,
  `stat` fallback and `get_stream` leak the data socket when the server refuses the command, so transfers are
  opened here instead.
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
import calendar
import logging
import posixpath
import secrets
import ssl
import time
from asyncio import sslproto
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aioftp
import anyio
from aioftp.client import DataConnectionThrottleStreamIO
from aioftp.common import SSLSessionBoundContext
from pydantic import Field, SecretStr
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

logger = logging.getLogger("artifact_proxy.storage.ftp")

T = TypeVar("T")
Info = Mapping[str, Any]  # MLSx facts ("type", "size", "modify"), or aioftp's parse of a LIST line
PROBE_AFTER = 5.0  # seconds idle after which a pooled connection is checked with NOOP before reuse
SELF_OR_UP = ("cdir", "pdir")
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


def _code(exc: aioftp.StatusCodeError) -> str:
    return str(exc.received_codes[-1]) if exc.received_codes else ""


def _refused(exc: aioftp.StatusCodeError) -> bool:
    """55x: the file or directory is missing, or the request is refused for it."""
    return _code(exc).startswith("55")


def _unsupported(exc: aioftp.StatusCodeError) -> bool:
    return _code(exc) in ("500", "502", "504")


def map_error(exc: BaseException, what: str, where: str) -> ArtifactProxyError:
    """Translate aioftp and socket errors into the service's hierarchy; details go to the log."""
    logger.warning("ftp %s %r failed: %s: %s", what, where, type(exc).__name__, exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageMisconfigured("The FTPS server's certificate is not trusted: set ARTIFACT_PROXY_FTP_CA_FILE")
    if isinstance(exc, TimeoutError):
        return StorageTimeout(f"The FTP server did not answer in time while {what}")
    if isinstance(exc, aioftp.StatusCodeError):
        code = _code(exc)
        if code == "530":
            return StorageMisconfigured("The FTP server refused the login: check the user and password")
        if code in ("452", "552"):
            return StorageMisconfigured("The FTP server is out of space or over quota")
        if code == "553":
            return InvalidPath()
        if code.startswith("4"):  # FTP's transient negative replies, 421 "service not available" among them
            return StorageUnavailable(f"The FTP server is temporarily unavailable ({code})")
        if code.startswith("55"):
            return StorageMisconfigured(f"The FTP server refused {what} ({code}): check the account's rights")
        return ArtifactProxyError(f"The FTP server rejected a command while {what} ({code})")
    if isinstance(exc, OSError):
        return StorageUnavailable(f"The FTP server is unreachable ({type(exc).__name__})")
    return ArtifactProxyError(f"FTP error while {what}")


@contextmanager
def ftp_errors(what: str, where: str) -> Iterator[None]:
    try:
        yield
    except (aioftp.AIOFTPException, OSError, TimeoutError) as exc:
        raise map_error(exc, what, where) from exc


class FTPClient(aioftp.Client):
    """TLS data connections run on asyncio's own TLS layer. uvloop's (the server's loop) drops the end of a download
    whose reader is paused when the server's close_notify arrives, which is how every RETR over FTPS ends
    (MagicStack/uvloop#661)."""

    async def _open_connection(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        control = self._stream.writer.transport.get_extra_info("ssl_object") if self._stream is not None else None
        if control is None:  # the control connection itself, or plain FTP
            return await super()._open_connection(host, port)
        # Bound to the control connection's session: servers such as vsftpd refuse data connections that do not
        # resume it.
        context = SSLSessionBoundContext(ssl.PROTOCOL_TLS_CLIENT, context=control.context, session=control.session)
        return await asyncio.wait_for(_open_tls(host, port, context, self.server_host), self.connection_timeout)


class _StreamProtocol(asyncio.StreamReaderProtocol):
    transport: asyncio.BaseTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        super().connection_made(transport)


async def _open_tls(
    host: str, port: int, context: Any, server_hostname: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol, handshake = _StreamProtocol(reader, loop=loop), loop.create_future()
    tls = sslproto.SSLProtocol(loop, protocol, context, handshake, server_hostname=server_hostname)
    transport, _ = await loop.create_connection(lambda: tls, host, port)
    try:
        await handshake
    except BaseException:
        transport.close()
        raise
    return reader, asyncio.StreamWriter(protocol.transport, protocol, reader, loop)  # type: ignore[arg-type]


@dataclass(slots=True)
class Lease:
    """A pooled connection lent to one operation; `reusable` is false while a transfer's outcome is unread."""

    client: aioftp.Client
    reusable: bool = True


class FTPPool:
    def __init__(self, connect: Callable[[], Awaitable[aioftp.Client]], size: int, wait: float) -> None:
        self._connect, self._size, self._wait = connect, size, wait
        self._idle: list[tuple[aioftp.Client, float]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise StorageUnavailable(f"All {self._size} connections to the FTP server are busy") from exc
        try:
            lease = Lease(await self._checkout())
            try:
                yield lease
            except (aioftp.StatusCodeError, ArtifactProxyError):
                raise  # a whole reply was read: the connection is as sound as the transfer flag says
            except BaseException:
                lease.reusable = False
                raise
            finally:
                self._checkin(lease)
        finally:
            self._slots.release()

    async def _checkout(self) -> aioftp.Client:
        while self._idle:
            client, since = self._idle.pop()
            if time.monotonic() - since < PROBE_AFTER:
                return client
            try:  # servers drop idle sessions: find out now, before a body is consumed
                async with asyncio.timeout(5):
                    await client.command("NOOP", "2xx")
                return client
            except (aioftp.AIOFTPException, OSError, TimeoutError):
                client.close()
        return await self._connect()

    def _checkin(self, lease: Lease) -> None:
        if lease.reusable and not self._closed:
            self._idle.append((lease.client, time.monotonic()))
        else:
            lease.client.close()

    def close(self, final: bool = False) -> None:
        """Close the idle connections; leased ones close as their operations end once `final` is set."""
        self._closed = self._closed or final
        for client, _ in self._idle:
            client.close()
        self._idle.clear()


def _modified(info: Info) -> float | None:
    raw = str(info.get("modify", ""))[:14]
    try:
        return float(calendar.timegm(time.strptime(raw, "%Y%m%d%H%M%S")))
    except ValueError:
        return None


def _meta(info: Info) -> ObjectMeta:
    # MLSx's `unique` fact (device and inode on most servers) changes with every upload, even within one second.
    size, tag = int(info.get("size", 0)), "-".join(str(info[fact]) for fact in ("unique", "modify") if fact in info)
    return ObjectMeta(size=size, etag=f'"{tag}-{size:x}"', last_modified=_modified(info))


class FTPReadHandle:
    def __init__(self, store: FTPStore, remote: str, meta: ObjectMeta, where: str) -> None:
        self.meta = meta
        self._store, self._remote, self._where = store, remote, where
        self._streams: list[AsyncGenerator[bytes, None]] = []

    def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        stream = self._store.stream_range(self._remote, self._where, start, end)
        self._streams.append(stream)  # closed in aclose, so the pooled connection comes back at once
        return stream

    async def aclose(self) -> None:
        for stream in self._streams:
            await stream.aclose()
        self._streams.clear()


class FTPStore:
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
            logger.warning("the ftp:// destination carries a password: ARTIFACT_PROXY_FTP_PASSWORD keeps it out of the "
                           "URI, which ends up in logs and process listings")

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

    # protocol helpers ----------------------------------------------------------------------------------------------
    def _remote(self, path: ArtifactPath) -> str:
        # Never a bare relative name: `LIST -x` would be read as options by some servers; `./-x` is a path.
        return posixpath.join(self.root, path.canonical) if path.canonical else self.root

    async def _transfer(self, lease: Lease, command: str, offset: int = 0) -> DataConnectionThrottleStreamIO:
        client = lease.client
        reader, writer = await client.get_passive_connection("I")
        try:
            if offset:
                await client.command(f"REST {offset}", "350")
            await client.command(command, "1xx")
        except BaseException:
            writer.close()  # aioftp's own get_stream leaks this socket when the command is refused
            raise
        lease.reusable = False  # until the transfer's final reply is read
        return DataConnectionThrottleStreamIO(client, reader, writer, {"_": client.throttle},
                                              timeout=client.socket_timeout)

    async def _has_mlsx(self, lease: Lease) -> bool:
        """Whether the server has MLST/MLSD (RFC 3659): exact facts, and no parsing of `ls` output."""
        if self._mlsx is None:
            try:
                await lease.client.command(f"MLST {self.root}", "2xx")
                self._mlsx = True
            except aioftp.StatusCodeError as exc:
                self._mlsx = not _unsupported(exc)
        return self._mlsx

    async def _stat(self, lease: Lease, remote: str) -> Info | None:
        """Facts about one path, or None when it does not exist."""
        if remote in ("/", "."):
            return {"type": "dir"}
        if await self._has_mlsx(lease):
            try:
                _, reply = await lease.client.command(f"MLST {remote}", "2xx")
            except aioftp.StatusCodeError as exc:
                if _refused(exc):
                    return None
                raise
            return lease.client.parse_mlsx_line(reply[1].lstrip())[1]
        parent, name = posixpath.split(remote)
        for entry, info in await self._list_lines(lease, parent or ".") or []:
            if entry == name:
                return info
        return None

    async def _list_lines(self, lease: Lease, remote: str) -> list[tuple[str, Info]] | None:
        mlsd = await self._has_mlsx(lease)
        parse = lease.client.parse_mlsx_line if mlsd else lease.client.parse_list_line
        try:
            stream = await self._transfer(lease, f"{'MLSD' if mlsd else 'LIST'} {remote}")
        except aioftp.StatusCodeError as exc:
            if _refused(exc) or _code(exc) == "501":  # missing, or not a directory
                return None
            raise
        lines = [line async for line in stream.iter_by_line()]
        await stream.finish()
        lease.reusable = True
        entries = [parse(line.rstrip(b"\r\n")) for line in lines if line.strip()]
        named = [(posixpath.basename(str(name)), info) for name, info in entries]
        # `.`, `..` (LIST) and the cdir/pdir entries (MLSD) would make a recursive delete loop forever.
        return [(name, info) for name, info in named if name not in (".", "..") and info.get("type") not in SELF_OR_UP]

    async def _entries(self, lease: Lease, remote: str) -> list[tuple[str, Info]] | None:
        """A directory's entries, or None if `remote` is missing or not a directory."""
        if not await self._has_mlsx(lease):
            # LIST lists a file as itself and may answer a missing path with nothing: check it is a directory.
            info = await self._stat(lease, remote)
            if info is None or info.get("type") != "dir":
                return None
        return await self._list_lines(lease, remote)

    async def _makedirs(self, lease: Lease, directory: str, where: str | None = None) -> None:
        """mkdir -p, from the deepest existing directory down."""
        if directory in ("", ".", "/"):
            return
        try:
            await lease.client.command(f"MKD {directory}", "257")
            return
        except aioftp.StatusCodeError as exc:
            if not _refused(exc):
                raise
            refusal = exc
        info = await self._stat(lease, directory)
        if info is None:  # a parent is missing too (550 means either)
            await self._makedirs(lease, posixpath.dirname(directory), where)
            with suppress(aioftp.StatusCodeError):  # a concurrent upload may make it first
                await lease.client.command(f"MKD {directory}", "257")
            info = await self._stat(lease, directory)
        if info is None:
            raise refusal
        if info.get("type") != "dir":
            raise InvalidParameter(f"Cannot write '{where or directory}': a parent path is a file")

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
            return FTPReadHandle(self, remote, _meta(info), path.canonical)

        return await self.run("opening", path.canonical, op)

    async def stream_range(self, remote: str, where: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
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
                        if len(block) >= floor or remaining == 0:
                            yield bytes(block)
                            block = bytearray()
                    if block:
                        yield bytes(block)
                finally:
                    stream.close()
                # Closing early makes the server abort the transfer (426); either answer leaves a clean session.
                async with asyncio.timeout(5):
                    await lease.client.command(None, ("2xx", "4xx"), "1xx")
                lease.reusable = True

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = WriteOptions()
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
            if not _refused(exc):
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
            infos = [_file_info(name, info) for name, info in await self._entries(lease, remote) or []]
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


def _file_info(name: str, info: Info) -> FileInfo | None:
    if name.startswith(TEMP_PREFIX):
        return None
    if info.get("type") == "dir":
        return FileInfo(name, True)
    if info.get("type") == "file":
        return FileInfo(name, False, int(info.get("size", 0)))
    return None  # links, devices


@contextmanager
def suppress_refused() -> Iterator[None]:
    try:
        yield
    except aioftp.StatusCodeError as exc:
        if not _refused(exc):
            raise
