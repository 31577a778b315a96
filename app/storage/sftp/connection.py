"""The one SSH connection of the SFTP backend and its SFTP client: OpenSSH-style login options (agent, identity file,
`~/.ssh/config`, known_hosts), opened on first use, reopened after a loss.

SFTP multiplexes concurrent requests over one connection, so every operation of the process shares it. A lost
connection is reopened on the next request, and `run` retries an idempotent operation once on the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from app.errors import ArtifactProxyError
from app.storage.sftp.config import SFTPTarget
from app.storage.sftp.dirs import makedirs
from app.storage.sftp.errors import CONNECTION_LOST, FAILURES, map_error
from app.store_settings import SFTPSettings

logger = logging.getLogger("artifact_proxy.storage.sftp")
# asyncssh logs every connection and channel at INFO; keep it quiet unless an operator lowers the level.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")


class SFTPConnection:
    """The shared SSH connection and its SFTP client, reopened after a loss; it makes the root on every connect."""

    def __init__(self, target: SFTPTarget, config: SFTPSettings, timeout: float) -> None:
        self.target, self.config = target, config
        self._timeout = timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._attempts = 0  # connection attempts finished; with `_failure`, queued requests share a failed one
        self._failure: ArtifactProxyError | None = None

    async def open(self) -> asyncssh.SFTPClient:
        """The current client, connecting first when there is none or its connection was lost."""
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

    async def close(self) -> None:
        await self._drop(self._sftp)

    async def run(
        self,
        what: str,
        where: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        retry: bool = True,
        timed: bool = True,
    ) -> T:
        """Run `op` on the shared client; after a lost connection, retry once on a new one when `retry`."""
        for attempt in (1, 2):
            sftp = await self.open()
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

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        root = self.target.root
        try:
            conn = await asyncssh.connect(**self._connect_options())
            try:
                sftp = await conn.start_sftp_client()
                if root not in (".", "/"):
                    await makedirs(sftp, root)
            except BaseException:
                conn.close()
                raise
        except (*FAILURES, ValueError) as exc:  # ValueError: asyncssh refusing a config file, key or option
            raise map_error(exc, "connecting", self.target.host) from exc
        logger.info("connected to sftp://%s, root %r", self.target.host, root)
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
