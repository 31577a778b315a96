"""Prometheus metrics and the access log of each request (`app.edge.Edge` measures, this module records).

Labels use the matched endpoint's name (`artifact`, `list_artifacts`, `create_upload`, ...), never the raw path, so
cardinality stays bounded. With several workers, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
set by the CLI) makes every worker's `/metrics` answer for the whole server.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

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
from starlette.types import Scope

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


# Methods a client may spell any way it likes (h11 takes any token): the label keeps a fixed set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


class Counts:
    """What one request's response told `app.edge.Edge` on its way out."""

    __slots__ = ("bytes_in", "bytes_out", "status", "started")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 500  # until a response starts: what a request that raised is counted as
        self.started = False


class Series(NamedTuple):
    """One (route, method, status)'s children of the request metrics."""

    requests: Counter
    latency: Histogram
    bytes_in: Counter
    bytes_out: Counter


class Observer:
    """Counts, times and logs each finished request. The label children are kept per (route, method, status):
    `labels()` takes a lock and builds a key on every call, and each request needs two."""

    def __init__(self, access_log: bool = True) -> None:
        self.access_log = access_log
        self._series: dict[tuple[str, str, int], Series] = {}

    def _children(self, route: str, method: str, status: int) -> Series:
        key = (route, method, status)
        children = self._series.get(key)
        if children is None:
            children = Series(
                REQUESTS.labels(route, method, str(status)),
                LATENCY.labels(route, method),
                BYTES_IN.labels(route),
                BYTES_OUT.labels(route),
            )
            self._series[key] = children
        return children

    def record(self, scope: Scope, counts: Counts, elapsed: float) -> None:
        endpoint = scope.get("endpoint")
        route = getattr(endpoint, "__name__", "unmatched")
        method, status = scope["method"], counts.status
        series = self._children(route, method if method in KNOWN_METHODS else "OTHER", status)
        series.requests.inc()
        series.latency.observe(elapsed)
        if counts.bytes_in:
            series.bytes_in.inc(counts.bytes_in)
        if counts.bytes_out:
            series.bytes_out.inc(counts.bytes_out)
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
                    "bytes_in": counts.bytes_in,
                    "bytes_out": counts.bytes_out,
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
                counts.bytes_in,
                counts.bytes_out,
                elapsed * 1000,
                extra={
                    "duration_ms": round(elapsed * 1000, 2),
                    "bytes_in": counts.bytes_in,
                    "bytes_out": counts.bytes_out,
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
