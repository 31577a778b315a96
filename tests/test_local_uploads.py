"""Atomic, streamed uploads on the local destination: interruptions, short bodies, races and crash leftovers."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.paths import TEMP_PREFIX
from tests.servers import wait_until
from tests.utils.proxy import PATIENCE, Proxy, held_body, running_proxy
from tests.utils.raw_http import read_response


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    base = tmp_path_factory.mktemp("local-uploads")
    root = base / "root"
    with running_proxy(str(root), base / "proxy", workers=2) as proxy:
        yield proxy, root


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def wait_until_idle(proxy: Proxy) -> None:
    """Until no request is inside the app: an abandoned upload has been noticed, cleaned up and answered."""
    wait_until(lambda: proxy.requests_in_flight() == 0, PATIENCE, "the service to finish every request")


def raw_put_then_hang_up(proxy: Proxy, path: str, announced: int, sent: bytes) -> None:
    """Start an upload, hang up once the service is reading its body, and return when the service is done with it."""
    wait_until_idle(proxy)  # so the one in flight below is this one
    host, port = urlsplit(proxy.url).netloc.split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"PUT /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {announced}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        proxy.wait_in_flight(1)  # the upload is inside the app, its body half-sent: hanging up now interrupts it
    wait_until_idle(proxy)


def test_interrupted_upload_keeps_the_previous_version(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    httpx.put(proxy.artifact_url("keep/model.bin"), content=b"version one").raise_for_status()
    raw_put_then_hang_up(proxy, "keep/model.bin", announced=50 * 1024 * 1024, sent=b"x" * (5 * 1024 * 1024))
    assert temp_files(root) == []
    assert httpx.get(proxy.artifact_url("keep/model.bin")).content == b"version one"


def test_interrupted_first_upload_leaves_nothing(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    raw_put_then_hang_up(proxy, "fresh/never.bin", announced=10_000, sent=b"y" * 100)
    assert temp_files(root) == []
    assert httpx.get(proxy.artifact_url("fresh/never.bin")).status_code == 404


def test_concurrent_writers_leave_exactly_one_complete_version(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    versions = [bytes([i]) * (1024 * 1024 + i * 4099) for i in range(12)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    release = threading.Event()

    def upload(data: bytes) -> int:
        body = held_body(data, 64 * 1024, release)
        headers = {"Content-Length": str(len(data))}
        return httpx.put(proxy.artifact_url("race/target.bin"), content=body, headers=headers, timeout=60).status_code

    wait_until_idle(proxy)
    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        statuses = [pool.submit(upload, data) for data in versions]
        try:
            proxy.wait_in_flight(len(versions))  # every writer is mid-body at once: they really race
        finally:
            release.set()
        assert {status.result() for status in statuses} == {200}
    final = httpx.get(proxy.artifact_url("race/target.bin")).content
    assert hashlib.sha256(final).hexdigest() in digests
    assert temp_files(root) == []
    assert [p.name for p in (root / "race").iterdir()] == ["target.bin"]


def test_readers_never_see_a_partial_file_while_it_is_replaced(local: tuple[Proxy, Path]) -> None:
    proxy, _ = local
    url = proxy.artifact_url("swap/f.bin")
    old, new = b"a" * (4 * 1024 * 1024), b"b" * (6 * 1024 * 1024)
    httpx.put(url, content=old).raise_for_status()
    wait_until_idle(proxy)
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        body = held_body(new, 3 * 1024 * 1024, release)
        writer = pool.submit(httpx.put, url, content=body, headers={"Content-Length": str(len(new))}, timeout=60)
        try:
            proxy.wait_in_flight(1)  # the replacement is half-written now
            during = [httpx.get(url, timeout=60).content for _ in range(5)]
        finally:
            release.set()
        around = []  # reads while the rest arrives and the new version is put in place
        while not writer.done():
            around.append(httpx.get(url, timeout=60).content)
        writer.result().raise_for_status()
    assert during == [old] * 5
    assert all(got in (old, new) for got in around), [len(got) for got in around]
    assert httpx.get(url, timeout=60).content == new


def test_temp_files_are_hidden_from_listings(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    (root / "hidden").mkdir()
    (root / "hidden" / "real.txt").write_text("r")
    (root / "hidden" / f"{TEMP_PREFIX}crashed").write_text("partial")
    listing = httpx.get(f"{proxy.api}/artifacts", params={"path": "hidden"}).json()
    assert listing == {"files": [{"path": "real.txt", "is_dir": False, "file_size": 1}]}


def test_put_onto_a_directory_or_below_a_file_is_400(local: tuple[Proxy, Path]) -> None:
    proxy, _ = local
    httpx.put(proxy.artifact_url("shape/dir/inner.txt"), content=b"i").raise_for_status()
    assert httpx.put(proxy.artifact_url("shape/dir"), content=b"x").status_code == 400
    assert httpx.put(proxy.artifact_url("shape/dir/inner.txt/below.txt"), content=b"x").status_code == 400
    assert httpx.get(proxy.artifact_url("shape/dir/inner.txt")).content == b"i"


def test_leftover_temp_files_are_removed_at_startup(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    leftovers = [root / f"{TEMP_PREFIX}1", root / "a" / "b" / f"{TEMP_PREFIX}2"]
    for leftover in leftovers:
        leftover.write_bytes(b"half an upload")
        os.utime(leftover, (time.time() - 3600,) * 2)  # a crash an hour ago
    live = root / "a" / f"{TEMP_PREFIX}live"  # another replica's upload, being written right now
    live.write_bytes(b"in flight")
    (root / "a" / "kept.txt").write_text("kept")
    # Files younger than this are never swept, locked or not: half an hour keeps `live` safe however slow the start.
    env = {"ARTIFACT_PROXY_STALE_UPLOAD_AGE": "1800"}
    with running_proxy(str(root), tmp_path / "proxy", env=env):
        # The startup sweep runs in the background, holding a lock on the root: wait until it removed what it
        # must, then until it has let go of the root, i.e. finished its pass, before looking at what it kept.
        wait_until(lambda: not any(leftover.exists() for leftover in leftovers), PATIENCE, "the startup sweep")
        wait_until(lambda: root_lock_is_free(root), PATIENCE, "the startup sweep to finish")
        assert live.exists()
        assert (root / "a" / "kept.txt").read_text() == "kept"


def root_lock_is_free(root: Path) -> bool:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # releases the lock at once
    return True


def test_size_limit_is_413_before_the_body_is_read(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--max-upload-size", "1000"]) as proxy:
        too_big = httpx.put(proxy.artifact_url("big.bin"), content=b"x" * 5000)
        assert too_big.status_code == 413
        assert too_big.json()["error_code"] == "BAD_REQUEST"

        def chunked() -> Iterator[bytes]:
            yield b"x" * 600
            yield b"x" * 600

        assert httpx.put(proxy.artifact_url("big2.bin"), content=chunked()).status_code == 413
        assert httpx.put(proxy.artifact_url("ok.bin"), content=b"x" * 1000).status_code == 200
        assert not (tmp_path / "root" / "big2.bin").exists()
        assert temp_files(tmp_path / "root") == []


def test_a_stalled_upload_is_abandoned_with_408_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {"ARTIFACT_PROXY_UPLOAD_IDLE_TIMEOUT": "1"}
    with running_proxy(str(root), tmp_path / "proxy", env=env) as proxy:
        httpx.put(proxy.artifact_url("stall/m.bin"), content=b"previous").raise_for_status()
        host, port = urlsplit(proxy.url).netloc.split(":")
        with socket.create_connection((host, int(port))) as sock:
            target = "/api/2.0/mlflow-artifacts/artifacts/stall/m.bin"
            head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {3 << 20}\r\n\r\n"
            sock.sendall(head.encode() + b"y" * (2 << 20))  # two of three MiB, then silence
            reply = read_response(sock, "PUT")
        assert reply.status == 408, reply
        assert json.loads(reply.body)["error_code"] == "DEADLINE_EXCEEDED"
        wait_until_idle(proxy)
        assert temp_files(root) == []
        assert httpx.get(proxy.artifact_url("stall/m.bin")).content == b"previous"
