"""The real MLflow clients (both pins: tests/utils/mlflow_clients.py) against the service, on every backend."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NO_PRESIGNING
from tests.servers import StorageServer
from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import Proxy, running_proxy

MiB = 1024 * 1024
SERVER_INFO = "/api/3.0/mlflow/server-info"


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


def advertised(proxy: Proxy, key: str) -> bool:
    return bool(httpx.get(f"{proxy.url}{SERVER_INFO}", timeout=30).json().get(key, False))


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
    assert repo.list_artifacts("metrics.json") == []  # a file's listing is empty

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
    # An http(s) root gets server-info's answer from 3.18 on: presigned downloads when the service offers them.
    path = f"{prefix}/run/artifacts/deep/dir/blob.bin"
    if mlflow_client.at_least("3.18") and advertised(proxy, "multipart_downloads_enabled"):
        assert proxy.logged(f'GET /api/2.0/mlflow-artifacts/presigned/{path} HTTP/1.1" 200')
    else:
        assert proxy.logged(f'GET /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1" 200')
        assert f"/presigned/{path}" not in proxy.log()


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


def test_a_directory_holding_one_file_of_its_own_name(
    mlflow_client: ArtifactClient, proxy: Proxy, prefix: str, tmp_path: Path
) -> None:
    # `0/0` lists as one file named like the listed path: 3.18 tells it from a file by listing the parent too;
    # 3.17 takes it for a file and lists nothing (wire spec §10).
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "0").write_bytes(b"zero")
    repo = mlflow_artifacts_repo(mlflow_client, proxy, f"{prefix}/run")
    repo.log_artifacts(str(tmp_path / "0"), artifact_path="0")
    listed = [(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts("0")]
    assert listed == ([("0/0", False, 4)] if mlflow_client.at_least("3.18") else [])
    assert [(f.path, f.is_dir) for f in repo.list_artifacts()] == [("0", True)]


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


def test_multipart_where_the_store_cannot_presign_falls_back_to_one_put(
    mlflow_client: ArtifactClient,
    proxy: Proxy,
    prefix: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Multipart asked for: stores that presign take it; the others answer mpu/create with a 501 whose message is the
    # constant every client falls back on (3.18 falls back on any 501).
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(MiB))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 * MiB))
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(6 * MiB + 3))
    repo = mlflow_client.http_repo(proxy.artifact_url(f"{prefix}/run"))
    repo.log_artifact(str(source))
    assert httpx.get(proxy.artifact_url(f"{prefix}/run/weights.bin"), timeout=60).content == source.read_bytes()
    api = "/api/2.0/mlflow-artifacts"
    if backend in NO_PRESIGNING:
        assert proxy.logged(f'"POST {api}/mpu/create/{prefix}/run HTTP/1.1" 501')
        assert proxy.logged(f'"PUT {api}/artifacts/{prefix}/run/weights.bin HTTP/1.1" 200')
    else:
        assert proxy.logged(f'"POST {api}/mpu/complete/{prefix}/run HTTP/1.1" 200')


def test_server_info_answers_every_key_the_client_knows(mlflow_client: ArtifactClient, proxy: Proxy) -> None:
    info = httpx.get(f"{proxy.url}{SERVER_INFO}", timeout=30).json()
    assert sorted(set(mlflow_client.server_info_keys()) - set(info)) == []


@pytest.fixture(scope="module")
def quiet_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A local proxy of the tests below alone, so its log holds their requests only (each in a directory of its own,
    named after its client)."""
    base = tmp_path_factory.mktemp("quiet")
    with running_proxy(str(base / "root"), base / "proxy") as proxy:
        yield proxy


def requests_logged(proxy: Proxy, since: int) -> list[str]:
    """The request lines ("GET /path HTTP/1.1") logged after the first `since` characters of the log."""
    return [line.split('"')[1] for line in proxy.log()[since:].splitlines() if '"' in line and " /api/" in line]


