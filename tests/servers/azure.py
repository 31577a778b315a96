"""Azurite (the Azure Storage emulator) for the Azure Blob backend's tests.

Azurite comes from npm (`package.json` at the repository root; `npm install` puts it in `node_modules/`). It checks
shared-key and SAS signatures and SAS permissions, so presigned URLs are really exercised. The SDK's default API
version is newer than Azurite's, hence `--skipApiVersionCheck`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from tests.servers import STARTUP_TIMEOUT, StorageServer, free_port, stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account; the key is public and only valid against the emulator.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "container"


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def start_azurite(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Start azurite-blob on 127.0.0.1:`port` and wait until it answers; a missing install fails loudly."""
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"{AZURITE_BIN} is missing; run `npm install` in {REPO_ROOT} (installs azurite)")
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        str(AZURITE_BIN),
        "--blobHost", "127.0.0.1",
        "--blobPort", str(port),
        "--skipApiVersionCheck",
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--silent",
    ]  # fmt: skip
    # No --location: Azurite refuses it together with --inMemoryPersistence; cwd keeps any stray file in workdir.
    # Not tests.servers.start_process: it leaves the parent's log handle open (a ResourceWarning under -W error).
    with open(workdir / f"azurite-{port}.log", "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    try:
        wait_until(lambda: _create_container(port), timeout=STARTUP_TIMEOUT, what="azurite", process=process)
    except BaseException:
        stop_process(process)
        raise
    return process


def _create_container(port: int) -> bool:
    # Creating the container doubles as the readiness probe: it needs a working, authenticated blob endpoint.
    with BlobServiceClient.from_connection_string(connection_string(port), retry_total=0) as service:
        try:
            service.create_container(CONTAINER)
        except ResourceExistsError:
            pass
    return True


def restart_azurite(server: StorageServer, workdir: Path) -> None:
    """Start a fresh (empty) Azurite on the same port as `server`, after it was stopped; updates `server.process`."""
    stop_process(server.process)
    port = urlsplit(server.endpoint).port
    assert port is not None
    server.process = start_azurite(port, workdir)


@contextmanager
def azurite_server(tmp_dir: Path) -> Iterator[StorageServer]:
    port = free_port()
    process = start_azurite(port, Path(tmp_dir))
    server = StorageServer(
        name="azure",
        destination=f"wasbs://{CONTAINER}@{ACCOUNT}.blob.core.windows.net/prefix",
        env={"AZURE_STORAGE_CONNECTION_STRING": connection_string(port)},
        endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}",
        process=process,
    )
    try:
        yield server
    finally:
        stop_process(server.process)
