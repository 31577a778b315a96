"""Expired presigned download URLs are refused by the stores that check signatures (SeaweedFS, Azurite) and by the
service itself (local). fake-gcs-server checks none, so GCS is left to the real service."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.conftest import local_server
from tests.servers import StorageServer
from tests.servers.azure import azurite_server
from tests.servers.s3 import seaweedfs_server
from tests.utils.proxy import running_proxy

SERVERS: dict[str, Callable[[Path], AbstractContextManager[StorageServer]]] = {
    "local": local_server,
    "s3": seaweedfs_server,
    "azure": azurite_server,
}


@pytest.mark.parametrize("backend", list(SERVERS))
def test_expired_presigned_download_is_refused(backend: str, tmp_path: Path) -> None:
    with SERVERS[backend](tmp_path / "store") as store:
        env = {**store.env, "MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS": "2"}
        with running_proxy(store.destination, tmp_path / "proxy", env=env) as proxy:
            httpx.put(proxy.artifact_url("e/f.txt"), content=b"short-lived").raise_for_status()
            signed = httpx.get(f"{proxy.api}/presigned/e/f.txt").json()
            fresh = httpx.get(signed["url"], headers=signed["headers"])
            assert (fresh.status_code, fresh.content) == (200, b"short-lived")
            time.sleep(4)
            expired = httpx.get(signed["url"], headers=signed["headers"])
            assert expired.status_code == 403, expired.text
            assert b"short-lived" not in expired.content
