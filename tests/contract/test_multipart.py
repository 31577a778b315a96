"""Presigned multipart uploads and presigned downloads, with the real MLflow clients (both pins), on every backend."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import PRESIGNING_BACKENDS
from tests.servers import free_port
from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import Proxy

pytestmark = [
    pytest.mark.usefixtures("presigning_backend"),
    # Every way of signing, too: GCS with a key file ("gcs") and through IAM signBlob, as on GKE ("gcs-iam").
    pytest.mark.parametrize("backend", PRESIGNING_BACKENDS, indirect=True, scope="session"),
]

MiB = 1024 * 1024
PART = 5 * MiB  # the S3 minimum part size; every backend accepts it


@pytest.fixture(autouse=True)
def _multipart_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(MiB))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(PART))
    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE", str(4 * MiB))


def repo_for(client: ArtifactClient, proxy: Proxy, prefix: str):  # type: ignore[no-untyped-def]
    port = proxy.url.rsplit(":", 1)[1]
    return client.mlflow_artifacts_repo(f"mlflow-artifacts://127.0.0.1:{port}/{prefix}", tracking_uri=proxy.url)


def big_file(tmp_path: Path, size: int = 2 * PART + 1234) -> Path:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(size))
    return source


def tamper(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    key, value = query[-1]
    query[-1] = (key, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_server_info_advertises_presigning(proxy: Proxy) -> None:
    info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info").json()
    assert info["multipart_uploads_enabled"] is True
    assert info["multipart_downloads_enabled"] is True


def test_mlflow_client_multipart_upload_round_trips(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    source = big_file(tmp_path)
    repo = repo_for(mlflow_client, proxy, f"{prefix}/run/artifacts")
    repo.log_artifact(str(source), artifact_path="model")
    assert proxy.logged(f"POST /api/2.0/mlflow-artifacts/mpu/create/{prefix}/run/artifacts/model")
    assert proxy.logged(f"POST /api/2.0/mlflow-artifacts/mpu/complete/{prefix}/run/artifacts/model")
    downloaded = httpx.get(proxy.artifact_url(f"{prefix}/run/artifacts/model/model.bin"), timeout=60)
    assert downloaded.content == source.read_bytes()
    assert [(f.path, f.file_size) for f in repo.list_artifacts("model")] == [("model/model.bin", source.stat().st_size)]


def test_mlflow_client_presigned_download(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "true")
    data = os.urandom(9 * MiB + 77)
    httpx.put(proxy.artifact_url(f"{prefix}/d/blob.bin"), content=data, timeout=60).raise_for_status()
    out = tmp_path / "out"
    out.mkdir()
    local = repo_for(mlflow_client, proxy, f"{prefix}/d").download_artifacts("blob.bin", dst_path=str(out))
    assert Path(local).read_bytes() == data
    assert proxy.logged(f"GET /api/2.0/mlflow-artifacts/presigned/{prefix}/d/blob.bin")


def test_failed_part_makes_the_client_abort_and_nothing_is_visible(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    source = big_file(tmp_path)
    repo = repo_for(mlflow_client, proxy, f"{prefix}/run")
    # Part 2 goes to a port nobody listens on: a part whose transfer fails, as on a network error.
    with (
        mlflow_client.part_urls({2: f"http://127.0.0.1:{free_port()}/x"}),
        pytest.raises(Exception, match="Failed to upload at least one part"),
    ):
        repo.log_artifact(str(source))
    assert proxy.logged(f"POST /api/2.0/mlflow-artifacts/mpu/abort/{prefix}/run")
    assert httpx.get(proxy.artifact_url(f"{prefix}/run/model.bin")).status_code == 404
    assert repo.list_artifacts() == []


def test_every_file_through_multipart_empty_ones_included(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a presigned-only server gets from 3.18 for every upload (wire spec §10), here asked for with the client's
    # own settings: multipart whatever the size, an empty file as one empty part. 3.17 asks for 0 parts for an empty
    # file, which is refused (by MLflow's server too), and gives up: it does not fall back to a PUT.
    from requests import HTTPError

    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "0")
    tree = tmp_path / "tree"
    tree.mkdir()
    files = {"empty.txt": b"", "small.txt": b"small", "model.bin": os.urandom(PART + 1)}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    repo = repo_for(mlflow_client, proxy, f"{prefix}/run")
    if not mlflow_client.at_least("3.18"):
        with pytest.raises(HTTPError) as caught:
            repo.log_artifact(str(tree / "empty.txt"))
        assert caught.value.response.status_code == 400
        assert caught.value.response.json()["message"].startswith("Invalid value 0 for parameter 'num_parts'")
        return
    repo.log_artifacts(str(tree))
    assert proxy.logged(f'"POST /api/2.0/mlflow-artifacts/mpu/complete/{prefix}/run HTTP/1.1" 200', times=len(files))
    assert f"PUT /api/2.0/mlflow-artifacts/artifacts/{prefix}/" not in proxy.log()
    for name, data in files.items():
        assert httpx.get(proxy.artifact_url(f"{prefix}/run/{name}"), timeout=60).content == data
    assert sorted((f.path, f.file_size) for f in repo.list_artifacts()) == sorted(
        (name, len(data)) for name, data in files.items()
    )


def create(proxy: Proxy, directory: str, name: str, num_parts: int) -> dict:
    response = httpx.post(
        f"{proxy.api}/mpu/create/{directory}", json={"path": f"/local/{name}", "num_parts": num_parts}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["part_number"] for c in body["credentials"]] == list(range(1, num_parts + 1))
    return body


def put_parts(created: dict, data: bytes) -> list[dict]:
    parts = []
    for i, cred in enumerate(created["credentials"]):
        response = httpx.put(cred["url"], content=data[i * PART : (i + 1) * PART], headers=cred["headers"], timeout=60)
        assert response.status_code in (200, 201), response.text
        parts.append({"part_number": cred["part_number"], "etag": response.headers.get("etag", ""), "url": cred["url"]})
    return parts


@pytest.mark.usefixtures("verifies_signatures")
def test_tampered_part_url_is_refused(proxy: Proxy, prefix: str) -> None:
    created = create(proxy, prefix, "t.bin", 1)
    cred = created["credentials"][0]
    response = httpx.put(tamper(cred["url"]), content=b"x" * 100, headers=cred["headers"])
    assert response.status_code == 403
    body = {"path": "t.bin", "upload_id": created.get("upload_id")}
    assert httpx.post(f"{proxy.api}/mpu/abort/{prefix}", json=body).status_code == 200


def test_complete_is_bound_to_its_path(proxy: Proxy, prefix: str) -> None:
    data = os.urandom(PART + 10)
    created = create(proxy, prefix, "bound.bin", 2)
    parts = put_parts(created, data)
    upload_id = created.get("upload_id")
    wrong = httpx.post(
        f"{proxy.api}/mpu/complete/{prefix}/elsewhere",
        json={"path": "bound.bin", "upload_id": upload_id, "parts": parts},
    )
    assert wrong.status_code in (400, 404), wrong.text
    assert httpx.get(proxy.artifact_url(f"{prefix}/elsewhere/bound.bin")).status_code == 404
    done = httpx.post(
        f"{proxy.api}/mpu/complete/{prefix}", json={"path": "bound.bin", "upload_id": upload_id, "parts": parts}
    )
    assert done.status_code == 200, done.text
    assert httpx.get(proxy.artifact_url(f"{prefix}/bound.bin"), timeout=60).content == data
    again = httpx.post(
        f"{proxy.api}/mpu/complete/{prefix}", json={"path": "bound.bin", "upload_id": upload_id, "parts": parts}
    )
    assert again.status_code == 200, again.text


def test_multipart_at_the_root_directory(proxy: Proxy, prefix: str) -> None:
    name = f"{prefix}-root.bin"
    created = httpx.post(f"{proxy.api}/mpu/create/", json={"path": name, "num_parts": 1}).json()
    parts = put_parts(created, b"root level")
    body = {"path": name, "upload_id": created.get("upload_id"), "parts": parts}
    assert httpx.post(f"{proxy.api}/mpu/complete/", json=body).status_code == 200
    assert httpx.get(proxy.artifact_url(name)).content == b"root level"
    httpx.delete(proxy.artifact_url(name))


def test_abort_is_idempotent_and_leaves_nothing(proxy: Proxy, prefix: str) -> None:
    created = create(proxy, prefix, "gone.bin", 2)
    put_parts({"credentials": created["credentials"][:1]}, b"y" * PART)
    body = {"path": "gone.bin", "upload_id": created.get("upload_id")}
    assert httpx.post(f"{proxy.api}/mpu/abort/{prefix}", json=body).json() == {}
    assert httpx.post(f"{proxy.api}/mpu/abort/{prefix}", json=body).status_code == 200
    assert httpx.get(proxy.artifact_url(f"{prefix}/gone.bin")).status_code == 404
    assert httpx.get(f"{proxy.api}/artifacts", params={"path": prefix}).json() == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"num_parts": 1}, "Missing value for required parameter 'path'"),
        ({"path": "x.bin", "num_parts": "abc"}, "Invalid value \"abc\" for parameter 'num_parts'"),
        ({"path": "x.bin", "num_parts": 0}, "Invalid value 0 for parameter 'num_parts'"),
        ({"path": "x.bin", "num_parts": 10_001}, "Invalid value 10001 for parameter 'num_parts'"),
        ({"path": "..", "num_parts": 1}, "Invalid path"),
        ({"path": "/tmp/.artifact.uploading.x", "num_parts": 1}, "Invalid path"),
    ],
)
def test_create_validation(proxy: Proxy, prefix: str, body: dict, message: str) -> None:
    response = httpx.post(f"{proxy.api}/mpu/create/{prefix}", json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert response.json()["message"].startswith(message)


def test_presigned_download_url_supports_range(proxy: Proxy, prefix: str) -> None:
    data = os.urandom(100_000)
    httpx.put(proxy.artifact_url(f"{prefix}/p.bin"), content=data).raise_for_status()
    signed = httpx.get(f"{proxy.api}/presigned/{prefix}/p.bin").json()
    assert signed["file_size"] == len(data)
    ranged = httpx.get(signed["url"], headers={**signed["headers"], "Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]


@pytest.mark.usefixtures("verifies_signatures")
def test_tampered_download_url_is_refused(proxy: Proxy, prefix: str) -> None:
    httpx.put(proxy.artifact_url(f"{prefix}/p.bin"), content=b"secret bytes").raise_for_status()
    signed = httpx.get(f"{proxy.api}/presigned/{prefix}/p.bin").json()
    assert httpx.get(tamper(signed["url"]), headers=signed["headers"]).status_code in (400, 401, 403)


def test_presigned_download_errors(proxy: Proxy, prefix: str) -> None:
    assert httpx.get(f"{proxy.api}/presigned/{prefix}/missing.bin").status_code == 404
    httpx.put(proxy.artifact_url(f"{prefix}/dir/f.txt"), content=b"f").raise_for_status()
    assert httpx.get(f"{proxy.api}/presigned/{prefix}/dir").status_code == 400
