"""The store goes away in the middle of an upload: a clear 503, nothing partial stored, and recovery by itself."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.servers.s3 import restart_seaweedfs, seaweedfs_server, stop_seaweedfs
from tests.utils.proxy import PATIENCE, running_proxy

MiB = 1024 * 1024


def test_store_stopped_mid_upload_then_back(tmp_path: Path) -> None:
    with (
        seaweedfs_server(tmp_path / "s3") as store,
        running_proxy(
            store.destination, tmp_path / "proxy", env={**store.env, "ARTIFACT_PROXY_STORAGE_TIMEOUT": "10"}
        ) as proxy,
    ):
        url = proxy.artifact_url("outage/model.bin")
        httpx.put(url, content=b"the previous version", timeout=60).raise_for_status()
        stopped = threading.Event()

        def body() -> Iterator[bytes]:
            for i in range(64):  # 64 MiB, streamed; the store disappears after 20 MiB
                if i == 20:
                    stop_seaweedfs(store.process)  # returns once the process has exited: the store is gone
                    stopped.set()
                yield os.urandom(MiB)

        response = httpx.put(url, content=body(), timeout=120)
        assert stopped.is_set()
        assert response.status_code in (503, 504), response.text
        assert response.json()["error_code"] in ("TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert response.headers.get("retry-after") or response.status_code == 504
        # The service itself keeps answering while the store is down.
        assert httpx.get(f"{proxy.url}/health").status_code == 200
        assert httpx.get(f"{proxy.url}/ready", timeout=30).status_code == 503

        restart_seaweedfs(store, tmp_path / "s3")
        deadline = time.monotonic() + PATIENCE  # only a safety net; recovery is polled for
        while httpx.get(f"{proxy.url}/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the proxy did not recover when the store came back"
            time.sleep(0.5)
        # Nothing partial became visible: the previous version is what is stored.
        assert httpx.get(url, timeout=60).content == b"the previous version"
        listing = httpx.get(f"{proxy.api}/artifacts", params={"path": "outage"}).json()
        assert listing == {"files": [{"path": "model.bin", "is_dir": False, "file_size": 20}]}
        data = os.urandom(12 * MiB)
        assert httpx.put(url, content=data, timeout=120).status_code == 200
        assert httpx.get(url, timeout=60).content == data