def test_the_client_asks_server_info_before_its_first_transfer(
    mlflow_client: ArtifactClient, quiet_proxy: Proxy, tmp_path: Path
) -> None:
    # 3.18 probes server-info for every root on the artifact service, http(s) ones included, before the first upload
    # of any size and the first download; 3.17's HttpArtifactRepository never does.
    proxy, run = quiet_proxy, f"probe/{mlflow_client.version}"
    since = len(proxy.log())  # the earlier test's probe, if any, came before its last download: it is in there
    source = tmp_path / "small.txt"
    source.write_text("small")
    repo = mlflow_client.http_repo(proxy.artifact_url(run))
    repo.log_artifact(str(source))
    (tmp_path / "dl").mkdir()
    assert Path(repo.download_artifacts("small.txt", str(tmp_path / "dl"))).read_text() == "small"
    download = "presigned" if mlflow_client.at_least("3.18") else "artifacts"
    assert proxy.logged(f'"GET /api/2.0/mlflow-artifacts/{download}/{run}/small.txt HTTP/1.1" 200')
    probe, put = f"GET {SERVER_INFO} HTTP/1.1", f"PUT /api/2.0/mlflow-artifacts/artifacts/{run}/small.txt HTTP/1.1"
    requests = [line for line in requests_logged(proxy, since) if line == probe or f"/{run}" in line]
    if mlflow_client.at_least("3.18"):
        # One probe: the answer is cached for the repository; the download then goes through presigned/.
        assert requests[:2] == [probe, put]
        assert requests.count(probe) == 1
    else:
        assert requests[0] == put
        assert probe not in requests


@pytest.fixture(scope="module")
def presigned_only_proxy(
    backend: str, storage_server_for: Callable[[str], StorageServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The mode on every backend that presigns; the others refuse to start in it (tests/test_presigned_only.py)."""
    if backend in NO_PRESIGNING:
        pytest.skip(f"the {backend} backend cannot presign, so presigned-only mode does not start on it")
    server = storage_server_for(backend)
    env = {**server.env, "MLFLOW_ARTIFACTS_PRESIGNED_ONLY": "true"}
    base = tmp_path_factory.mktemp(f"presigned-only-{backend}")
    with running_proxy(f"{server.destination.rstrip('/')}/presigned-only", base, env=env) as proxy:
        yield proxy


def test_presigned_only_mode(mlflow_client: ArtifactClient, presigned_only_proxy: Proxy, tmp_path: Path) -> None:
    # Wire spec §10: server-info says `artifacts_presigned_only`, proxied PUT and GET are 403 PERMISSION_DENIED, and
    # 3.18 clients send every file, empty ones included, through multipart and fetch every file through presigned/.
    from requests import HTTPError

    proxy, run = presigned_only_proxy, f"only/{mlflow_client.version}"
    tree = tmp_path / "tree"
    tree.mkdir()
    files = {"empty.txt": b"", "small.txt": b"small", "model.bin": os.urandom(6 * MiB)}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    assert advertised(proxy, "artifacts_presigned_only")
    repo = mlflow_client.http_repo(proxy.artifact_url(run))
    if not mlflow_client.at_least("3.18"):  # 3.17 knows nothing of the mode: its proxied PUT is refused
        with pytest.raises(HTTPError) as caught:
            repo.log_artifact(str(tree / "small.txt"))
        assert caught.value.response.status_code == 403
        assert caught.value.response.json()["error_code"] == "PERMISSION_DENIED"
        assert caught.value.response.json()["artifacts_presigned_only"] is True
        return
    repo.log_artifacts(str(tree))
    (tmp_path / "dl").mkdir()
    out = Path(repo.download_artifacts("", str(tmp_path / "dl")))
    assert {name: (out / name).read_bytes() for name in files} == files
    assert proxy.logged(f'"POST /api/2.0/mlflow-artifacts/mpu/complete/{run} HTTP/1.1" 200', times=len(files))
    assert proxy.logged(f'"GET /api/2.0/mlflow-artifacts/presigned/{run}/', times=len(files))
    assert f"PUT /api/2.0/mlflow-artifacts/artifacts/{run}/" not in proxy.log()
    assert f"GET /api/2.0/mlflow-artifacts/artifacts/{run}/" not in proxy.log()
