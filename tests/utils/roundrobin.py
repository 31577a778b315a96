"""A tiny round-robin HTTP reverse proxy on 127.0.0.1, standing in for nginx or a Kubernetes Service in front of
several artifact-proxy replicas.

Each request (not each connection) goes to the next backend, so two requests on one keep-alive connection land on
different replicas. Bodies stream both ways in 64 KiB pieces (Content-Length or chunked), the client's Host header is
kept (like nginx `proxy_set_header Host $host`), and X-Forwarded-For/-Proto are added. `hits` records which backend
served what, before the response goes back, so a client that has its response always finds the hit.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PIECE = 64 * 1024
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
}


@dataclass
class Hit:
    method: str
    path: str
    backend: int  # index into the backend list
    status: int


@dataclass
class Balancer:
    url: str
    backends: list[str]
    hits: list[Hit] = field(default_factory=list)

    def served(self, method: str, path_start: str) -> list[int]:
        """Backends (indexes) that served requests with this method whose path starts with `path_start`."""
        return [hit.backend for hit in self.hits if hit.method == method and hit.path.startswith(path_start)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, balancer: Balancer) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.balancer = balancer
        self._next = itertools.cycle(range(len(balancer.backends)))
        self._lock = threading.Lock()

    def pick(self) -> int:
        with self._lock:
            return next(self._next)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _forward(self) -> None:
        index = self.server.pick()
        backend = urlsplit(self.server.balancer.backends[index])
        upstream = http.client.HTTPConnection(backend.hostname or "127.0.0.1", backend.port, timeout=120)
        try:
            self._send_request(upstream)
            response = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            self._bad_gateway(index, exc)
            return
        # Recorded before the client gets a byte: once it has the response, the hit is there to see.
        self.server.balancer.hits.append(Hit(self.command, self.path, index, response.status))
        try:
            self._send_response(response)
        finally:
            upstream.close()

    def _send_request(self, upstream: http.client.HTTPConnection) -> None:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = int(self.headers.get("Content-Length") or 0)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        upstream.putheader("X-Forwarded-For", self.client_address[0])
        upstream.putheader("X-Forwarded-Proto", "http")
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        elif length or self.command in ("PUT", "POST", "PATCH"):
            upstream.putheader("Content-Length", str(length))
        upstream.endheaders()
        if chunked:
            for piece in self._chunked_body():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            upstream.send(b"0\r\n\r\n")
            return
        remaining = length
        while remaining > 0:
            piece = self.rfile.read(min(PIECE, remaining))
            if not piece:
                raise ConnectionError("client closed the connection mid-body")
            upstream.send(piece)
            remaining -= len(piece)

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the blank line
                    pass
                return
            data = self.rfile.read(size)
            self.rfile.readline()  # the CRLF after the chunk
            yield data

    def _send_response(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        length = response.getheader("Content-Length")
        if bodiless:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            return
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            while piece := response.read(PIECE):
                self.wfile.write(piece)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while piece := response.read1(PIECE):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _bad_gateway(self, index: int, exc: Exception) -> None:
        body = f'{{"error_code": "BAD_GATEWAY", "message": "backend {index} failed: {exc}"}}'.encode()
        self.server.balancer.hits.append(Hit(self.command, self.path, index, 502))
        self.send_response_only(502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


@contextmanager
def round_robin(backends: list[str], port: int) -> Iterator[Balancer]:
    """Serve on 127.0.0.1:`port`, forwarding each request to the next of `backends` (base URLs)."""
    balancer = Balancer(url=f"http://127.0.0.1:{port}", backends=list(backends))
    server = _Server(port, balancer)
    thread = threading.Thread(target=server.serve_forever, name="round-robin", daemon=True)
    thread.start()
    try:
        yield balancer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
