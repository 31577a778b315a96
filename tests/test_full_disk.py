"""A full destination is 507 (final: the MLflow client does not retry it), keeps the previous version, leaves nothing
partial and gives the space back: on a local directory, and on an SFTP server whose disk is full.

Each destination lives on a 64 MiB filesystem of its own (tmpfs), so the full disk is real and nothing else fills."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.paths import TEMP_PREFIX
from tests.conftest import local_server
from tests.servers import StorageServer
from tests.servers.sftp import sftp_server
from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import running_proxy
from tests.utils.raw_http import read_response

MiB = 1024 * 1024
# FTP is left to tests/test_storage_ftp.py's reply mapping: pyftpdlib sometimes resets the connection before its
# "426 No space left on device" reaches us, and then there is nothing to tell a full disk from a network fault.
SERVERS: dict[str, Callable[[Path], AbstractContextManager[StorageServer]]] = {
    "local": local_server,
    "sftp": sftp_server,
}


# Where each test server keeps its files under the directory it is given: only that is on the small disk, so the
# servers' own logs and keys are not starved of space.
STORE_DIR = {"local": "artifacts", "sftp": "sftp-root"}


@contextmanager
def mounted_small_disk(mount: Path) -> Iterator[Path]:
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"the full-disk tests mount a tmpfs and need root (CI runs as root): {done.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def used_bytes(mount: Path) -> int:
    return shutil.disk_usage(mount).used


def leftovers(mount: Path) -> list[Path]:
    return [path for path in mount.rglob("*") if path.name.startswith(TEMP_PREFIX) or path.name == "new.bin"]


@pytest.mark.parametrize("backend", list(SERVERS))
def test_a_full_disk_is_507_keeps_the_previous_version_and_gives_the_space_back(backend: str, tmp_path: Path) -> None:
    with (
        mounted_small_disk(tmp_path / "store" / STORE_DIR[backend]) as small_disk,
        SERVERS[backend](tmp_path / "store") as server,
    ):
        with running_proxy(server.destination, tmp_path / "proxy", env=server.env) as proxy:
            previous = b"v1" * (5 * MiB)
            httpx.put(proxy.artifact_url("m/model.bin"), content=previous).raise_for_status()
            before = used_bytes(small_disk)
            for name in ("model.bin", "new.bin"):  # an overwrite and a first upload
                full = httpx.put(proxy.artifact_url(f"m/{name}"), content=b"x" * (100 * MiB), timeout=120)
                assert full.status_code == 507, full.text
                assert full.json()["error_code"] == "RESOURCE_EXHAUSTED"
                assert "space" in full.json()["message"]
            assert httpx.get(proxy.artifact_url("m/model.bin")).content == previous
            assert httpx.get(proxy.artifact_url("m/new.bin")).status_code == 404
            listed = httpx.get(f"{proxy.api}/artifacts?path=m").json()["files"]
            assert [entry["path"] for entry in listed] == ["model.bin"]
            assert leftovers(small_disk) == []
            assert used_bytes(small_disk) <= before + MiB  # the failed uploads' blocks are free again
            assert httpx.put(proxy.artifact_url("m/small.txt"), content=b"fits").status_code == 200
            assert "Traceback" not in proxy.log()


def test_the_mlflow_client_gets_a_full_disk_error_at_once_without_retrying(
    mlflow_client: ArtifactClient, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(80 * MiB)
    with mounted_small_disk(tmp_path / "root") as root, running_proxy(str(root), tmp_path / "proxy") as proxy:
        repository = mlflow_client.http_repo(f"{proxy.api}/artifacts/1/run/artifacts")
        with pytest.raises(Exception, match="507"):
            repository.log_artifact(str(big))
        assert proxy.logged('"PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/big.bin HTTP/1.1" 507')
        assert proxy.log().count("artifacts/1/run/artifacts/big.bin HTTP/1.1") == 1  # not retried


def test_a_free_space_floor_refuses_a_put_before_its_body_and_fails_ready(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_MIN_FREE_BYTES": str(32 * MiB)}
    with mounted_small_disk(tmp_path / "root") as root, running_proxy(str(root), tmp_path / "proxy", env=env) as proxy:
        assert httpx.get(f"{proxy.url}/ready").status_code == 200
        metrics = httpx.get(f"{proxy.url}/metrics").text.splitlines()
        free = [line for line in metrics if line.startswith("artifact_proxy_destination_free_bytes ")]
        assert free and 60 * MiB < float(free[0].split()[1]) <= 64 * MiB
        host, port = urlsplit(proxy.url).netloc.split(":")
        with socket.create_connection((host, int(port))) as sock:
            target = "/api/2.0/mlflow-artifacts/artifacts/f/big.bin"
            sock.sendall(f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {40 * MiB}\r\n\r\n".encode())
            refused = read_response(sock, "PUT")  # answered without a single body byte sent
        assert refused.status == 507
        assert "floor" in json.loads(refused.body)["message"]
        assert httpx.put(proxy.artifact_url("f/fits.bin"), content=b"x" * (20 * MiB)).status_code == 200
        (root / "filler.bin").write_bytes(b"y" * (20 * MiB))  # something else fills the disk below the floor
        not_ready = httpx.get(f"{proxy.url}/ready")
        assert not_ready.status_code == 503
        assert str(root) not in not_ready.text  # anyone may probe: no paths in the answer
        assert proxy.logged("ARTIFACT_PROXY_MIN_FREE_BYTES")  # the reason is in the operator's log
