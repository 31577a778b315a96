"""Small, page-cached local reads on the event loop (issue 18): the filesystem decides, a cold file still goes to a
thread, and the bytes are the same either way."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.paths import EntryPath
from app.settings import Settings
from app.storage.local import LocalStore
from app.storage.local.mounts import LOCAL_TYPES, filesystem_type, is_local
from app.storage.local.reading import PREFETCH_LIMIT

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /mnt/team\040share rw,relatime - nfs4 server:/export rw,vers=4.2
41 40 0:41 / /mnt/team\040share/scratch rw - tmpfs tmpfs rw
42 27 0:42 / /data rw - fuse.s3fs s3fs rw
43 27 0:43 / /data rw - xfs /dev/vdb rw
"""


def test_the_deepest_mount_above_a_path_names_its_filesystem(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type("/work/main/mlartifacts", str(info)) == "ext4"
    assert filesystem_type("/mnt/team share/artifacts", str(info)) == "nfs4"  # escaped space, network: threads
    assert filesystem_type("/mnt/team share/scratch/x", str(info)) == "tmpfs"  # a mount inside another
    assert filesystem_type("/mnt/team sharex", str(info)) == "ext4"  # a prefix of a name is not its mount
    assert filesystem_type("/data/a", str(info)) == "xfs"  # mounted over the FUSE mount: the top one counts
    assert filesystem_type("/x", str(tmp_path / "missing")) is None
    assert "nfs4" not in LOCAL_TYPES and not any(t.startswith("fuse") for t in LOCAL_TYPES)


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache, asked without reading any (mincore of a mapping that is
    never touched): a read, even a RWF_NOWAIT one, would start readahead and bring them back."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with path.open("r+b") as file, mmap.mmap(file.fileno(), size) as mapping:
        anchor = ctypes.c_char.from_buffer(mapping)  # the mapping's address; no page is touched
        try:
            vector = ctypes.create_string_buffer(pages)
            if libc.mincore(ctypes.addressof(anchor), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del anchor  # the mapping cannot close while a ctypes object points into it
        return sum(byte & 1 for byte in vector.raw[:pages])


def drop_pages(path: Path) -> None:
    """Evict the file from the page cache. Clean pages can be dropped, but one still settling after the write may
    be kept: ask again until none is resident (each round is one fsync and one fadvise, never a wait on a clock)."""
    for _ in range(1000):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if resident_pages(path) == 0:
            return
    raise AssertionError(f"the kernel keeps {path}'s pages in memory whatever we ask: no cold file to read")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    settings = Settings(artifacts_destination=str(tmp_path / "root"), sweep_interval=0)
    local = LocalStore(str(tmp_path / "root"), settings)
    await local.start()
    try:
        yield local
    finally:
        await local.close()


def hops(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the steps the store sends to a worker thread from now on."""
    calls: list[str] = []
    run = store.files.run

    def counted(function: Any, *args: Any) -> Any:
        calls.append(function.__name__)
        return run(function, *args)

    monkeypatch.setattr(store.files, "run", counted)
    return calls


async def read(store: LocalStore, name: str) -> bytes:
    handle = await store.open_read(EntryPath(name))
    try:
        return b"".join([chunk async for chunk in handle.iter_range(0, handle.meta.size)])
    finally:
        await handle.aclose()


async def test_a_cached_small_file_is_read_without_a_thread_hop(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert is_local(str(tmp_path)), "the test's temporary directory is on a disk filesystem here"
    assert store.files.reads_on_loop
    data = os.urandom(16 * 1024)
    (tmp_path / "root" / "small.bin").write_bytes(data)  # just written: its pages are cached
    (tmp_path / "root" / "empty").write_bytes(b"")
    calls = hops(store, monkeypatch)
    assert await read(store, "small.bin") == data
    assert await read(store, "empty") == b""
    assert calls == []


async def test_a_large_file_streams_its_chunks_from_threads(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(PREFETCH_LIMIT + 1)
    (tmp_path / "root" / "large.bin").write_bytes(data)
    assert await read(store, "large.bin") == data


async def test_a_file_out_of_the_page_cache_reads_the_same_bytes(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RWF_NOWAIT read of a cold file starts readahead, and on a fast disk that may complete within the call, so
    the kernel decides where this read runs; the bytes must be the file's either way."""
    if filesystem_type(os.path.realpath(tmp_path)) in ("tmpfs", "overlay"):
        pytest.skip("tmpfs pages cannot be dropped from memory: there is no cold file to read")
    data = os.urandom(64 * 1024)
    path = tmp_path / "root" / "cold.bin"
    path.write_bytes(data)
    drop_pages(path)
    calls = hops(store, monkeypatch)
    assert await read(store, "cold.bin") == data
    assert calls in ([], ["open_for_read"])


async def test_a_read_the_kernel_would_block_goes_to_a_thread(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the kernel answers a RWF_NOWAIT read of pages it does not hold (EAGAIN), deterministically."""
    data = os.urandom(64 * 1024)
    (tmp_path / "root" / "cold.bin").write_bytes(data)
    real_preadv = os.preadv

    def would_block(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", would_block)
    calls = hops(store, monkeypatch)
    assert await read(store, "cold.bin") == data
    assert calls == ["open_for_read"]
