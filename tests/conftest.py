"""Shared fixtures: real storage servers and the real service, over real sockets.

The contract suite is parametrized over every backend: `proxy` starts (once per backend per session) the storage
server and the service in front of it. A server that cannot start is a test failure, never a skip.

Tests of the real MLflow client take `mlflow_client`, parametrized over the two pinned clients
(tests/utils/mlflow_clients.py): a missing or mis-versioned client is a failure too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.servers import StorageServer
from tests.utils.mlflow_clients import (
    IN_PROCESS_VERSION,
    VERSIONS,
    ArtifactClient,
    ClientSetupError,
    Worker,
    make_client,
)
from tests.utils.proxy import Proxy, running_proxy

if TYPE_CHECKING:
    from tests.servers.gce import GCEStandIn


@contextmanager
def local_server(tmp_dir: Path) -> Iterator[StorageServer]:
    root = tmp_dir / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    yield StorageServer(name="local", destination=str(root))


def _backend_factories() -> dict[str, Callable[[Path], AbstractContextManager[StorageServer]]]:
    from tests.servers.azure import azurite_server
    from tests.servers.ftp import ftp_server
    from tests.servers.gcs import fake_gcs_iam_server, fake_gcs_server
    from tests.servers.s3 import seaweedfs_server
    from tests.servers.sftp import sftp_server

    factories: dict[str, Callable[[Path], AbstractContextManager[StorageServer]]] = {
        "local": local_server,
        "s3": seaweedfs_server,
        "gcs": fake_gcs_server,
        "gcs-iam": fake_gcs_iam_server,
        "azure": azurite_server,
        "sftp": sftp_server,
        "ftp": ftp_server,
    }
    return factories


# Servers that accept any signature: tests of tamper refusal cannot run against them (test-servers.md).
UNVERIFIED_SIGNATURES = {"gcs", "gcs-iam"}

# A backend again, with its URLs signed another way (GCS through IAM signBlob, as on GKE, instead of a key file).
# Only what signs differs, so only the presigning tests run against these: they parametrize `backend` with
# PRESIGNING_BACKENDS.
SIGNING_VARIANTS = ["gcs-iam"]
BACKENDS = [name for name in _backend_factories() if name not in SIGNING_VARIANTS]
PRESIGNING_BACKENDS = [*BACKENDS, *SIGNING_VARIANTS]


@pytest.fixture(scope="session")
def storage_server_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], StorageServer]]:
    """Start each storage server at most once per session, on first use."""
    started: dict[str, StorageServer] = {}
    with ExitStack() as stack:

        def get(name: str) -> StorageServer:
            if name not in started:
                factory = _backend_factories()[name]
                started[name] = stack.enter_context(factory(tmp_path_factory.mktemp(f"store-{name}")))
            return started[name]

        yield get


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def proxy(
    backend: str, storage_server_for: Callable[[str], StorageServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    server = storage_server_for(backend)
    with running_proxy(server.destination, tmp_path_factory.mktemp(f"proxy-{backend}"), env=server.env) as running:
        yield running


@pytest.fixture
def verifies_signatures(backend: str) -> None:
    if backend in UNVERIFIED_SIGNATURES:
        pytest.skip(f"the {backend} emulator does not verify URL signatures; covered against real services only")


# Backends with no presigned multipart or downloads answer the 501 constants (wire spec §4): the presigning contract
# cannot run against them. Their 501s and server-info are tested in tests/test_storage_<backend>.py.
NO_PRESIGNING = {"sftp", "ftp"}


@pytest.fixture
def presigning_backend(backend: str) -> None:
    if backend in NO_PRESIGNING:
        pytest.skip(f"the {backend} backend cannot presign: multipart and presigned downloads answer 501")


# GCS without a key file, as on GKE, for modules whose `gcs_server` fixture is a fake-gcs-server ---------------------
@pytest.fixture(scope="module")
def gce(gcs_server: StorageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCEStandIn]:
    """The metadata server and IAM's signBlob (tests/servers/gce.py), signing with the module's server's key."""
    from tests.servers.gce import gce_stand_in

    key_file = Path(gcs_server.env["GOOGLE_APPLICATION_CREDENTIALS"])
    with gce_stand_in(key_file, tmp_path_factory.mktemp("gce")) as stand_in:
        yield stand_in


@pytest.fixture
def on_gke(gce: GCEStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> GCEStandIn:
    """This process with no Google key and the stand-in as its metadata server, for the test's duration."""
    from tests.servers.gcs import as_on_gke

    as_on_gke(gce, monkeypatch, tmp_path)
    return gce


@pytest.fixture
def http(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.api, timeout=60) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    """A fresh directory per test, so tests sharing one store never see each other's files."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def mlflow_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The newer MLflow client's process (.venv-mlflow), started on first use and shared by the whole session."""
    worker = Worker(tmp_path_factory.mktemp("mlflow-worker"))
    yield worker
    worker.stop()


@pytest.fixture(params=VERSIONS, ids=[f"mlflow-{version}" for version in VERSIONS])
def mlflow_client(request: pytest.FixtureRequest) -> Iterator[ArtifactClient]:
    """Each pinned MLflow client in turn, fresh for each test: no repository or server-info answer carries over."""
    version = str(request.param)
    try:
        worker = None if version == IN_PROCESS_VERSION else request.getfixturevalue("mlflow_worker")
        client = make_client(version, worker)
    except ClientSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()
