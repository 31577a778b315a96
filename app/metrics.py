"""Prometheus metrics and the access log, measured by one pure ASGI middleware.

Labels use the matched endpoint's name (`artifact`, `list_artifacts`, `create_upload`, ...), never the raw path, so
cardinality stays bounded. With several workers, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
set by the CLI) makes every worker's `/metrics` answer for the whole server.
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import answer_unexpected
from app.logs import printable

access_logger = logging.getLogger("artifact_proxy.access")
audit_logger = logging.getLogger("artifact_proxy.audit")
AUDIT_KEY = "artifact_proxy.audit"  # set by app.auth.authorize: who asked for which operation on which path

REQUESTS = Counter("artifact_proxy_requests", "HTTP requests served", ["route", "method", "status"])
LATENCY = Histogram(
    "artifact_proxy_request_duration_seconds",
    "Time from request start to the last response byte",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BYTES_IN = Counter("artifact_proxy_bytes_received", "Request body bytes received", ["route"])
BYTES_OUT = Counter("artifact_proxy_bytes_sent", "Response body bytes sent", ["route"])
IN_FLIGHT = Gauge("artifact_proxy_requests_in_flight", "Requests being served", multiprocess_mode="livesum")
DESTINATION_FREE_BYTES = Gauge(
    "artifact_proxy_destination_free_bytes",
    "Bytes free for uploads on a local destination, as of the last /ready probe or upload that checked",
    multiprocess_mode="mostrecent",
)
STORE_ERRORS = Counter("artifact_proxy_store_errors", "Requests that failed because of the store", ["status"])


class RequestObserver:
    """Counts, times and logs every HTTP request without buffering anything."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        counts = {"in": 0, "out": 0, "status": 500, "started": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"], counts["started"] = message["status"], 1
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, counting_send)
        except Exception:
            await answer_unexpected(scope, receive, send, response_started=bool(counts["started"]))
        finally:
            IN_FLIGHT.dec()
            self._record(scope, counts, time.perf_counter() - started)

    def _record(self, scope: Scope, counts: dict[str, int], elapsed: float) -> None:
        endpoint = scope.get("endpoint")
        route = getattr(endpoint, "__name__", "unmatched")
        method, status = scope["method"], counts["status"]
        REQUESTS.labels(route, method, str(status)).inc()
        LATENCY.labels(route, method).observe(elapsed)
        if counts["in"]:
            BYTES_IN.labels(route).inc(counts["in"])
        if counts["out"]:
            BYTES_OUT.labels(route).inc(counts["out"])
        if status in (502, 503, 504):
            STORE_ERRORS.labels(str(status)).inc()
        client = scope.get("client") or ("-", 0)
        if AUDIT_KEY in scope:
            audit = scope[AUDIT_KEY]
            audit_logger.info(
                "%s %s %s %s -> %d",
                printable(audit["user"]),
                audit["op"],
                printable(audit["path"] or "/"),
                client[0],
                status,
                extra={
                    **audit,
                    "status": status,
                    "bytes_in": counts["in"],
                    "bytes_out": counts["out"],
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0],
                },
            )
        if self.access_log:
            query = scope.get("query_string", b"")
            target = printable(f"{scope['path']}?{query.decode('latin-1')}" if query else scope["path"])
            access_logger.info(
                '%s:%s - "%s %s HTTP/%s" %d in=%d out=%d %.1fms',
                client[0],
                client[1],
                method,
                target,
                scope.get("http_version", "1.1"),
                status,
                counts["in"],
                counts["out"],
                elapsed * 1000,
                extra={
                    "duration_ms": round(elapsed * 1000, 2),
                    "bytes_in": counts["in"],
                    "bytes_out": counts["out"],
                    "client": client[0],
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "route": route,
                },
            )


def registry() -> CollectorRegistry | None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return combined
    return None


async def metrics_endpoint(_: Request) -> Response:
    combined = registry()
    body = generate_latest(combined) if combined is not None else generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
