"""GCS URL signing through IAM signBlob, as on GKE with Workload Identity: which credentials turn it on, that it signs
the very URLs the key file signs, how many calls it makes at once, and what an operator and a client see when IAM
refuses or is down. The multipart and presigned-download flows themselves run with both signers in
tests/test_storage_gcs.py and tests/contract/test_multipart.py.

There is no metadata server or IAM here: tests/servers/gce.py stands in for both, signing with fake-gcs-server's
throwaway key, so its signatures are the key file's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from app.errors import (
    MULTIPART_DOWNLOAD_UNSUPPORTED,
    MULTIPART_UPLOAD_UNSUPPORTED,
    ArtifactProxyError,
    MultipartUploadUnsupported,
    PresignedDownloadUnsupported,
    StorageUnavailable,
)
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage.gcs import GCSStore
from app.storage.gcs.client import CONCURRENCY
from app.storage.gcs.iam import IamSigner
from app.storage.gcs.signing import KeySigner
from app.store_settings import GCSSettings
from tests.servers import StorageServer, free_port
from tests.servers.gce import GCEStandIn
from tests.servers.gcs import BUCKET, fake_gcs_server, without_key_env
from tests.utils.proxy import Proxy, running_proxy
from tests.utils.streams import stream

ACCOUNT = "artifact-proxy@test.iam.gserviceaccount.com"  # the throwaway key's (tests/servers/gcs.py)
ROLE = "roles/iam.serviceAccountTokenCreator"
SETTING = "ARTIFACT_PROXY_GCS_SIGNING_SERVICE_ACCOUNT"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with fake_gcs_server(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def make_store(server: StorageServer, *, key: bool, **gcs: object) -> GCSStore:
    key_file = server.env["GOOGLE_APPLICATION_CREDENTIALS"] if key else None
    config = GCSSettings(**{"api_root": server.endpoint, "credentials_file": key_file, **gcs})  # type: ignore[arg-type]
    return GCSStore(f"gs://{BUCKET}/iam-{os.urandom(4).hex()}", Settings(storage_timeout=5, gcs=config))


@asynccontextmanager
async def started(store: GCSStore) -> AsyncIterator[GCSStore]:
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def secrets_in(text: str, gce: GCEStandIn, server: StorageServer) -> list[str]:
    """The access token, or any line of the private key, wherever they appear in `text`."""
    pem = json.loads(Path(server.env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())["private_key"]
    key_lines = [line for line in pem.splitlines() if len(line) > 40]
    return [secret for secret in [gce.token, *key_lines] if secret in text]


# when IAM signs ----------------------------------------------------------------------------------------------------
# (the case, what GCSSettings get beyond the emulator's API root, the environment, the signer, or None)
SIGNER = "signing_service_account"
UNSET = ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", SETTING, "STORAGE_EMULATOR_HOST", "ARTIFACT_PROXY_GCS_API_ROOT")
RULE = [
    ("a key file", {"key": True}, {}, KeySigner),
    ("a key file naming its own account", {"key": True, SIGNER: ACCOUNT}, {}, KeySigner),
    ("a key file naming another account", {"key": True, SIGNER: "o@p.iam"}, {}, IamSigner),
    ("GCS itself, no key: GKE, nothing configured", {"key": False, "api_root": None}, {}, IamSigner),
    ("an emulator, no key, a metadata server named", {"key": False}, {"GCE_METADATA_HOST": "10.0.0.1"}, IamSigner),
    ("an emulator alone: no key, no metadata server", {"key": False}, {}, None),
    ("user credentials (ADC)", {"key": False, "adc": "authorized_user"}, {}, None),
    ("user credentials naming an account", {"key": False, "adc": "authorized_user", SIGNER: ACCOUNT}, {}, IamSigner),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config", "env", "signer"), RULE, ids=[case for case, *_ in RULE])
def test_which_credentials_sign_through_iam(
    gcs_server: StorageServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: str,
    config: dict[str, object],
    env: dict[str, str],
    signer: type | None,
) -> None:
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**without_key_env(tmp_path), **env}.items():
        monkeypatch.setenv(name, value)
    config = dict(config)
    if adc := config.pop("adc", None):
        user = {"type": adc, "client_id": "x", "client_secret": "y", "refresh_token": "z"}
        (tmp_path / "empty-gcloud-config" / "application_default_credentials.json").write_text(json.dumps(user))
    store = make_store(gcs_server, **config)  # type: ignore[arg-type]  # built only: deciding needs no network
    on = signer is not None
    assert (store.capabilities.multipart_upload, store.capabilities.presigned_download) == (on, on), case
    assert (type(store.url_signer.signer) if store.url_signer else None) is signer
    if not on:
        assert SETTING in store._signing  # the start log says what turns signing on


async def test_iam_signs_exactly_the_urls_the_key_file_signs(gcs_server: StorageServer, on_gke: GCEStandIn) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    # More names than are built on the event loop, so the threaded build is compared too.
    names = ["pre/dir/a file+ü~.bin", *(f"x/.artifact.uploading.mpu/part-{i:05d}" for i in range(1, 71))]
    query = {"response-content-disposition": "attachment; filename=a file.bin", "generation": "17"}
    async with (
        started(make_store(gcs_server, key=True)) as by_key,
        started(make_store(gcs_server, key=False)) as by_iam,
    ):
        assert by_key.url_signer and by_iam.url_signer and isinstance(by_iam.url_signer.signer, IamSigner)
        for method, extra in [("PUT", None), ("GET", query)]:
            expected = await by_key.url_signer.urls(method, names, 600, extra, now)
            assert await by_iam.url_signer.urls(method, names, 600, extra, now) == expected
        assert await by_iam.url_signer.url("GET", names[0], 300, query, now) == await by_key.url_signer.url(
            "GET", names[0], 300, query, now
        )


async def test_a_batch_is_signed_at_most_16_calls_at_once(gcs_server: StorageServer, on_gke: GCEStandIn) -> None:
    before = on_gke.calls()
    async with started(make_store(gcs_server, key=False)) as store:
        created = await store.create_multipart_upload(ArtifactPath("many.bin"), 100)
    after = on_gke.calls()
    assert len(created.credentials) == 100 and after["signBlob"] - before["signBlob"] == 100
    assert CONCURRENCY == 16 and after["max_in_flight"] <= CONCURRENCY


# when IAM cannot sign ----------------------------------------------------------------------------------------------
# (what fails, how, the error of mpu/create and of presigned, what the one log line must say)
REFUSED = [
    ("sign", "deny", MultipartUploadUnsupported, PresignedDownloadUnsupported, f"grant {ROLE} on {ACCOUNT}"),
    ("sign", "scope", MultipartUploadUnsupported, PresignedDownloadUnsupported, "lacks the iam or cloud-platform"),
    ("email", "missing", MultipartUploadUnsupported, PresignedDownloadUnsupported, SETTING),
    ("email", "principal", MultipartUploadUnsupported, PresignedDownloadUnsupported, "iam.gke.io/gcp-service-account"),
    ("sign", "unavailable", StorageUnavailable, StorageUnavailable, "HTTP 503"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "mode", "on_create", "on_presign", "logged"), REFUSED, ids=[m for _, m, *_ in REFUSED]
)
async def test_iam_refusing_or_down(
    gcs_server: StorageServer,
    on_gke: GCEStandIn,
    caplog: pytest.LogCaptureFixture,
    what: str,
    mode: str,
    on_create: type[ArtifactProxyError],
    on_presign: type[ArtifactProxyError],
    logged: str,
) -> None:
    caplog.set_level(logging.INFO, logger="artifact_proxy")
    async with started(make_store(gcs_server, key=False)) as store:
        await store.write(ArtifactPath("f.bin"), stream(b"bytes"), None)
        with on_gke.failing(what, mode):
            with pytest.raises(on_create) as create:
                await store.create_multipart_upload(ArtifactPath("m.bin"), 40)  # 16 calls fail at once
            lines = [r.getMessage() for r in caplog.records if logged in r.getMessage()]
            assert len(lines) == 1, lines  # one line for the batch, however many of its calls failed
            with pytest.raises(on_presign) as presign:
                await store.presign_download(ArtifactPath("f.bin"))
        # Signing works again once IAM does (a refusal is not remembered: a role granted later takes effect).
        assert len((await store.create_multipart_upload(ArtifactPath("m.bin"), 2)).credentials) == 2
    statuses = {create.value.status_code, presign.value.status_code}
    assert statuses == ({503} if mode == "unavailable" else {501})
    assert secrets_in(caplog.text, on_gke, gcs_server) == []


async def test_iam_unreachable_is_503(
    gcs_server: StorageServer, on_gke: GCEStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ARTIFACT_PROXY_GCS_IAM_API_ROOT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    async with started(make_store(gcs_server, key=False)) as store:
        with pytest.raises(StorageUnavailable) as caught:
            await store.create_multipart_upload(ArtifactPath("m.bin"), 3)
    assert caught.value.status_code == 503 and caught.value.headers.get("Retry-After")
    assert "IAM signBlob is unreachable" in caplog.text
    assert secrets_in(caplog.text, on_gke, gcs_server) == []


# over HTTP, with the MLflow client -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iam_proxy(gcs_server: StorageServer, gce: GCEStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("iam-proxy")
    env = {**gcs_server.env, **without_key_env(work), **gce.env}
    with running_proxy(gcs_server.destination, work, env=env) as proxy:
        yield proxy


def test_over_http_refusals_are_what_the_mlflow_client_expects(
    iam_proxy: Proxy, gce: GCEStandIn, gcs_server: StorageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MiB),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(MiB),
    }.items():
        monkeypatch.setenv(name, value)
    api, source = iam_proxy.api, tmp_path / "model.bin"
    source.write_bytes(os.urandom(3 * MiB + 5))
    port = iam_proxy.url.rsplit(":", 1)[1]
    repo = MlflowArtifactsRepository(f"mlflow-artifacts://127.0.0.1:{port}/iam/run", tracking_uri=iam_proxy.url)
    with gce.failing("sign", "deny"):
        refused = httpx.post(f"{api}/mpu/create/iam", json={"path": "a.bin", "num_parts": 3})
        assert refused.status_code == 501 and refused.json()["message"] == MULTIPART_UPLOAD_UNSUPPORTED
        repo.log_artifact(str(source))  # the client falls back to one proxied PUT
        assert iam_proxy.logged("PUT /api/2.0/mlflow-artifacts/artifacts/iam/run/model.bin")
        assert httpx.get(iam_proxy.artifact_url("iam/run/model.bin"), timeout=60).content == source.read_bytes()
        presigned = httpx.get(f"{api}/presigned/iam/run/model.bin")
        assert presigned.status_code == 501 and presigned.json()["message"] == MULTIPART_DOWNLOAD_UNSUPPORTED
    assert iam_proxy.logged(f"grant {ROLE} on {ACCOUNT}")
    with gce.failing("sign", "unavailable"):
        down = httpx.post(f"{api}/mpu/create/iam", json={"path": "a.bin", "num_parts": 3})
        assert down.status_code == 503 and down.headers.get("Retry-After"), down.text
    signed = httpx.post(f"{api}/mpu/create/iam", json={"path": "a.bin", "num_parts": 3})
    assert signed.status_code == 200 and len(signed.json()["credentials"]) == 3
    assert secrets_in(iam_proxy.log(), gce, gcs_server) == []
