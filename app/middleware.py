"""Pure ASGI security middleware (no BaseHTTPMiddleware: it would cost every request a task and a buffered body).

As MLflow 3.x's server does: `nosniff` and `SAMEORIGIN` on every response; an optional `Host` allow-list
(`MLFLOW_SERVER_ALLOWED_HOSTS`, against DNS rebinding); and refusal of state-changing requests from browser pages of
other origins (`MLFLOW_SERVER_CORS_ALLOWED_ORIGINS` widens it). Programmatic clients send no `Origin` and are
unaffected. Refusals are 403 in MLflow's error shape.
"""

from __future__ import annotations

import fnmatch
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN")]
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(value, p) if "*" in p else value == p for p in patterns)


class SecurityMiddleware:
    def __init__(
        self, app: ASGIApp, allowed_hosts: list[str] | None = None, allowed_origins: list[str] | None = None
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts or []
        self.allowed_origins = allowed_origins or []

    def _refusal(self, scope: Scope) -> str | None:
        headers = dict(scope.get("headers", []))
        if self.allowed_hosts and not _matches(headers.get(b"host", b"").decode("latin-1"), self.allowed_hosts):
            return "Host header not allowed"
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and scope["method"] in STATE_CHANGING and not self._origin_allowed(origin, headers):
            return "Cross-origin request refused"
        return None

    def _origin_allowed(self, origin: str, headers: dict[bytes, bytes]) -> bool:
        host = urlsplit(origin).netloc
        if host == headers.get(b"host", b"").decode("latin-1") or urlsplit(origin).hostname in LOCAL_ORIGIN_HOSTS:
            return True
        return "*" in self.allowed_origins or _matches(origin, self.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            body = json.dumps({"error_code": "PERMISSION_DENIED", "message": refusal}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *SECURITY_HEADERS,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
