"""Request heads are bounded in size, field count and time (issue 13, case 6), over real sockets.

The attacks of the report: connections that send an endless head (the worker used to keep all of it), connections
that send a head slowly or nothing at all (they used to stay open forever). The servers here run with
`header_timeout` 1 s, so waiting for the server to close a connection is short; every wait is for something the
server does (it answers, or it closes), capped by CAP only against hanging, and nothing asserts how fast it happened.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.utils.proxy import PATIENCE, Proxy, running_proxy
from tests.utils.raw_http import RawResponse, read_response

CAP = PATIENCE  # the longest any wait here may take before the test fails
KiB = 1024
MiB = 1024 * KiB
LIMIT = 32 * KiB  # the limited server's max_header_bytes (the default, 64 KiB, would accept 40 KiB heads below)
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Two workers: the limits must reach the worker processes, which read them from their environment."""
    base = tmp_path_factory.mktemp("limited")
    env = {
        "ARTIFACT_PROXY_MAX_HEADER_BYTES": str(LIMIT),
        "ARTIFACT_PROXY_HEADER_TIMEOUT": "1",
        # Far beyond any wait here: only the head timer may close an idle connection in these tests.
        "ARTIFACT_PROXY_KEEPALIVE_TIMEOUT": "600",
    }
    with running_proxy(str(base / "root"), base / "proxy", env=env, workers=2) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One worker: a connection's timers and a probe's run on one event loop, in the order they were started."""
    base = tmp_path_factory.mktemp("single")
    env = {"ARTIFACT_PROXY_HEADER_TIMEOUT": "1", "ARTIFACT_PROXY_KEEPALIVE_TIMEOUT": "600"}
    with running_proxy(str(base / "root"), base / "proxy", env=env, workers=1) as proxy:
        yield proxy


def connect(proxy: Proxy) -> socket.socket:
    host, port = urlsplit(proxy.url).netloc.split(":")
    return socket.create_connection((host, int(port)), timeout=CAP)


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset); fails if it keeps it open."""
    chunks: list[bytes] = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(64 * KiB)
        except ConnectionResetError:
            return b"".join(chunks)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {CAP} s") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class _Replay:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def parse_response(data: bytes) -> RawResponse:
    response = http.client.HTTPResponse(_Replay(data))  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def assert_error(response: RawResponse, status: int, error_code: str) -> None:
    assert response.status == status
    assert response.headers["connection"] == "close"
    assert json.loads(response.body)["error_code"] == error_code


def head_timeout_passed(proxy: Proxy) -> None:
    """Return once header_timeout has passed since this call: a connection opened now is closed by the server."""
    with connect(proxy) as probe:
        assert read_until_closed(probe, time.monotonic() + CAP) == b""


