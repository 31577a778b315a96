"""Reaching the SFTP server, for the SFTP backend (`app.storage.sftp`): settings, the destination URI, OpenSSH-style
login options (agent, identity file, `~/.ssh/config`, known_hosts) and the one shared SSH connection.

The connection is opened on first use; SFTP multiplexes concurrent requests over it. A lost connection is reopened
on the next request, and `run` retries an idempotent operation once on the new one.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncssh
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ArtifactProxyError, InvalidParameter
from app.paths import ArtifactPath
from app.storage import StoreConfigError
from app.storage.sftp_errors import CONNECTION_LOST, FAILURES, MISSING, map_error

logger = logging.getLogger("artifact_proxy.storage.sftp")
# asyncssh logs every connection and channel at INFO; keep it quiet unless an operator lowers the level.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")


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


class SFTPConnection:
    """Base of SFTPStore: the shared SSH connection and its SFTP client, reopened after a loss."""

    def __init__(self, target: SFTPTarget, config: SFTPConfig, timeout: float) -> None:
        self.target, self.config = target, config
        self.root = target.root
        self._timeout = timeout
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

    # directories ---------------------------------------------------------------------------------------------------
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
