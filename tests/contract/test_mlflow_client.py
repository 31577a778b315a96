"""The real MLflow clients (both pins: tests/utils/mlflow_clients.py) against the service, on every backend."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import Proxy


@pytest.fixture(autouse=True)
def _fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client retries 5xx with minutes of backoff; a failing server should fail the test now.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def make_tree(root: Path) -> Path:
    (root / "model" / "data").mkdir(parents=True)
    (root / "model" / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    (root / "model" / "data" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "model" / "data" / "empty.txt").write_bytes(b"")
    (root / "metrics.json").write_text('{"acc": 0.9}')
    (root / "plots").mkdir()
    (root / "plots" / "日本語 plot.png").write_bytes(os.urandom(2048))
    return root


def mlflow_artifacts_repo(client: ArtifactClient, proxy: Proxy, prefix: str):  # type: ignore[no-untyped-def]
    port = proxy.url.rsplit(":", 1)[1]
    return client.mlflow_artifacts_repo(f"mlflow-artifacts://127.0.0.1:{port}/{prefix}", tracking_uri=proxy.url)


def assert_same_tree(left: Path, right: Path) -> None:
    comparison = filecmp.dircmp(left, right)
    assert not comparison.left_only and not comparison.right_only and not comparison.funny_files
    _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
    assert not mismatch and not errors
    for sub in comparison.common_dirs:
        assert_same_tree(left / sub, right / sub)


def test_log_and_download_a_tree_with_mlflow_artifacts_uri(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "src")
    repo = mlflow_artifacts_repo(mlflow_client, proxy, f"{prefix}/run/artifacts")
    repo.log_artifacts(str(tree))
    repo.log_artifact(str(tree / "metrics.json"), artifact_path="extra")

    top = sorted((f.path, f.is_dir) for f in repo.list_artifacts())
    assert top == [("extra", True), ("metrics.json", False), ("model", True), ("plots", True)]
    weights = [f for f in repo.list_artifacts("model/data") if f.path.endswith("weights.bin")][0]
    assert weights.file_size == 3 * 1024 * 1024 + 7

    out = tmp_path / "out"
    out.mkdir()
    downloaded = Path(repo.download_artifacts("", dst_path=str(out)))
    (downloaded / "extra").rename(tmp_path / "extra-downloaded")
    assert_same_tree(tree, downloaded)
    assert filecmp.cmp(tree / "metrics.json", tmp_path / "extra-downloaded" / "metrics.json", shallow=False)


def test_download_single_file_with_http_uri(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(1_500_000))
    repo = mlflow_client.http_repo(proxy.artifact_url(f"{prefix}/run/artifacts"))
    repo.log_artifact(str(source), artifact_path="deep/dir")
    (tmp_path / "dl").mkdir()
    local = repo.download_artifacts("deep/dir/blob.bin", dst_path=str(tmp_path / "dl"))
    assert Path(local).read_bytes() == source.read_bytes()


def test_delete_artifacts_with_the_client(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "src")
    repo = mlflow_artifacts_repo(mlflow_client, proxy, f"{prefix}/run/artifacts")
    repo.log_artifacts(str(tree))
    repo.delete_artifacts("plots")
    assert sorted(f.path for f in repo.list_artifacts()) == ["metrics.json", "model"]
    repo.delete_artifacts()
    assert repo.list_artifacts() == []


def test_list_of_empty_location_is_empty(mlflow_client: ArtifactClient, proxy: Proxy, prefix: str) -> None:
    assert mlflow_artifacts_repo(mlflow_client, proxy, f"{prefix}/nothing").list_artifacts() == []


def test_early_refusal_of_a_large_put_reaches_the_client_as_a_400(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    # The service answers before reading the body; the client must see the 400, not a reset it would retry.
    from requests import HTTPError

    refused = tmp_path / ".artifact.uploading.model.bin"
    refused.write_bytes(os.urandom(30 * 1024 * 1024))
    repo = mlflow_client.http_repo(proxy.artifact_url(f"{prefix}/run"))
    with pytest.raises(HTTPError) as caught:
        repo.log_artifact(str(refused))
    assert caught.value.response.status_code == 400
    assert caught.value.response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
