"""Atomic, streamed uploads on the local destination: interruptions, short bodies, races and crash leftovers."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.paths import TEMP_PREFIX
from tests.utils.proxy import Proxy, running_proxy


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    base = tmp_path_factory.mktemp("local-uploads")
    root = base / "root"
    with running_proxy(str(root), base / "proxy", workers=2) as proxy:
        yield proxy, root


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def wait_for_no_temp_files(root: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while temp_files(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(root) == []


def raw_put_then_hang_up(proxy: Proxy, path: str, announced: int, sent: bytes) -> None:
    host, port = urlsplit(proxy.url).netloc.split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"PUT /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {announced}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        time.sleep(0.3)  # let the server write what it got, so the temp file really exists


def test_interrupted_upload_keeps_the_previous_version(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    httpx.put(proxy.artifact_url("keep/model.bin"), content=b"version one").raise_for_status()
    raw_put_then_hang_up(proxy, "keep/model.bin", announced=50 * 1024 * 1024, sent=b"x" * (5 * 1024 * 1024))
    wait_for_no_temp_files(root)
    assert httpx.get(proxy.artifact_url("keep/model.bin")).content == b"version one"


def test_interrupted_first_upload_leaves_nothing(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    raw_put_then_hang_up(proxy, "fresh/never.bin", announced=10_000, sent=b"y" * 100)
    wait_for_no_temp_files(root)
    assert httpx.get(proxy.artifact_url("fresh/never.bin")).status_code == 404


def test_concurrent_writers_leave_exactly_one_complete_version(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    versions = [bytes([i]) * (1024 * 1024 + i * 4099) for i in range(12)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}

    def upload(data: bytes) -> int:
        return httpx.put(proxy.artifact_url("race/target.bin"), content=data, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(upload, versions)) == {200}
    final = httpx.get(proxy.artifact_url("race/target.bin")).content
    assert hashlib.sha256(final).hexdigest() in digests
    assert temp_files(root) == []
    assert [p.name for p in (root / "race").iterdir()] == ["target.bin"]


def test_readers_never_see_a_partial_file_while_it_is_replaced(local: tuple[Proxy, Path]) -> None:
    proxy, _ = local
    old, new = b"a" * (4 * 1024 * 1024), b"b" * (6 * 1024 * 1024)
    httpx.put(proxy.artifact_url("swap/f.bin"), content=old).raise_for_status()
    with ThreadPoolExecutor(max_workers=4) as pool:
        writer = pool.submit(httpx.put, proxy.artifact_url("swap/f.bin"), content=new, timeout=60)
        seen = [httpx.get(proxy.artifact_url("swap/f.bin")).content for _ in range(10)]
        writer.result().raise_for_status()
    assert all(body in (old, new) for body in seen)


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
    with running_proxy(str(root), tmp_path / "proxy"):
        assert not any(leftover.exists() for leftover in leftovers)
        assert live.exists()
        assert (root / "a" / "kept.txt").read_text() == "kept"


def test_size_limit_is_413_before_the_body_is_read(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--max-upload-size", "1000"]) as proxy:
        too_big = httpx.put(proxy.artifact_url("big.bin"), content=b"x" * 5000)
        assert too_big.status_code == 413
        assert too_big.json()["error_code"] == "BAD_REQUEST"

        def chunked():
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
            head = f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {3 << 20}\r\n\r\n"
            sock.sendall(head.encode() + b"y" * (2 << 20))  # two of three MiB, then silence
            sock.settimeout(10)
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"DEADLINE_EXCEEDED" in reply
        wait_for_no_temp_files(root)
        assert httpx.get(proxy.artifact_url("stall/m.bin")).content == b"previous"
