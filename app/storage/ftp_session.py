"""FTP control sessions for the FTP backend (`app.storage.ftp`): the pool of logged-in connections, and TLS data
connections on asyncio's own TLS layer.

- FTP runs one command at a time per connection, so each operation leases a connection of its own. A connection
  whose state is unknown (a transfer cut short, a timeout) is closed, never reused; an idle one is probed with NOOP
  before reuse.
- Data connections over FTPS resume the control connection's TLS session, which vsftpd and others demand.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from asyncio import sslproto
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioftp
from aioftp.common import SSLSessionBoundContext

from app.errors import ArtifactProxyError, StorageUnavailable

PROBE_AFTER = 5.0  # seconds idle after which a pooled connection is checked with NOOP before reuse


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
