"""Presigned-only mode, MLflow 3.18's `MLFLOW_ARTIFACTS_PRESIGNED_ONLY` (wire spec §10): proxied PUTs and GETs of
artifacts are refused with 403 and `artifacts_presigned_only: true`; listing, deleting, `mpu/*`, `presigned/` and
the self-signed URLs behind them still work; a destination that cannot presign both ways does not start. Our size
threshold, `ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE`, refuses in the same shape."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from app.policy import PRESIGNED_ONLY_DOWNLOAD, PRESIGNED_ONLY_UPLOAD
from tests.servers import free_port
from tests.utils import multipart
from tests.utils.proxy import Proxy, running_proxy
from tests.utils.raw_http import read_response

ON = {"MLFLOW_ARTIFACTS_PRESIGNED_ONLY": "true"}


def refusal(message: str) -> dict[str, object]:
    return {"error_code": "PERMISSION_DENIED", "message": message, "artifacts_presigned_only": True}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    root = tmp_path_factory.mktemp("root")
    with running_proxy(str(root), tmp_path_factory.mktemp("proxy"), env=ON) as proxy:
        yield proxy, root


def seed(root: Path, path: str, content: bytes) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(content)


def test_server_info_says_so(local: tuple[Proxy, Path]) -> None:
    info = httpx.get(f"{local[0].url}/api/3.0/mlflow/server-info", timeout=60).json()
    assert (
        info["artifacts_presigned_only"],
        info["multipart_uploads_enabled"],
        info["multipart_downloads_enabled"],
    ) == (
        True,
        True,
        True,
    )


def test_proxied_put_is_refused_before_its_body(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    refused = httpx.put(proxy.artifact_url("p/put.bin"), content=b"bytes", timeout=60)
    assert (refused.status_code, refused.json()) == (403, refusal(PRESIGNED_ONLY_UPLOAD))
    assert not (root / "p" / "put.bin").exists()
    # A 10 GB PUT that waits for 100 Continue is answered without one: not a byte of its body is asked for.
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            "PUT /api/2.0/mlflow-artifacts/artifacts/p/huge.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        response = read_response(sock, "PUT")
    assert response.status == 403


def test_proxied_get_and_head_are_refused(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    seed(root, "g/file.txt", b"stored")
    refused = httpx.get(proxy.artifact_url("g/file.txt"), timeout=60)
    assert (refused.status_code, refused.json()) == (403, refusal(PRESIGNED_ONLY_DOWNLOAD))
    assert httpx.head(proxy.artifact_url("g/file.txt"), timeout=60).status_code == 403


def test_list_delete_multipart_and_presigned_still_work(local: tuple[Proxy, Path]) -> None:
    proxy, root = local
    done = multipart.upload(proxy.api, "m", "model.bin", [b"a" * 1000, b"b" * 10])  # part PUTs are bodies too
    assert done.status_code == 200, done.text
    assert (root / "m" / "model.bin").read_bytes() == b"a" * 1000 + b"b" * 10
    listing = httpx.get(f"{proxy.api}/artifacts", params={"path": "m"}, timeout=60).json()
    assert listing == {"files": [{"path": "model.bin", "is_dir": False, "file_size": 1010}]}
    presigned = httpx.get(f"{proxy.api}/presigned/m/model.bin", timeout=60).json()
    ranged = httpx.get(presigned["url"], headers={**presigned["headers"], "Range": "bytes=998-1001"}, timeout=60)
    assert (ranged.status_code, ranged.content) == (206, b"aabb")
    created = multipart.create(proxy.api, "m", "aborted.bin").json()
    assert multipart.abort(proxy.api, "m", "aborted.bin", created).status_code == 200
    assert httpx.delete(proxy.artifact_url("m"), timeout=60).status_code == 200
    assert not (root / "m").exists()


def test_the_317_client(local: tuple[Proxy, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3.17 client knows no presigned-only mode: it downloads through presigned URLs (server-info offers them) but
    sends files under its multipart threshold as PUTs, which are refused with the upgrade advice."""
    proxy, _ = local
    for name in ("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = proxy.url.rsplit(":", 1)[1]
    repo = MlflowArtifactsRepository(f"mlflow-artifacts://127.0.0.1:{port}/c/run", tracking_uri=proxy.url)
    source = tmp_path / "small.txt"
    source.write_bytes(b"small file")
    with pytest.raises(requests.HTTPError, match="uploaded directly to storage") as refused:
        repo.log_artifact(str(source))
    assert refused.value.response.status_code == 403  # not retried: a 4xx
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    repo.log_artifact(str(source))
    assert [(f.path, f.file_size) for f in repo.list_artifacts()] == [("small.txt", len(b"small file"))]
    out = tmp_path / "out"
    out.mkdir()
    assert Path(repo.download_artifacts("small.txt", str(out))).read_bytes() == b"small file"
    assert proxy.logged("GET /api/2.0/mlflow-artifacts/presigned/c/run/small.txt")


@pytest.mark.parametrize(
    ("env", "why"),
    [
        # (No secret is no case here: the CLI makes one per launch. test_a_worker_refuses_too covers a bare worker.)
        ({"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}, "presigned downloads are switched off"),
        ({"ARTIFACT_PROXY_ENABLE_MULTIPART": "false"}, "multipart uploads are switched off"),
        # Bound to every interface with no checked address, a local destination could sign no URL for anyone.
        ({"ARTIFACT_PROXY_HOST": "0.0.0.0"}, "its URLs need ARTIFACT_PROXY_PUBLIC_URL or MLFLOW_SERVER_ALLOWED_HOSTS"),
    ],
)
def test_a_destination_that_cannot_presign_does_not_start(tmp_path: Path, env: dict[str, str], why: str) -> None:
    environment = {"PATH": "/usr/bin:/bin", "ARTIFACT_PROXY_SIGNING_SECRET": "s" * 32, **ON, **env}
    command = [sys.executable, "-m", "app", "server", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--artifacts-destination", str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: MLFLOW_ARTIFACTS_PRESIGNED_ONLY needs a destination that presigns")
    assert f"does not: {why}" in lines[0], lines[0]


def test_a_worker_refuses_too(tmp_path: Path) -> None:
    """Workers started without the CLI (uvicorn on the app factory) check in their lifespan."""
    environment = {
        "PATH": "/usr/bin:/bin",
        "ARTIFACT_PROXY_ARTIFACTS_DESTINATION": str(tmp_path),
        "ARTIFACT_PROXY_SIGNING_SECRET": "",
        **ON,
    }
    factory = ["-m", "uvicorn", "--factory", "app.main:create_app_from_env", "--port", str(free_port())]
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, *factory], env=environment, capture_output=True, text=True, timeout=60, cwd=repo
    )
    assert result.returncode != 0
    assert "cannot serve: MLFLOW_ARTIFACTS_PRESIGNED_ONLY needs a destination that presigns" in result.stderr


def test_the_size_threshold_refuses_in_the_same_shape(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE": "1000"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        refused = httpx.put(proxy.artifact_url("big.bin"), content=b"x" * 1001, timeout=60)
        assert refused.status_code == 403
        body = refused.json()
        assert (body["error_code"], body["artifacts_presigned_only"]) == ("PERMISSION_DENIED", True)
        assert body["message"] == (
            "This server requires artifacts over 1000 bytes to be uploaded directly to storage: set "
            "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true and MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE to at most "
            "1001, then retry the upload."
        )
        assert httpx.put(proxy.artifact_url("small.bin"), content=b"x" * 1000, timeout=60).status_code == 200
        # Downloads are not concerned, and server-info does not claim the whole mode.
        assert httpx.get(proxy.artifact_url("small.bin"), timeout=60).content == b"x" * 1000
        info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info", timeout=60).json()
        assert info["artifacts_presigned_only"] is False
