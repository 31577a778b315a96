"""The local destination under faults: full disks, special files, permissions, damaged metadata, crashes, and a
destination that cannot be served at startup. Everything runs against the real service over real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.storage.local.files import DIGEST_XATTR
from tests.servers import free_port, wait_until
from tests.utils.proxy import Proxy, running_proxy

MiB = 1024 * 1024
# Root without its capabilities: file modes apply to it as to any service user (the tests run as root in CI).
WITHOUT_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


def test_fifos_devices_and_sockets_are_not_artifacts_and_never_block(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "s").mkdir(parents=True)
    os.mkfifo(root / "s" / "pipe")
    os.mknod(root / "s" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "s" / "sock"))
        (root / "s" / "real.txt").write_bytes(b"real")
        with running_proxy(str(root), tmp_path / "proxy") as proxy:
            # More GETs of the FIFO than the service has I/O threads (8): a blocking open would starve the rest.
            with ThreadPoolExecutor(12) as pool:
                statuses = list(pool.map(lambda _: httpx.get(proxy.artifact_url("s/pipe")).status_code, range(12)))
            assert statuses == [404] * 12
            for name in ("null", "sock"):
                assert httpx.get(proxy.artifact_url(f"s/{name}")).status_code == 404
                assert httpx.head(proxy.artifact_url(f"s/{name}")).status_code == 404
            assert httpx.get(proxy.artifact_url("s/real.txt")).content == b"real"
            listed = httpx.get(f"{proxy.api}/artifacts?path=s").json()["files"]
            assert [entry["path"] for entry in listed] == ["real.txt"]


def metric(proxy: Proxy, name: str) -> float:
    lines = httpx.get(f"{proxy.url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def test_permission_errors_are_503_naming_the_operators_problem_and_count_as_store_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "p" / "locked").mkdir(parents=True)
    (root / "p" / "locked" / "inside.txt").write_bytes(b"inside")
    (root / "p" / "secret.bin").write_bytes(b"secret")
    (root / "p" / "readonly").mkdir()
    (root / "p" / "secret.bin").chmod(0)
    (root / "p" / "locked").chmod(0)
    (root / "p" / "readonly").chmod(0o555)
    try:
        with running_proxy(str(root), tmp_path / "proxy", wrapper=WITHOUT_CAPABILITIES) as proxy:
            refused = [
                httpx.get(proxy.artifact_url("p/secret.bin")),
                httpx.get(proxy.artifact_url("p/locked/inside.txt")),
                httpx.get(f"{proxy.api}/artifacts?path=p/locked"),
                httpx.put(proxy.artifact_url("p/readonly/new.bin"), content=b"new"),
                httpx.put(proxy.artifact_url("p/readonly/deeper/new.bin"), content=b"x" * (3 * MiB)),
                httpx.delete(proxy.artifact_url("p/locked/inside.txt")),
            ]
            for response in refused:
                assert response.status_code == 503, response.text
                assert "permission denied" in response.json()["message"].lower()
                assert "operator" in response.json()["message"]
                assert response.headers["retry-after"]
            # Metrics are recorded just after each response, with its access line: wait for the last one first.
            assert proxy.logged('"DELETE /api/2.0/mlflow-artifacts/artifacts/p/locked/inside.txt HTTP/1.1" 503')
            assert metric(proxy, 'artifact_proxy_store_errors_total{status="503"}') == len(refused)
            assert httpx.get(proxy.artifact_url("p/missing.txt")).status_code == 404  # still serving
            assert "Traceback" not in proxy.log()
            assert "Exception in ASGI application" not in proxy.log()
    finally:
        for path in ("p/secret.bin", "p/locked", "p/readonly"):
            (root / path).chmod(0o755)


def test_a_malformed_digest_attribute_is_ignored_and_logged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as proxy:
        put = httpx.put(proxy.artifact_url("d/f.txt"), content=b"content")
        assert put.headers["repr-digest"].startswith("sha-256=")
        os.setxattr(root / "d" / "f.txt", DIGEST_XATTR, b"not a digest \xff")
        got = httpx.get(proxy.artifact_url("d/f.txt"))
        assert (got.status_code, got.content) == (200, b"content")
        assert "repr-digest" not in got.headers
        assert proxy.logged("ignoring a malformed digest attribute on 'd/f.txt'")


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unusable_destination_is_one_error_line_and_exit_status_1(tmp_path: Path, workers: int) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", "app", "server", "--artifacts-destination", str(tmp_path / "a-file" / "root")]
        + ["--port", str(free_port()), "--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert str(tmp_path / "a-file" / "root") in lines[0]


def open_descriptors(pid: int) -> list[str]:
    names = []
    for task in Path("/proc").glob("[0-9]*"):  # the server and its workers
        try:
            if os.getpgid(int(task.name)) != pid:
                continue
            for fd in (task / "fd").iterdir():
                names.append(os.readlink(fd))
        except OSError:
            continue
    return names


def test_kill_9_mid_upload_leaves_nothing_and_keeps_the_previous_version(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as proxy:
        httpx.put(proxy.artifact_url("k/kept.bin"), content=b"previous").raise_for_status()
        host, port = urlsplit(proxy.url).netloc.split(":")
        sockets = []
        for name in ("kept.bin", "first.bin"):
            sock = socket.create_connection((host, int(port)))
            target = f"/api/2.0/mlflow-artifacts/artifacts/k/{name}"
            head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {8 * MiB}\r\n\r\n"
            sock.sendall(head.encode() + b"z" * (4 * MiB))
            sockets.append(sock)
        # Both uploads are being written once the server holds two files open in k/ that have no name yet.
        in_progress = str(root / "k")
        wait_until(
            lambda: sum(name.startswith(in_progress + os.sep) for name in open_descriptors(proxy.pid)) >= 2,
            60,
            "two uploads in progress",
        )
        os.killpg(proxy.pid, signal.SIGKILL)
        for sock in sockets:
            sock.close()
    assert sorted(path.name for path in (root / "k").iterdir()) == ["kept.bin"]
    assert (root / "k" / "kept.bin").read_bytes() == b"previous"
    with running_proxy(str(root), tmp_path / "proxy") as restarted:
        assert httpx.get(restarted.artifact_url("k/kept.bin")).content == b"previous"
        assert httpx.get(restarted.artifact_url("k/first.bin")).status_code == 404
        assert json.loads(httpx.get(f"{restarted.api}/artifacts?path=k").text)["files"] == [
            {"path": "kept.bin", "is_dir": False, "file_size": 8}
        ]