def tree_rss_kib(pid: int) -> int:
    """Resident memory of the server: its process and every descendant (the uvicorn workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for member in tree:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def endless_head(shape: str) -> bytes:
    """16 MiB of request head that never ends, in the three places a head can grow."""
    if shape == "header_lines":
        start = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        lines = b"".join(b"X-Pad-%06d: %s\r\n" % (i, b"a" * 1000) for i in range(16 * MiB // 1000))
        return start + lines
    if shape == "one_header_line":
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (16 * MiB)
    return b"GET /" + b"a" * (16 * MiB)  # a URL without end


@pytest.mark.parametrize("shape", ["header_lines", "one_header_line", "url"])
def test_an_endless_head_is_refused_before_it_is_buffered(limited: Proxy, shape: str) -> None:
    attack = endless_head(shape)
    before = tree_rss_kib(limited.pid)
    attackers = []
    for _ in range(10):
        sock = connect(limited)
        attackers.append(sock)
        try:
            sock.sendall(attack)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed the connection long before 16 MiB
    # Unbounded, 10 such heads held 160 MiB; bounded, a worker holds at most a read or two beyond 32 KiB at a time.
    grown = tree_rss_kib(limited.pid) - before
    assert grown < 50 * 1024, f"the server grew by {grown} KiB"
    deadline = time.monotonic() + CAP
    for sock in attackers:
        with sock:
            answer = read_until_closed(sock, deadline)
        # A 431, or nothing: a reset for the bytes the server never read may overtake the answer.
        if answer:
            assert_error(parse_response(answer), 431, "BAD_REQUEST")
    assert httpx.get(f"{limited.url}/health", timeout=CAP).status_code == 200


def test_heads_up_to_the_limit_are_served_and_larger_ones_refused(limited: Proxy) -> None:
    # 8 KiB: a browser's cookies or a large bearer token. 40 KiB would pass the default limit: the workers read 32 KiB
    # from their environment.
    for cookie, status in [(8 * KiB, 200), (30 * KiB, 200), (40 * KiB, 431)]:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: session=" + b"c" * cookie + b"\r\n\r\n"
        for _ in range(4):  # several connections, so both workers are likely to answer some
            with connect(limited) as sock:
                sock.sendall(request)
                response = read_response(sock, timeout=CAP)
            assert response.status == status, f"{cookie} bytes of cookie"
            if status == 431:
                assert_error(response, 431, "BAD_REQUEST")
                assert str(LIMIT) in json.loads(response.body)["message"]


def test_header_fields_beyond_the_count_limit_are_refused(limited: Proxy) -> None:
    for fields, status in [(100, 200), (101, 431)]:
        extra = b"".join(b"X-Field-%d: v\r\n" % i for i in range(fields - 1))  # Host is the first field
        with connect(limited) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n")
            response = read_response(sock, timeout=CAP)
        assert response.status == status, f"{fields} fields"
        if status == 431:
            assert_error(response, 431, "BAD_REQUEST")


def test_silent_and_stalled_connections_are_closed(limited: Proxy) -> None:
    silent = [connect(limited) for _ in range(100)]
    stalled = []
    for _ in range(100):
        sock = connect(limited)
        sock.sendall(f"PUT {ARTIFACTS}/slow.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le".encode())
        stalled.append(sock)
    deadline = time.monotonic() + CAP
    for sock in silent:
        with sock:
            assert read_until_closed(sock, deadline) == b""  # nothing sent, nothing to answer
    for sock in stalled:
        with sock:
            answer = read_until_closed(sock, deadline)
        # 408 for the partial head; nothing if the server's timer ran before it had read those bytes.
        if answer:
            assert_error(parse_response(answer), 408, "DEADLINE_EXCEEDED")
    assert httpx.get(f"{limited.url}/health", timeout=CAP).status_code == 200


def test_a_trickled_head_is_cut_off_although_bytes_keep_arriving(limited: Proxy) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        deadline = time.monotonic() + CAP
        # One byte per 50 ms (at most 1,200 bytes in CAP: far from the size limit) until the server answers or closes.
        while not select.select([sock], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, f"the server kept a trickling head open for {CAP} s"
            try:
                sock.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_until_closed(sock, deadline)
    if answer:
        assert_error(parse_response(answer), 408, "DEADLINE_EXCEEDED")


def test_a_kept_alive_connection_times_each_head_from_its_first_byte(limited: Proxy) -> None:
    with connect(limited) as sock:
        for _ in range(3):
            sock.sendall(HEALTH)
            assert read_response(sock, timeout=CAP).status == 200
        # The head timer starts with this byte (the server has read it before it can fire): always a 408.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        assert_error(parse_response(read_until_closed(sock, time.monotonic() + CAP)), 408, "DEADLINE_EXCEEDED")


def test_blank_lines_do_not_hold_an_idle_connection(limited: Proxy) -> None:
    # uvicorn cancels its keep-alive timer on any byte and re-arms it only after a response; httptools skips blank
    # lines between requests, so "\r\n" would keep the connection idle forever without the head timer.
    with connect(limited) as sock:
        sock.sendall(HEALTH)
        assert read_response(sock, timeout=CAP).status == 200
        sock.sendall(b"\r\n")
        assert read_until_closed(sock, time.monotonic() + CAP) == b""


def test_the_head_timer_spares_bodies_downloads_and_idle_keep_alive(single: Proxy) -> None:
    big = os.urandom(16 * MiB)  # far more than socket buffers hold: its response stays in flight until read
    httpx.put(single.artifact_url("t/big.bin"), content=big, timeout=CAP).raise_for_status()
    body = os.urandom(MiB)
    with connect(single) as sock:
        # An upload whose body arrives after header_timeout has passed since the connection opened.
        head = f"PUT {ARTIFACTS}/t/up.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body[:1000])
        single.wait_in_flight(1)
        head_timeout_passed(single)
        sock.sendall(body[1000:])
        assert read_response(sock, "PUT", timeout=CAP).status == 200
        # A download still being sent when header_timeout passes, on the same kept-alive connection.
        sock.sendall(f"GET {ARTIFACTS}/t/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        single.wait_in_flight(1)
        head_timeout_passed(single)
        download = read_response(sock, timeout=CAP)
        assert download.status == 200 and download.body == big
        # Idle between requests for longer than header_timeout: that is keep-alive's to end, not the head timer's.
        head_timeout_passed(single)
        sock.sendall(f"GET {ARTIFACTS}/t/up.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        again = read_response(sock, timeout=CAP)
        assert again.status == 200 and again.body == body
