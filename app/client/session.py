"""One HTTP session per command: credentials as MLflow reads them, retries, and failures as one-line errors.

Credentials go only to the server the URI names (`MLFLOW_TRACKING_USERNAME`/`_PASSWORD` as Basic, else
`MLFLOW_TRACKING_TOKEN` as Bearer): presigned URLs carry their own authorization, and an `Authorization` header would
make S3 refuse them. `MLFLOW_TRACKING_INSECURE_TLS=true` skips certificate checks; `MLFLOW_TRACKING_SERVER_CERT_PATH`
names a CA bundle.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.client.uris import SERVER_INFO, Remote

# What MLflow's client retries (docs/mlflow-artifacts-api.md §2.4): the server's transient answers.
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0


class ClientError(Exception):
    """A failure the user is told in one line; the command exits non-zero."""


class NotFound(ClientError):
    pass


@dataclass(frozen=True)
class Credentials:
    authorization: str | None = None
    verify: ssl.SSLContext | bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        user, password, token = (env.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD", "TOKEN"))
        authorization = None
        if user and password:
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        elif token:
            authorization = f"Bearer {token}"
        verify: ssl.SSLContext | bool = True
        if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
            verify = False
        elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            verify = ssl.create_default_context(cafile=env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
        return cls(authorization, verify)


def first_error(exc: BaseException) -> BaseException:
    """The failure inside a task group's exception group (the first one that is not a cancellation)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2**attempt))


@dataclass
class Session:
    client: httpx.AsyncClient
    server: str  # the one origin credentials are sent to
    credentials: Credentials
    retries: int = 4
    _server_info: dict[str, Any] | None = field(default=None, repr=False)

    def headers_for(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.credentials.authorization and (url == self.server or url.startswith(self.server + "/")):
            headers["authorization"] = self.credentials.authorization
        return headers

    async def request(
        self, method: str, url: str, *, what: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        """A small request (its body re-sendable), retried on transient failures; any status outside `ok` raises."""
        headers = self.headers_for(url, kwargs.pop("headers", None))
        for attempt in range(self.retries + 1):
            try:
                response = await self.client.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ClientError(transport_message(url, exc)) from exc
            else:
                if response.status_code in ok:
                    return response
                if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                    raise status_error(response, what)
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def server_info(self) -> dict[str, Any]:
        """The server's capabilities; {} from a server without the route (MLflow before 3.17, proxies in front)."""
        if self._server_info is None:
            try:
                response = await self.client.get(self.server + SERVER_INFO, headers=self.headers_for(self.server))
                body = response.json() if response.status_code == 200 else {}
                self._server_info = body if isinstance(body, dict) else {}
            except (httpx.HTTPError, ValueError):
                self._server_info = {}
        return self._server_info


def status_error(response: httpx.Response, what: str) -> ClientError:
    status = response.status_code
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    detail = f": {message}" if message else ""
    if status == 404:
        return NotFound(f"{what}: not found (404){detail}")
    if status == 401:
        return ClientError(
            f"{what}: authentication required (401){detail}; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    if status == 403:
        return ClientError(f"{what}: permission denied (403){detail}")
    if status in RETRIED_STATUSES:
        return ClientError(f"{what}: server error {status}{detail} (gave up after retries)")
    return ClientError(f"{what}: HTTP {status}{detail}")


def transport_message(url: str, exc: httpx.TransportError) -> str:
    origin = httpx.URL(url).copy_with(path="/", query=None, fragment=None)
    where = str(origin).rstrip("/")
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {where}: {_connect_reason(exc)}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} timed out ({type(exc).__name__})"
    return f"connection to {where} failed: {exc or type(exc).__name__}"


def _connect_reason(exc: BaseException) -> str:
    """The OS's reason under httpx's and anyio's wrappers ("All connection attempts failed" says nothing)."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        seen.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        seen.extend(getattr(current, "exceptions", ()))
    return str(exc) or "connection failed"


def open_client(credentials: Credentials, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections + 2, max_keepalive_connections=connections + 2)
    timeout = httpx.Timeout(120.0, connect=30.0)
    return httpx.AsyncClient(limits=limits, timeout=timeout, verify=credentials.verify, follow_redirects=False)


def session_for(remote: Remote, jobs: int, retries: int) -> Session:
    credentials = Credentials.from_env(os.environ)
    return Session(open_client(credentials, jobs), remote.server, credentials, retries)
