"""`server-info` answers MLflow 3.18's keys (wire spec §10) and stays what 3.17 clients act on: the multipart pair
follows what the destination can presign and what the operator switched on, under our variables or MLflow's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from app.settings import Settings
from tests.servers import StorageServer
from tests.utils import multipart
from tests.utils.proxy import Proxy, running_proxy

# `mlflow server --artifacts-only` 3.18.0, key for key and in its order; the values are ours where this service
# differs: it keeps no tracking store and runs neither the AI gateway nor issue detection.
MLFLOW_318_KEYS = [
    "store_type",
    "workspaces_enabled",
    "trace_archival_enabled",
    "multipart_uploads_enabled",
    "multipart_downloads_enabled",
    "artifact_serving_enabled",
    "skill_content_max_size",
    "skill_content_max_files",
    "presigned_upload_run_id_supported",
    "presigned_upload_model_id_supported",
    "model_artifact_presigned_downloads_supported",
    "features_enabled",
    "tracking_auth",
    "artifacts_presigned_only",
]
PRESIGNING = {
    "store_type": None,
    "workspaces_enabled": False,
    "trace_archival_enabled": False,
    "multipart_uploads_enabled": True,
    "multipart_downloads_enabled": True,
    "artifact_serving_enabled": True,
    "skill_content_max_size": 25 * 1024 * 1024,
    "skill_content_max_files": 10_000,
    "presigned_upload_run_id_supported": True,
    "presigned_upload_model_id_supported": True,
    "model_artifact_presigned_downloads_supported": True,
    "features_enabled": {"gateway": False, "scheduled_issue_detection": False},
    "tracking_auth": "",
    "artifacts_presigned_only": False,
}
UNSUPPORTED = "Multipart upload is not supported for the current artifact repository"


def server_info(proxy: Proxy) -> dict[str, object]:
    info: dict[str, object] = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info", timeout=60).json()
    assert httpx.get(f"{proxy.url}/ajax-api/3.0/mlflow/server-info", timeout=60).json() == info
    return info


@pytest.fixture(scope="module")
def presigning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(str(tmp_path_factory.mktemp("root")), tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy


@pytest.fixture
def auto_detecting_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3.17 client that asks server-info: neither multipart variable set, every file big enough for multipart."""
    monkeypatch.delenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", raising=False)
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def repo_for(proxy: Proxy, root: str) -> MlflowArtifactsRepository:
    port = proxy.url.rsplit(":", 1)[1]
    return MlflowArtifactsRepository(f"mlflow-artifacts://127.0.0.1:{port}/{root}", tracking_uri=proxy.url)


def test_the_318_keys_in_their_order(presigning: Proxy) -> None:
    info = server_info(presigning)
    assert list(info) == MLFLOW_318_KEYS
    assert info == PRESIGNING


@pytest.mark.usefixtures("auto_detecting_client")
def test_a_317_client_uses_what_it_is_offered(presigning: Proxy, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"m" * 1000)
    repo = repo_for(presigning, "auto/run")
    repo.log_artifact(str(source))
    assert presigning.logged("POST /api/2.0/mlflow-artifacts/mpu/complete/auto/run")
    out = tmp_path / "out"
    out.mkdir()
    assert Path(repo.download_artifacts("model.bin", str(out))).read_bytes() == source.read_bytes()
    assert presigning.logged("GET /api/2.0/mlflow-artifacts/presigned/auto/run/model.bin")


@pytest.mark.usefixtures("auto_detecting_client")
def test_mlflow_variables_switch_presigning_off_on_the_server(tmp_path: Path) -> None:
    env = {
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
        # Ours wins over MLflow's when both are set.
        "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        "ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD": "true",
    }
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        info = server_info(proxy)
        assert (info["multipart_uploads_enabled"], info["multipart_downloads_enabled"]) == (False, True)
        # Switched off, not impossible: the destination could still presign.
        assert info["presigned_upload_run_id_supported"] is True
        refused = multipart.create(proxy.api, "d", "x.bin")
        assert (refused.status_code, refused.json()) == (501, {"error_code": "NOT_IMPLEMENTED", "message": UNSUPPORTED})
        source = tmp_path / "model.bin"
        source.write_bytes(b"m" * 1000)
        repo_for(proxy, "off/run").log_artifact(str(source))  # the 3.17 client reads false and sends one PUT
        assert proxy.logged("PUT /api/2.0/mlflow-artifacts/artifacts/off/run/model.bin")
        assert "mpu/create/off" not in proxy.log()


def test_a_destination_that_cannot_presign_says_so(
    tmp_path: Path, storage_server_for: Callable[[str], StorageServer]
) -> None:
    sftp = storage_server_for("sftp")  # SFTP has no presigned URLs of its own
    env = {
        **sftp.env,
        "MLFLOW_SERVER_INFO_TRACKING_AUTH": "basic",
        "MLFLOW_SKILL_CONTENT_MAX_DECOMPRESSED_SIZE": "1048576",
    }
    with running_proxy(f"{sftp.destination}/info", tmp_path / "proxy", env=env) as proxy:
        unable = {
            "multipart_uploads_enabled": False,
            "multipart_downloads_enabled": False,
            "presigned_upload_run_id_supported": False,
            "presigned_upload_model_id_supported": False,
            "model_artifact_presigned_downloads_supported": False,
            "tracking_auth": "basic",
            "skill_content_max_size": 1048576,
        }
        assert server_info(proxy) == {**PRESIGNING, **unable}
        refused = multipart.create(proxy.api, "d", "x.bin")
        assert refused.status_code == 501
        # 3.17 clients fall back to a PUT on the constant as a prefix (tests/test_s3_presigning.py: with a reason).
        assert refused.json()["message"].startswith(UNSUPPORTED)


@pytest.mark.parametrize(
    ("env", "uploads", "downloads"),
    [
        ({}, True, True),
        ({"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}, False, True),
        ({"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "False"}, True, False),
        ({"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true", "ARTIFACT_PROXY_ENABLE_MULTIPART": "false"}, False, True),
        (
            {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD": "1"},
            True,
            True,
        ),
    ],
)
def test_mlflow_names_are_aliases_and_ours_win(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], uploads: bool, downloads: bool
) -> None:
    for name in ("ENABLE_MULTIPART", "ENABLE_PRESIGNED_DOWNLOAD"):
        monkeypatch.delenv(f"ARTIFACT_PROXY_{name}", raising=False)
    for name in ("UPLOAD", "DOWNLOAD"):
        monkeypatch.delenv(f"MLFLOW_ENABLE_PROXY_MULTIPART_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.enable_multipart, settings.enable_presigned_download) == (uploads, downloads)
