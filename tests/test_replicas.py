"""Several artifact-proxy replicas on one store, behind a round-robin balancer (tests/utils/roundrobin.py).

What a Deployment with `replicas: N` behind a Service or nginx must get right: any replica can finish what another
started. Every replica gets the same ARTIFACT_PROXY_SIGNING_SECRET and ARTIFACT_PROXY_PUBLIC_URL (the balancer), so a
URL signed by one is honoured by all. Two stores:
- `seaweedfs`: S3 (real SigV4 checks); part and download URLs are presigned by S3 itself and go straight to it.
- `local-shared`: one directory shared by the replicas (an NFS or ReadWriteMany volume); URLs are self-signed by
  the replicas and point back at the balancer, so parts and downloads land on whichever replica comes next.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.servers import StorageServer, free_port
from tests.servers.s3 import seaweedfs_server
from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import Proxy, running_proxy
from tests.utils.roundrobin import Balancer, round_robin

MiB = 1024 * 1024
PART = 5 * MiB  # the S3 minimum size of every part but the last
API = "/api/2.0/mlflow-artifacts"
REPLICAS = 2


@dataclass
class Cluster:
    store: StorageServer
    replicas: list[Proxy]
    balancer: Balancer
    secret: str
    tmp: Path

    @property
    def api(self) -> str:
        return f"{self.balancer.url}{API}"

    def rebase(self, url: str, base: str) -> str:
        """The same signed path and query, sent to another server."""
        target = urlsplit(base)
        return urlunsplit(urlsplit(url)._replace(scheme=target.scheme, netloc=target.netloc))


@pytest.fixture(scope="module", params=["seaweedfs", "local-shared"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp(f"replicas-{request.param}")
    with ExitStack() as stack:
        if request.param == "seaweedfs":
            store = stack.enter_context(seaweedfs_server(tmp / "s3"))
        else:
            (tmp / "shared").mkdir()
            store = StorageServer("local-shared", str(tmp / "shared"))
        secret = secrets.token_hex(32)
        port = free_port()
        env = {
            **store.env,
            "ARTIFACT_PROXY_SIGNING_SECRET": secret,
            "ARTIFACT_PROXY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        replicas = [
            stack.enter_context(running_proxy(store.destination, tmp / f"replica-{i}", env=env))
            for i in range(REPLICAS)
        ]
        balancer = stack.enter_context(round_robin([r.url for r in replicas], port))
        yield Cluster(store, replicas, balancer, secret, tmp)


@pytest.fixture
def prefix() -> str:
    return f"r-{secrets.token_hex(6)}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_balancer_spreads_requests_over_every_replica(cluster: Cluster) -> None:
    start = len(cluster.balancer.hits)
    for _ in range(2 * REPLICAS):
        assert httpx.get(f"{cluster.balancer.url}/health", timeout=10).text == "OK"
    assert sorted(hit.backend for hit in cluster.balancer.hits[start:]) == sorted(list(range(REPLICAS)) * 2)


def test_multipart_created_on_one_replica_completes_on_another(cluster: Cluster, prefix: str) -> None:
    first, second = cluster.replicas[0], cluster.replicas[1]
    sizes = [PART, PART, MiB + 123]
    data = [os.urandom(size) for size in sizes]
    created = httpx.post(
        f"{first.api}/mpu/create/{prefix}/model",
        json={"path": "/home/me/model.bin", "num_parts": len(sizes)},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    body = created.json()
    credentials = sorted(body["credentials"], key=lambda c: c["part_number"])
    assert [c["part_number"] for c in credentials] == [1, 2, 3]

    parts = []
    with httpx.Client(timeout=60) as client:  # one keep-alive connection: the balancer still alternates replicas
        for credential, chunk in zip(credentials, data, strict=True):
            put = client.put(credential["url"], content=chunk, headers=credential.get("headers") or {})
            assert put.status_code == 200, put.text
            parts.append(
                {
                    "part_number": credential["part_number"],
                    "etag": put.headers.get("etag", ""),
                    "url": credential["url"],
                }
            )
    if cluster.store.name == "local-shared":
        # Self-signed part URLs name the balancer (ARTIFACT_PROXY_PUBLIC_URL) and were verified by every replica.
        assert all(c["url"].startswith(f"{cluster.api}/") for c in credentials)
        assert set(cluster.balancer.served("PUT", f"{API}/presigned-parts/{body['upload_id']}/")) == {0, 1}
    else:
        assert all(c["url"].startswith(cluster.store.endpoint) for c in credentials)

    completed = httpx.post(
        f"{second.api}/mpu/complete/{prefix}/model",
        json={"path": "/home/me/model.bin", "upload_id": body.get("upload_id"), "parts": parts},
        timeout=60,
    )
    assert completed.status_code == 200, completed.text

    whole = b"".join(data)
    for _ in range(REPLICAS):  # through the balancer: every replica serves the completed file
        got = httpx.get(f"{cluster.api}/artifacts/{prefix}/model/model.bin", timeout=60)
        assert got.status_code == 200 and sha(got.content) == sha(whole)
    listed = httpx.get(f"{cluster.api}/artifacts", params={"path": f"{prefix}/model"}, timeout=30).json()
    assert listed["files"] == [{"path": "model.bin", "is_dir": False, "file_size": len(whole)}]


def test_download_through_the_balancer_of_what_another_replica_uploaded(cluster: Cluster, prefix: str) -> None:
    data = os.urandom(3 * MiB + 5)
    put = httpx.put(cluster.replicas[0].artifact_url(f"{prefix}/a/blob.bin"), content=data, timeout=60)
    assert put.status_code == 200, put.text
    start = len(cluster.balancer.hits)
    for _ in range(2 * REPLICAS):
        got = httpx.get(f"{cluster.api}/artifacts/{prefix}/a/blob.bin", timeout=60)
        assert got.status_code == 200 and sha(got.content) == sha(data)
    assert {hit.backend for hit in cluster.balancer.hits[start:]} == set(range(REPLICAS))
    # And the other way: uploaded through the balancer (streamed, chunked), read from each replica directly.
    streamed = httpx.put(
        f"{cluster.api}/artifacts/{prefix}/b/streamed.bin", content=iter([data[:MiB], data[MiB:]]), timeout=60
    )
    assert streamed.status_code == 200, streamed.text
    for replica in cluster.replicas:
        assert sha(httpx.get(replica.artifact_url(f"{prefix}/b/streamed.bin"), timeout=60).content) == sha(data)


def test_presigned_download_signed_by_one_replica_works_everywhere(cluster: Cluster, prefix: str) -> None:
    data = os.urandom(MiB + 1)
    httpx.put(f"{cluster.api}/artifacts/{prefix}/p/f.bin", content=data, timeout=60).raise_for_status()
    signed = httpx.get(f"{cluster.replicas[0].api}/presigned/{prefix}/p/f.bin", timeout=30)
    assert signed.status_code == 200, signed.text
    url = signed.json()["url"]
    for _ in range(REPLICAS):
        got = httpx.get(url, headers=signed.json().get("headers") or {}, timeout=60)
        assert got.status_code == 200 and got.content == data
    if cluster.store.name == "local-shared":
        for replica in cluster.replicas:  # the same signature, checked by each replica directly
            assert httpx.get(cluster.rebase(url, replica.url), timeout=60).content == data


@pytest.mark.parametrize("cluster", ["local-shared"], indirect=True)  # S3 presigns its own URLs, without the secret
def test_a_replica_with_another_secret_rejects_the_others_urls(cluster: Cluster, prefix: str) -> None:
    created = httpx.post(f"{cluster.api}/mpu/create/{prefix}", json={"path": "x.bin", "num_parts": 1}, timeout=30)
    assert created.status_code == 200, created.text
    part_url = created.json()["credentials"][0]["url"]
    env = {"ARTIFACT_PROXY_SIGNING_SECRET": secrets.token_hex(32)}
    with running_proxy(cluster.store.destination, cluster.tmp / "stranger", env=env) as stranger:
        refused = httpx.put(cluster.rebase(part_url, stranger.url), content=b"x", timeout=30)
        assert refused.status_code == 403, refused.text
    accepted = httpx.put(cluster.rebase(part_url, cluster.replicas[1].url), content=b"x", timeout=30)
    assert accepted.status_code == 200, accepted.text


def test_mlflow_client_multipart_upload_through_the_balancer(
    mlflow_client: ArtifactClient, cluster: Cluster, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real client: create, parts and complete are separate requests, so they land on different replicas.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(MiB))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(PART))
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(PART + 2 * MiB))
    repo = mlflow_client.http_repo(f"{cluster.api}/artifacts/{prefix}/run/artifacts")
    repo.log_artifact(str(source), artifact_path="model")
    created = cluster.balancer.served("POST", f"{API}/mpu/create/{prefix}/")
    completed = cluster.balancer.served("POST", f"{API}/mpu/complete/{prefix}/")
    assert len(created) == 1 and len(completed) == 1
    for i, replica in enumerate(cluster.replicas):
        out = tmp_path / f"out-{i}"
        out.mkdir()
        local = mlflow_client.http_repo(replica.artifact_url(f"{prefix}/run/artifacts")).download_artifacts(
            "model/weights.bin", str(out)
        )
        assert sha(Path(local).read_bytes()) == sha(source.read_bytes())
