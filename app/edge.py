"""The one ASGI layer every HTTP request passes, with one wrapper of `send` (three middlewares cost three).

On the way in: the client's address and scheme (`app.proxies`), the Host and origin checks (`app.middleware`), and
the artifact routes served directly (`app.routes.direct`); everything else goes on to the app's router. On the way
out: the security headers on every response, refusals and last-resort 500s included, and the request's metrics
and access log line (`app.metrics`).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import answer_unexpected, handler_for
from app.metrics import IN_FLIGHT, Counts, Observer
from app.middleware import SecurityPolicy
from app.proxies import TrustedProxies, resolve_client
from app.routes.direct import DirectRoutes, Endpoint


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        proxies: TrustedProxies,
        security: SecurityPolicy | None,
        observer: Observer,
        direct: DirectRoutes,
    ) -> None:
        self.app = app
        self.proxies = proxies
        self.security = security
        self.headers = security.headers if security is not None else []
        self.observer = observer
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        resolve_client(scope, self.proxies)
        counts = Counts()
        extra_headers = self.headers

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts.bytes_in += len(message.get("body", b""))
            return message

        async def edge_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                counts.bytes_out += len(message.get("body", b""))
            elif kind == "http.response.start":
                counts.status, counts.started = message["status"], True
                if extra_headers:
                    message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        IN_FLIGHT.inc()
        try:
            security = self.security
            if security is not None and (refusal := security.refusal(scope)) is not None:
                for message in security.refusal_messages(*refusal):
                    await edge_send(message)
                return
            endpoint = self.direct.match(scope)
            if endpoint is None:
                await self.app(scope, counting_receive, edge_send)
            else:
                await self._serve(endpoint, scope, counting_receive, edge_send, counts)
        except Exception:
            await answer_unexpected(scope, receive, edge_send, response_started=counts.started)
        finally:
            IN_FLIGHT.dec()
            self.observer.record(scope, counts, time.perf_counter() - started)

    @staticmethod
    async def _serve(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, counts: Counts) -> None:
        """As Starlette's `request_response` does: an error before the response starts is answered by the app's
        handler for it (`errors.EXCEPTION_HANDLERS`); one after it, or one no handler knows, goes on up to be
        logged, and the client sees the response cut off or a 500."""
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
            await response(scope, receive, send)
        except Exception as exc:
            handler = handler_for(exc)
            if handler is None or counts.started:
                raise
            await (await handler(request, exc))(scope, receive, send)
