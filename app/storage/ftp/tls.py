"""TLS data connections for FTPS, on asyncio's own TLS layer and resuming the control connection's TLS session.

uvloop's TLS layer (the server's loop) drops the end of a download whose reader is paused when the server's
close_notify arrives, which is how every RETR over FTPS ends (MagicStack/uvloop#661); and servers such as vsftpd
refuse data connections that do not resume the control connection's session.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import Any

import aioftp
from aioftp.common import SSLSessionBoundContext


class FTPClient(aioftp.Client):
    """An aioftp client whose TLS data connections run on asyncio's TLS layer and resume the control session."""

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
