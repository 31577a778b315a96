"""An HTTP proxy in front of the service that injects faults deterministically, for the client CLI's tests.

Every request is forwarded whole (bodies are small in these tests) with the client's Host header, so the URLs the
service signs point back through this proxy. A `Fault` matches requests by method and a path test, for its first
`times` matches (None: all): `status` answers that status instead of forwarding, `cut_after` forwards and then sends
the headers (with the full Content-Length) and only that many body bytes before closing the connection. The bytes
are written before the close, so the client always has exactly them: nothing depends on timing or packet sizes.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from tests.servers import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "te", "upgrade"}


@dataclass
class Fault:
    method: str
    matches: Callable[[str], bool]  # of the decoded path, without the query
    status: int | None = None
    cut_after: int | None = None
    times: int | None = 1
    used: int = 0


@dataclass
class Seen:
    method: str
    path: str  # decoded, without the query
    headers: dict[str, str]  # names lower-cased
    faulted: bool


@dataclass
class FaultyProxy:
    url: str
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def artifact_url(self, path: str) -> str:
        return f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}"

    def requests(self, method: str, contains: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and contains in s.path]

    def pick(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.matches(path) and (fault.times is None or fault.used < fault.times):
                    fault.used += 1
                    return fault
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, proxy: FaultyProxy) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = unquote(urlsplit(self.path).path)
        fault = proxy.pick(self.command, path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        proxy.seen.append(Seen(self.command, path, headers, fault is not None))
        if fault is not None and fault.status is not None:
            payload = json.dumps({"error_code": "INTERNAL_ERROR", "message": "injected fault"}).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        target = urlsplit(proxy.upstream)
        upstream = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", response.getheader("Content-Length") or str(len(data)))
        self.end_headers()
        if fault is not None and fault.cut_after is not None:
            self.wfile.write(data[: fault.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET


@contextmanager
def faulty_proxy(upstream: str) -> Iterator[FaultyProxy]:
    port = free_port()
    proxy = FaultyProxy(url=f"http://127.0.0.1:{port}", upstream=upstream)
    server = _Server(port, proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
