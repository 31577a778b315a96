"""Reaching the FTP server: login (AUTH TLS first for FTPS), and `run`, which retries an idempotent operation once on
a fresh connection when the one it leased turns out dead."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import aioftp

from app.storage.ftp.config import FTPTarget
from app.storage.ftp.errors import ftp_errors, map_error
from app.storage.ftp.pool import FTPPool, Lease
from app.storage.ftp.tls import FTPClient
from app.store_settings import FTPSettings

logger = logging.getLogger("artifact_proxy.storage.ftp")

T = TypeVar("T")


class FTPConnection:
    """Logged-in connections to one FTP server, pooled: `lease` lends one, `run` runs an operation on one."""

    def __init__(self, target: FTPTarget, config: FTPSettings, timeout: float) -> None:
        self.target = target
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=config.ca_file) if target.tls else None
        self._pool = FTPPool(self._connect, config.connections, timeout)

    def lease(self) -> AbstractAsyncContextManager[Lease]:
        """A pooled connection for one operation; errors are the caller's to map."""
        return self._pool.lease()

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

    def close(self) -> None:
        """Close every connection: the idle ones now, leased ones as their operations end."""
        self._pool.close(final=True)

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
