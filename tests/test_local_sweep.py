"""Crash leftovers of the local destination are swept without waiting, and live uploads never are.

Owners are real processes: one holds its lock (a live upload of another worker or replica), one was killed with
SIGKILL (its locks died with it). The sweep is driven with an explicit clock, so no test waits for anything to age."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage.local import LocalStore
from app.storage.local.sweep import STAGING_DIR, STAGING_TARGET, sweep
from tests.servers import wait_until
from tests.utils.proxy import running_proxy
from tests.utils.streams import stream

TTL = 3600
# Creates (or opens) a file, takes a lock on it, says so, and holds it until stdin closes or it is killed.
HOLDER = """
import fcntl, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY) if os.path.isdir(path) else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder(path: Path, mode: str = "exclusive") -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.kill()
        process.wait()


def left_by_a_killed_process(path: Path) -> None:
    with holder(path) as process:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_unlocked_old_temp_files_go_and_live_or_young_ones_stay(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    dead = root / "a" / "b" / f"{TEMP_PREFIX}dead"
    young = root / "a" / f"{TEMP_PREFIX}young"
    live = root / f"{TEMP_PREFIX}live"
    artifact = root / "a" / "model.bin"
    left_by_a_killed_process(dead)
    left_by_a_killed_process(young)
    artifact.write_bytes(b"model")
    with holder(live):
        old = time.time() - 3600
        for path in (dead, live, artifact):
            os.utime(path, (old, old))
        counts = sweep(str(root), now=time.time(), stale_age=60, staging_max_age=2 * TTL)
        assert counts is not None and counts.temp_files == 1
        assert not dead.exists()
        assert live.exists()  # its owner holds the lock: an upload in progress elsewhere
        assert young.exists()  # unlocked but just written: the instant between a create and its lock
        assert artifact.read_bytes() == b"model"
        sweep(str(root), now=time.time() + 120, stale_age=60, staging_max_age=2 * TTL)
        assert not young.exists() and live.exists()


def test_one_sweep_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    left_by_a_killed_process(root / f"{TEMP_PREFIX}dead")
    with holder(root):  # another worker is sweeping: it holds the lock on the root
        assert sweep(str(root), now=time.time() + 3600, stale_age=60, staging_max_age=2 * TTL) is None
    assert (root / f"{TEMP_PREFIX}dead").exists()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    settings = Settings(
        artifacts_destination=str(tmp_path / "root"),
        signing_secret="s" * 32,
        multipart_url_ttl=TTL,
        sweep_interval=0,
    )
    local = LocalStore(str(tmp_path / "root"), settings)
    await local.start()
    try:
        yield local
    finally:
        await local.close()


async def test_expired_multipart_staging_goes_unless_a_step_is_running_on_it(store: LocalStore) -> None:
    created = [await store.create_multipart_upload(ArtifactPath(f"m/{name}.bin"), 2) for name in "abc"]
    ids = [upload.upload_id for upload in created]
    assert all(ids)
    await store.write_part(str(ids[0]), 1, stream(b"part one"))
    staging = Path(store.root) / STAGING_DIR
    dead_part = staging / str(ids[1]) / "0123.tmp"
    left_by_a_killed_process(dead_part)
    now = time.time()
    assert sorted(path.name for path in staging.iterdir()) == sorted(str(i) for i in ids)

    # Within their part URLs' lifetime nothing goes, except a part whose writer is dead once it is old enough.
    store.sweep_once(now + 120)
    assert sorted(path.name for path in staging.iterdir()) == sorted(str(i) for i in ids)
    assert not dead_part.exists()

    # Long expired: gone, except the one a step of another process is working on right now.
    with holder(staging / str(ids[2]) / STAGING_TARGET, "shared"):
        store.sweep_once(now + 2 * TTL + 1)
        assert [path.name for path in staging.iterdir()] == [str(ids[2])]
    store.sweep_once(now + 2 * TTL + 1)
    assert list(staging.iterdir()) == []


def test_the_running_service_sweeps_periodically(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {"ARTIFACT_PROXY_SWEEP_INTERVAL": "0.2", "ARTIFACT_PROXY_STALE_UPLOAD_AGE": "0"}
    with running_proxy(str(root), tmp_path / "proxy", env=env) as proxy:
        (root / "later").mkdir()
        left_by_a_killed_process(root / "later" / f"{TEMP_PREFIX}crashed")  # after the startup sweep
        wait_until(lambda: not (root / "later" / f"{TEMP_PREFIX}crashed").exists(), 60, "the periodic sweep")
        assert proxy.logged("removed 1 abandoned temporary upload file(s)")
        assert httpx.get(f"{proxy.url}/health").status_code == 200
