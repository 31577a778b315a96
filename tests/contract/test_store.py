"""The store contract (app/storage/base.py), stated once and run unchanged against a started store of every backend.

Each test gets a store under a fresh prefix of its backend's session-wide server (tests/contract/stores.py). Tests
that need a capability only some backends have are generated for those backends alone; a server that cannot start
fails the test. What only one backend does (SDK quirks, error mapping, pagination, outages, credentials) is tested in
tests/test_storage_<backend>.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from starlette.requests import ClientDisconnect

from app.errors import AlreadyExists, ArtifactNotFound, InvalidParameter, IsADirectoryArtifact, StorageUnavailable
from app.paths import ArtifactPath, canonical_path
from app.storage.base import DEFAULT_WRITE, ArtifactStore, FileInfo, ReadHandle, WriteOptions
from tests.contract.stores import DOWNLOAD_CHUNK, Backend, MiB, backends, backends_writing, fresh_prefix
from tests.servers import StorageServer
from tests.utils.streams import read_all, stream

every_backend = pytest.mark.parametrize("spec", backends())
SOURCE_CHUNK = 100_003  # the upload body's pieces: aligned with no block size, so blocks straddle them
CREATE_ONLY = WriteOptions(create_only=True)


@pytest.fixture
async def store(
    spec: Backend, storage_server_for: Callable[[str], StorageServer], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ArtifactStore]:
    started = spec.make(storage_server_for(spec.name), fresh_prefix(), monkeypatch)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


def p(raw: str) -> ArtifactPath:
    return canonical_path(raw)


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def put(
    store: ArtifactStore, path: str, data: bytes, chunk: int = SOURCE_CHUNK, options: WriteOptions = DEFAULT_WRITE
) -> None:
    await store.write(p(path), stream(data, chunk), None, options)


async def read_handle(handle: ReadHandle) -> bytes:
    try:
        return b"".join([chunk async for chunk in handle.iter_range(0, handle.meta.size)])
    finally:
        await handle.aclose()


# Body sizes by the backend's block size: the single-request path, exactly one block, and the streamed path.
SIZES: dict[str, Callable[[int], int]] = {
    "empty": lambda block: 0,
    "small": lambda block: 1000,
    "block-1": lambda block: block - 1,
    "block": lambda block: block,
    "2-blocks": lambda block: 2 * block,
    "3-blocks+7": lambda block: 3 * block + 7,
}


# write and read ------------------------------------------------------------------------------------------------------
@every_backend
@pytest.mark.parametrize("size", SIZES)
async def test_round_trip(spec: Backend, store: ArtifactStore, size: str) -> None:
    data = blob(SIZES[size](spec.block), seed=1)
    await put(store, "run/model/blob.bin", data)
    handle = await store.open_read(p("run/model/blob.bin"))
    assert handle.meta.size == len(data)
    assert handle.meta.etag is None or (handle.meta.etag.startswith('"') and handle.meta.etag.endswith('"'))
    assert handle.meta.last_modified is None or abs(handle.meta.last_modified - time.time()) < 24 * 3600  # POSIX s
    assert await read_handle(handle) == data
    assert await store.list(p("run/model")) == [FileInfo("blob.bin", False, len(data))]


@every_backend
async def test_one_source_chunk_spanning_several_blocks(spec: Backend, store: ArtifactStore) -> None:
    data = blob(2 * spec.block + 5, seed=2)
    await put(store, "huge-chunk.bin", data, chunk=len(data))
    assert await read_all(store, "huge-chunk.bin") == data


@every_backend
async def test_ranges(store: ArtifactStore) -> None:
    chunk = DOWNLOAD_CHUNK
    data = blob(5 * chunk + 7, seed=3)  # several download chunks
    await put(store, "r.bin", data)
    size = len(data)
    spans = [(0, 1), (5, 10), (chunk - 3, 2 * chunk + 5), (0, size), (size - 1, size), (size - 100, size)]
    for start, end in spans:
        assert await read_all(store, "r.bin", start, end) == data[start:end], (start, end)
    for empty in (0, 4, size):
        assert await read_all(store, "r.bin", empty, empty) == b""
    handle = await store.open_read(p("r.bin"))
    try:
        chunks = [piece async for piece in handle.iter_range(0, size)]
    finally:
        await handle.aclose()
    assert max(len(piece) for piece in chunks) <= chunk  # bounded chunks: never the whole body at once


@every_backend
async def test_overwrite_replaces_content_and_size(spec: Backend, store: ArtifactStore) -> None:
    etags = []
    for data in (b"first version", blob(2 * spec.block + 3, seed=4), b"short"):
        await put(store, "v.bin", data)
        handle = await store.open_read(p("v.bin"))
        etags.append(handle.meta.etag)
        assert handle.meta.size == len(data)
        assert await read_handle(handle) == data
        assert await store.list(p("")) == [FileInfo("v.bin", False, len(data))]
    assert None in etags or len(set(etags)) == 3  # versions of different sizes never share an ETag


# listing -------------------------------------------------------------------------------------------------------------
@every_backend
async def test_list_one_level_sorted_by_name(store: ArtifactStore) -> None:
    # Created out of order, and named so that ordering whole keys ("b.txt" < "b/...") differs from ordering names.
    for name, data in [
        ("zeta.txt", b"zeta"),
        ("b/inner.txt", b"in"),
        ("b.txt", b"b-txt"),
        ("b-c", b"b-c!!!"),
        ("a-dir/x/deep.bin", b"deep"),
        ("m", b""),
    ]:
        await put(store, name, data)
    assert await store.list(p("")) == [
        FileInfo("a-dir", True),
        FileInfo("b", True),
        FileInfo("b-c", False, 6),
        FileInfo("b.txt", False, 5),
        FileInfo("m", False, 0),
        FileInfo("zeta.txt", False, 4),
    ]
    assert await store.list(p("b")) == [FileInfo("inner.txt", False, 2)]
    assert await store.list(p("a-dir")) == [FileInfo("x", True)]  # one level only
    assert await store.list(p("zeta.txt")) == []  # a path is never listed as itself
    for missing in ("nope", "b/nope/deeper", "zeta.txt/below"):
        assert await store.list(p(missing)) == []


@every_backend
async def test_list_of_a_fresh_store_is_empty(store: ArtifactStore) -> None:
    assert await store.list(p("")) == []


# delete --------------------------------------------------------------------------------------------------------------
@every_backend
async def test_delete_a_file(store: ArtifactStore) -> None:
    for name in ("d/gone.txt", "d/gone.txt.bak", "d/keep.txt"):
        await put(store, name, b"x")
    await store.delete(p("d/gone.txt"))
    with pytest.raises(ArtifactNotFound):
        await store.open_read(p("d/gone.txt"))
    assert [info.path for info in await store.list(p("d"))] == ["gone.txt.bak", "keep.txt"]


@every_backend
async def test_delete_a_prefix_removes_the_whole_tree(store: ArtifactStore) -> None:
    for name in ("x/a", "x/b/c", "x/b/d/e", "xy", "x-y/z"):  # "xy" and "x-y" share the string, not the path
        await put(store, name, b"1")
    await store.delete(p("x"))
    assert await store.list(p("x")) == []
    for gone in ("x/a", "x/b/c", "x/b/d/e"):
        with pytest.raises(ArtifactNotFound):
            await store.open_read(p(gone))
    assert await store.list(p("")) == [FileInfo("x-y", True), FileInfo("xy", False, 1)]
    assert await read_all(store, "x-y/z") == b"1"


@every_backend
async def test_delete_is_idempotent(store: ArtifactStore) -> None:
    await put(store, "f.txt", b"f")
    await store.delete(p("f.txt"))
    await store.delete(p("f.txt"))
    await store.delete(p("never/existed"))
    assert await store.list(p("")) == []


# missing paths and directories ---------------------------------------------------------------------------------------
@every_backend
async def test_open_read_of_missing_path_and_of_directory(store: ArtifactStore) -> None:
    await put(store, "d/inner/f.txt", b"f")
    for missing in ("nope.txt", "d/in", "d/inner/f", "d/inner/f.txt/below", "other/f.txt"):
        with pytest.raises(ArtifactNotFound):
            await store.open_read(p(missing))
    for directory in ("d", "d/inner", ""):
        with pytest.raises(IsADirectoryArtifact):
            await store.open_read(p(directory))


@every_backend
async def test_head_answers_what_open_read_would_without_opening(store: ArtifactStore) -> None:
    data = blob(3000, seed=5)
    await put(store, "d/inner/f.txt", data)
    meta = await store.head(p("d/inner/f.txt"))
    handle = await store.open_read(p("d/inner/f.txt"))
    try:
        assert (meta.size, meta.etag, meta.sha256) == (len(data), handle.meta.etag, handle.meta.sha256)
    finally:
        await handle.aclose()
    for missing in ("nope.txt", "d/in", "d/inner/f", "d/inner/f.txt/below", "other/f.txt"):
        with pytest.raises(ArtifactNotFound):
            await store.head(p(missing))
    for directory in ("d", "d/inner", ""):
        with pytest.raises(IsADirectoryArtifact):
            await store.head(p(directory))


@pytest.mark.parametrize("spec", backends(hierarchical=True))
async def test_no_file_below_a_file_or_over_a_directory(store: ArtifactStore) -> None:
    await put(store, "f/file.txt", b"x")
    with pytest.raises(InvalidParameter, match="a parent path is a file"):
        await put(store, "f/file.txt/below", b"y")
    with pytest.raises(InvalidParameter, match="it is a directory"):
        await put(store, "f", b"y")
    assert await store.list(p("")) == [FileInfo("f", True)]
    assert await store.list(p("f")) == [FileInfo("file.txt", False, 1)]


# failed and interrupted writes ---------------------------------------------------------------------------------------
# Where the body breaks off: before the first block is complete (the single-request path), or blocks into it.
BREAKS: dict[str, Callable[[int], int]] = {"in-first-block": lambda block: block // 2, "past-2-blocks": lambda b: 2 * b}


async def assert_only_previous_version(store: ArtifactStore, previous: bytes) -> None:
    handle = await store.open_read(p("run/keep.bin"))
    assert handle.meta.size == len(previous)
    assert await read_handle(handle) == previous
    with pytest.raises(ArtifactNotFound):  # a first upload that failed left no file
        await store.open_read(p("run/new.bin"))
    assert await store.list(p("run")) == [FileInfo("keep.bin", False, len(previous))]


@every_backend
@pytest.mark.parametrize("where", BREAKS)
async def test_failed_write_keeps_previous_version_and_leaves_nothing(
    spec: Backend, store: ArtifactStore, where: str
) -> None:
    previous = b"version 1"
    await put(store, "run/keep.bin", previous)
    data, fail_after = blob(4 * spec.block, seed=5), BREAKS[where](spec.block)
    for target in ("run/keep.bin", "run/new.bin"):
        with pytest.raises(ClientDisconnect):  # the source's own error comes through
            await store.write(p(target), stream(data, spec.block // 4, fail_after), None)
    await assert_only_previous_version(store, previous)
    assert await spec.raw_names(store, "run") == ["keep.bin"]  # no temp file, no pending upload left behind


@every_backend
@pytest.mark.parametrize("where", BREAKS)
async def test_interrupted_write_is_invisible_and_keeps_previous_version(
    spec: Backend, store: ArtifactStore, where: str
) -> None:
    previous = b"version 1"
    await put(store, "run/keep.bin", previous)
    data, fail_after = blob(4 * spec.block, seed=6), BREAKS[where](spec.block)
    stalls = {target: asyncio.Event() for target in ("run/keep.bin", "run/new.bin")}
    bodies = {target: stream(data, spec.block // 4, fail_after, hang) for target, hang in stalls.items()}
    tasks = [asyncio.ensure_future(store.write(p(target), body, None)) for target, body in bodies.items()]
    for stalled in stalls.values():
        await stalled.wait()
    await assert_only_previous_version(store, previous)  # uploads under way are hidden
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    await assert_only_previous_version(store, previous)
    assert await spec.raw_names(store, "run") == ["keep.bin"]


# create-only ---------------------------------------------------------------------------------------------------------
def create_only_size(spec: Backend, path: str) -> int:
    return 50_000 if path == "single" else spec.block + 1  # within the first block, or past it


@pytest.mark.parametrize(("spec", "path"), backends_writing("create_only"))
async def test_create_only_refuses_an_existing_object(spec: Backend, store: ArtifactStore, path: str) -> None:
    first, second = blob(create_only_size(spec, path), seed=7), blob(create_only_size(spec, path), seed=8)
    await put(store, "once.bin", first, options=CREATE_ONLY)
    with pytest.raises(AlreadyExists):
        await put(store, "once.bin", second, options=CREATE_ONLY)
    assert await read_all(store, "once.bin") == first
    assert await spec.raw_names(store, "") == ["once.bin"]  # the refused body left nothing behind
    await put(store, "once.bin", second)  # a plain write still replaces it
    assert await read_all(store, "once.bin") == second


@pytest.mark.parametrize(("spec", "path"), backends_writing("atomic_create_only"))
async def test_concurrent_create_only_writers_have_exactly_one_winner(
    spec: Backend, store: ArtifactStore, path: str
) -> None:
    bodies = [bytes([i + 1]) * create_only_size(spec, path) for i in range(8)]
    results = await asyncio.gather(
        *(put(store, "race.bin", body, options=CREATE_ONLY) for body in bodies), return_exceptions=True
    )
    winners = [i for i, result in enumerate(results) if result is None]
    assert len(winners) == 1, results
    assert all(isinstance(result, AlreadyExists) for result in results if result is not None), results
    assert await read_all(store, "race.bin") == bodies[winners[0]]
    assert await spec.raw_names(store, "") == ["race.bin"]


# reads during overwrites ---------------------------------------------------------------------------------------------
@every_backend
async def test_a_handle_opened_before_an_overwrite_never_mixes_versions(spec: Backend, store: ArtifactStore) -> None:
    old, new = blob(3 * DOWNLOAD_CHUNK, seed=9), blob(2 * DOWNLOAD_CHUNK + 1, seed=10)
    await put(store, "v.bin", old)
    handle = await store.open_read(p("v.bin"))
    await put(store, "v.bin", new)
    if spec.read_isolation == "snapshot":
        assert await read_handle(handle) == old
    else:
        with pytest.raises(StorageUnavailable, match="changed while it was being read"):
            await read_handle(handle)
    assert await read_all(store, "v.bin") == new


def classify(data: bytes, size: int, versions: tuple[bytes, bytes]) -> str:
    """What a reader got, named briefly (a failing assertion must not print megabytes)."""
    for name, version in zip(("A", "B"), versions, strict=True):
        if data == version:
            return name if size == len(data) else f"{name} under the other version's size {size}"
    return f"torn: {len(data)} bytes, meta size {size}"


# Large versions (many chunks each) catch torn and mixed reads; small ones, many times over, catch a reader that
# opens the path while a rename replaces it. Versions differ in size, so a size from the other version shows too.
OVERWRITES = {"large": (2 * MiB, 3 * MiB), "small": (1000, 2000)}


@every_backend
@pytest.mark.parametrize("sizes", OVERWRITES)
async def test_overwrite_under_concurrent_readers(spec: Backend, store: ArtifactStore, sizes: str) -> None:
    size_a, size_b = OVERWRITES[sizes]
    rounds = spec.rounds if sizes == "small" else max(4, spec.rounds // 40)
    versions = (blob(size_a, seed=11), blob(size_b, seed=12))
    await put(store, "hot.bin", versions[0])
    seen: Counter[str] = Counter()

    async def writer() -> None:
        for i in range(1, rounds + 1):
            await put(store, "hot.bin", versions[i % 2])

    async def reader() -> None:
        for _ in range(rounds):
            try:
                handle = await store.open_read(p("hot.bin"))
                seen[classify(await read_handle(handle), handle.meta.size, versions)] += 1
            except StorageUnavailable as exc:
                # A backend that pins its reads to the opened version refuses once that version is replaced.
                refusal = spec.read_isolation == "checked" and "changed while it was being read" in exc.message
                seen["refused: version replaced" if refusal else f"StorageUnavailable: {exc.message}"] += 1
            except Exception as exc:  # ArtifactNotFound, above all: the object always exists
                seen[f"{type(exc).__name__}: {exc}"] += 1

    await asyncio.gather(writer(), reader(), reader(), reader())
    allowed = {"A", "B", "refused: version replaced"}
    assert {outcome: n for outcome, n in seen.items() if outcome not in allowed} == {}, seen
    assert sum(seen.values()) == 3 * rounds
    assert await read_all(store, "hot.bin") == versions[rounds % 2]
