"""The S3 backend against real servers: SeaweedFS (verifies SigV4) for everything, moto for >1000-key pagination."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore import exceptions as bce

from app.errors import (
    ArtifactNotFound,
    ArtifactProxyError,
    IsADirectoryArtifact,
    PayloadTooLarge,
    ResourceNotFound,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage.base import CompletedPart, WriteOptions, supports_multipart_upload, supports_presigned_download
from app.storage.s3 import S3Store
from app.storage.s3 import upload as upload_module
from app.storage.s3.client import checksum_calculation
from app.storage.s3.config import parse_s3_uri
from app.storage.s3.errors import map_error
from app.storage.s3.presign import multipart_etag
from app.storage.s3.upload import PartBuffer, part_size_for
from app.store_settings import MiB, S3Settings
from tests.servers import StorageServer
from tests.servers.s3 import moto_server, restart_seaweedfs, seaweedfs_server, stop_seaweedfs
from tests.utils.streams import read_all, stream


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@asynccontextmanager
async def open_store(server: StorageServer, mp: pytest.MonkeyPatch, **config: Any) -> AsyncIterator[S3Store]:
    """A started store under a fresh prefix of the server's destination, so tests never see each other's keys."""
    for name, value in server.env.items():
        mp.setenv(name, value)
    destination = f"{server.destination}/{uuid.uuid4().hex[:12]}"
    store = S3Store(destination, Settings(artifacts_destination=destination, s3=S3Settings(**config)))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[S3Store]:
    async with open_store(seaweed, monkeypatch) as opened:
        yield opened


def p(path: str) -> ArtifactPath:
    return ArtifactPath(path)


async def pending_uploads(store: S3Store, path: str) -> list[Any]:
    response = await store.client.sdk.list_multipart_uploads(
        Bucket=store.client.bucket, Prefix=store.client.key(p(path))
    )
    return list(response.get("Uploads", []))


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# pure helpers ------------------------------------------------------------------------------------------------------
def test_keys_and_uri_parsing() -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("s3:///nobucket")
    rooted = S3Store("s3://bucket", Settings())
    assert rooted.client.key(p("a/b.txt")) == "a/b.txt" and rooted.client.dir_prefix(p("")) == ""
    prefixed = S3Store("s3://bucket/pre/fix", Settings())
    assert prefixed.client.key(p("a/b.txt")) == "pre/fix/a/b.txt" and prefixed.client.dir_prefix(p("")) == "pre/fix/"
    # The path is a name, never a URI: scheme-like text stays in the key verbatim.
    assert prefixed.client.key(p("up/file:x?y=1")) == "pre/fix/up/file:x?y=1"


def test_capabilities_follow_settings() -> None:
    on = S3Store("s3://b", Settings())
    off = S3Store("s3://b", Settings(enable_multipart=False, enable_presigned_download=False))
    assert supports_multipart_upload(on) and supports_presigned_download(on)
    assert not supports_multipart_upload(off) and not supports_presigned_download(off)


def test_part_size_grows_to_stay_within_10000_parts() -> None:
    assert part_size_for(None, 8 * MiB) == 8 * MiB
    assert part_size_for(80_000 * MiB, 8 * MiB) == 8 * MiB
    grown = part_size_for(200 * 1024 * MiB, 8 * MiB)
    assert grown % MiB == 0 and 200 * 1024 * MiB / grown <= 10_000


def test_error_mapping() -> None:
    def client_error(code: str, status: int = 400) -> bce.ClientError:
        return bce.ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
        )

    where = "s3://b/k"
    assert isinstance(map_error(client_error("NoSuchKey", 404), "Get", where, "k"), ArtifactNotFound)
    assert isinstance(map_error(client_error("NoSuchUpload", 404), "Complete", where, "k"), ResourceNotFound)
    for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"):
        assert isinstance(map_error(client_error(code, 403), "Get", where, "k"), StorageMisconfigured)
    throttled = map_error(client_error("SlowDown", 503), "Put", where, "k")
    assert isinstance(throttled, StorageUnavailable) and "Retry-After" in throttled.headers
    assert isinstance(map_error(client_error("Weird", 502), "Put", where, "k"), StorageUnavailable)
    assert isinstance(map_error(client_error("RequestTimeout"), "Put", where, "k"), StorageTimeout)
    assert isinstance(
        map_error(bce.EndpointConnectionError(endpoint_url="http://x"), "Get", where, "k"), StorageUnavailable
    )
    assert isinstance(map_error(bce.ReadTimeoutError(endpoint_url="http://x"), "Get", where, "k"), StorageTimeout)
    assert isinstance(map_error(bce.NoCredentialsError(), "Get", where, "k"), StorageMisconfigured)


def test_multipart_etag_matches_s3() -> None:
    parts = [b"a" * 5 * MiB, b"b" * 10]
    etags = [f'"{hashlib.md5(part).hexdigest()}"' for part in parts]
    assert multipart_etag(etags) == '"8b0be7847da5564ae08e97af63b60885-2"'
    assert multipart_etag(['"not-hex"']) is None


# streamed writes and reads -----------------------------------------------------------------------------------------
async def test_large_streamed_write_uses_multipart(store: S3Store) -> None:
    data = blob(20 * MiB + 12345)
    await store.write(p("big.bin"), stream(data), None)
    handle = await store.open_read(p("big.bin"))
    assert handle.meta.size == len(data) and handle.meta.etag and handle.meta.etag.endswith('-3"')
    chunks = [chunk async for chunk in handle.iter_range(0, len(data))]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= store.settings.download_chunk_size
    assert len(chunks[0]) == store.settings.download_chunk_size  # re-assembled from aiohttp's small reads
    assert await pending_uploads(store, "big.bin") == []


class PartRecorder:
    """Wraps the client: records each UploadPart's body and how many run at once, can delay or fail a part."""

    def __init__(self, real: Any, delay: float = 0.0, fail_part: int | None = None) -> None:
        self._real, self.delay, self.fail_part = real, delay, fail_part
        self.bodies: list[tuple[int, int, int]] = []  # (part number, id of the body object, its length)
        self.active = self.max_active = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def upload_part(self, **kwargs: Any) -> Any:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.bodies.append((kwargs["PartNumber"], id(kwargs["Body"]), len(kwargs["Body"])))
            await asyncio.sleep(self.delay)
            if kwargs["PartNumber"] == self.fail_part:
                error = {"Code": "InternalError", "Message": "injected"}
                raise bce.ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
            return await self._real.upload_part(**kwargs)
        finally:
            self.active -= 1


@pytest.mark.parametrize("chunk", [777_777, 12 * MiB])  # chunks straddling part boundaries; chunks over a part
async def test_parts_in_flight_and_buffers_are_bounded(
    seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    async with open_store(seaweed, monkeypatch, part_size=5 * MiB, upload_concurrency=3) as s3:
        data = blob(7 * 5 * MiB + 4321, seed=11)
        recorder = PartRecorder(s3.client._sdk, delay=0.05)
        s3.client._sdk = recorder
        try:
            await s3.write(p("bounded.bin"), stream(data, chunk), None)
        finally:
            s3.client._sdk = recorder._real
        assert await read_all(s3, "bounded.bin") == data
        assert (await s3.open_read(p("bounded.bin"))).meta.etag.endswith('-8"')  # type: ignore[union-attr]
        assert sorted(number for number, _, _ in recorder.bodies) == list(range(1, 9))
        assert [size for _, _, size in sorted(recorder.bodies)] == [5 * MiB] * 7 + [4321]
        assert recorder.max_active == 3  # parts do overlap, and never more than the setting
        full_part_buffers = {body for number, body, _ in recorder.bodies if number <= 7}
        assert len(full_part_buffers) <= 3 + 1  # reused: the ones in flight and the one being filled
        assert await pending_uploads(s3, "bounded.bin") == []


async def test_failed_part_stops_reading_and_aborts(seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(seaweed, monkeypatch, part_size=5 * MiB, upload_concurrency=2, max_attempts=1) as s3:
        await s3.write(p("model.bin"), stream(b"version 1"), None)
        read = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal read
            async for chunk in stream(blob(30 * 5 * MiB, seed=12), MiB):
                read += len(chunk)
                yield chunk

        recorder = PartRecorder(s3.client._sdk, fail_part=2)
        s3.client._sdk = recorder
        try:
            with pytest.raises(StorageUnavailable):
                await s3.write(p("model.bin"), counted(), None)
        finally:
            s3.client._sdk = recorder._real
        assert read <= 6 * 5 * MiB  # noticed at the next part boundaries, not after the whole stream
        assert await read_all(s3, "model.bin") == b"version 1"
        assert await pending_uploads(s3, "model.bin") == []


async def test_too_many_parts_is_refused_and_aborted(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_module, "MAX_PARTS", 2)
    with pytest.raises(PayloadTooLarge):
        await store.write(p("many-parts.bin"), stream(blob(2 * 8 * MiB + 1, seed=13)), None)
    assert await pending_uploads(store, "many-parts.bin") == []
    with pytest.raises(ArtifactNotFound):
        await store.open_read(p("many-parts.bin"))


async def test_upload_part_requests_over_http(store: S3Store) -> None:
    # Over plain HTTP the payload SHA-256 is signed (S3 checks it), so no CRC32 is computed on top; parts go with
    # `Expect: 100-continue`, which lets aiohttp send a part without first joining it to the headers (a copy).
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    store.client.sdk.meta.events.register("before-send.s3.UploadPart", capture)
    try:
        await store.write(p("headers.bin"), stream(blob(9 * MiB, seed=14)), None)
    finally:
        store.client.sdk.meta.events.unregister("before-send.s3.UploadPart", capture)
    assert len(sent) == 2
    for headers in sent:
        assert headers["expect"] == "100-continue"
        assert len(headers["x-amz-content-sha256"]) == 64  # the signed payload hash, not UNSIGNED-PAYLOAD
        assert not any(name.startswith("x-amz-checksum-") for name in headers)


def test_checksums_follow_the_endpoint_scheme() -> None:
    assert checksum_calculation("http://127.0.0.1:8333") == "when_required"
    assert checksum_calculation("https://s3.example.com") == "when_supported"
    assert checksum_calculation(None) == "when_supported"  # AWS itself, over HTTPS


def test_part_buffer_slices_are_views() -> None:
    buffer = PartBuffer(b"abcdef")
    view = buffer[:4]
    assert isinstance(view, memoryview) and bytes(view) == b"abcd"
    buffer[0:1] = b"z"
    assert bytes(view) == b"zbcd" and buffer[1] == ord("b") and len(buffer) == 6


@pytest.mark.parametrize("size", [100, 9 * MiB])
async def test_sha256_is_recorded_and_read_back(store: S3Store, size: int) -> None:
    data = blob(size, seed=8)
    digest = hashlib.sha256(data).hexdigest()
    await store.write(p("digested.bin"), stream(data), None, WriteOptions(digest=lambda: digest))
    handle = await store.open_read(p("digested.bin"))
    assert handle.meta.sha256 == digest
    await store.write(p("digested.bin"), stream(b"no digest"), None)
    assert (await store.open_read(p("digested.bin"))).meta.sha256 is None


async def test_digest_tag_of_another_object_is_ignored(store: S3Store) -> None:
    # Tags naming another ETag (a concurrent overwrite raced the tagging) are never served as this object's digest.
    await store.write(p("raced.bin"), stream(b"current"), None)
    tags = [{"Key": "sha256", "Value": "ab" * 32}, {"Key": "etag", "Value": "0123456789abcdef0123456789abcdef-2"}]
    await store.client.sdk.put_object_tagging(
        Bucket=store.client.bucket, Key=store.client.key(p("raced.bin")), Tagging={"TagSet": tags}
    )
    assert (await store.open_read(p("raced.bin"))).meta.sha256 is None


async def test_upload_extra_args_apply_to_put_and_multipart(
    seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_S3_UPLOAD_EXTRA_ARGS", '{"Metadata": {"origin": "artifact-proxy"}}')
    async with open_store(seaweed, monkeypatch) as s3:
        assert s3.config.upload_extra_args == {"Metadata": {"origin": "artifact-proxy"}}
        await s3.write(p("small"), stream(b"x"), 1)
        await s3.write(p("large"), stream(blob(9 * MiB)), None)
        for name in ("small", "large"):
            head = await s3.client.sdk.head_object(Bucket=s3.client.bucket, Key=s3.client.key(p(name)))
            assert head["Metadata"] == {"origin": "artifact-proxy"}


async def test_unknown_extra_args_fail_at_start(seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_S3_UPLOAD_EXTRA_ARGS", '{"NotAnS3Arg": "x"}')
    with pytest.raises(ValueError, match="NotAnS3Arg"):
        async with open_store(seaweed, monkeypatch):
            pass


# list and delete ---------------------------------------------------------------------------------------------------
async def test_list_one_level_with_pagination(seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(seaweed, monkeypatch, list_page_size=2) as s3:
        for name in ("a.txt", "b.txt", "c.txt", "sub/c.txt", "sub/deeper/d.txt", "e/f", "g/h"):
            await s3.write(p(name), stream(name.encode()), None)
        root = await s3.list(p(""))
        assert [(i.path, i.is_dir, i.file_size) for i in root] == [
            ("a.txt", False, 5),
            ("b.txt", False, 5),
            ("c.txt", False, 5),
            ("e", True, None),
            ("g", True, None),
            ("sub", True, None),
        ]
        assert [(i.path, i.is_dir) for i in await s3.list(p("sub"))] == [("c.txt", False), ("deeper", True)]
        # A directory placeholder key (as consoles create) is not an entry of its own listing.
        await s3.client.sdk.put_object(Bucket=s3.client.bucket, Key=s3.client.key(p("sub")) + "/", Body=b"")
        assert [i.path for i in await s3.list(p("sub"))] == ["c.txt", "deeper"]


async def test_list_and_delete_past_1000_keys(moto: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(moto, monkeypatch) as s3:
        names = [f"many/f{i:05d}" for i in range(1001)] + ["many/sub/x"]
        semaphore = asyncio.Semaphore(32)

        async def put(name: str) -> None:
            async with semaphore:
                await s3.client.sdk.put_object(Bucket=s3.client.bucket, Key=s3.client.key(p(name)), Body=b"z")

        await asyncio.gather(*(put(name) for name in names))
        listed = await s3.list(p("many"))
        assert len(listed) == 1002
        assert [i.path for i in listed if i.is_dir] == ["sub"]
        await s3.delete(p("many"))
        remaining = await s3.client.sdk.list_objects_v2(Bucket=s3.client.bucket, Prefix=s3.client.prefix + "/")
        assert remaining.get("KeyCount", 0) == 0


# presigned multipart -----------------------------------------------------------------------------------------------
async def put_parts(urls: list[str], parts: list[bytes]) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as http:
        responses = [await http.put(url, content=part) for url, part in zip(urls, parts, strict=True)]
    assert [r.status_code for r in responses] == [200] * len(parts), responses[0].text
    return [r.headers["ETag"] for r in responses]


async def test_presigned_multipart_round_trip(store: S3Store) -> None:
    parts = [blob(5 * MiB, seed=3), blob(5 * MiB, seed=4), blob(MiB, seed=5)]
    created = await store.create_multipart_upload(p("mpu/model.bin"), 3)
    assert created.upload_id and [c.part_number for c in created.credentials] == [1, 2, 3]
    assert all(c.headers == {} for c in created.credentials)
    etags = await put_parts([c.url for c in created.credentials], parts)
    completed = [CompletedPart(i, etag) for i, etag in enumerate(etags, 1)]
    # An upload id is bound to its key: completing it under another path fails and leaves it usable.
    with pytest.raises(ResourceNotFound):
        await store.complete_multipart_upload(p("mpu/other.bin"), created.upload_id, completed)
    await store.complete_multipart_upload(p("mpu/model.bin"), created.upload_id, list(reversed(completed)))
    assert await read_all(store, "mpu/model.bin") == b"".join(parts)
    # A retried complete (its first response lost) succeeds because the object is the one these parts built.
    await store.complete_multipart_upload(p("mpu/model.bin"), created.upload_id, completed)
    with pytest.raises(ResourceNotFound):
        await store.complete_multipart_upload(p("mpu/model.bin"), "no-such-upload", [CompletedPart(1, '"00"')])


class ForgetfulClient:
    """Answers every complete with NoSuchUpload, as S3 does once an upload is completed. Neither test server does:
    SeaweedFS accepts a repeated complete, and moto fails with a 500 (KeyError) on unknown upload ids."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def complete_multipart_upload(self, **_: Any) -> None:
        error = {"Code": "NoSuchUpload", "Message": "The specified upload does not exist."}
        raise bce.ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 404}}, "CompleteMultipartUpload")


async def test_retried_complete_is_recognised_by_its_etag(store: S3Store) -> None:
    parts = [blob(5 * MiB, seed=7), b"tail"]
    created = await store.create_multipart_upload(p("model.bin"), 2)
    etags = await put_parts([c.url for c in created.credentials], parts)
    completed = [CompletedPart(i, etag) for i, etag in enumerate(etags, 1)]
    await store.complete_multipart_upload(p("model.bin"), created.upload_id, completed)
    await store.write(p("other.bin"), stream(b"someone else's object"), None)
    real, store.client._sdk = store.client._sdk, ForgetfulClient(store.client._sdk)
    try:
        await store.complete_multipart_upload(p("model.bin"), created.upload_id, completed)  # the retry: success
        # Mere existence is no proof: another key, or the same key now holding another object, stays a 404.
        with pytest.raises(ResourceNotFound):
            await store.complete_multipart_upload(p("other.bin"), created.upload_id, completed)
        await store.write(p("model.bin"), stream(b"replaced"), None)
        with pytest.raises(ResourceNotFound):
            await store.complete_multipart_upload(p("model.bin"), created.upload_id, completed)
    finally:
        store.client._sdk = real


async def test_tampered_presigned_part_url_is_refused(store: S3Store) -> None:
    created = await store.create_multipart_upload(p("t/x.bin"), 2)
    url = created.credentials[0].url
    signature = url[-1]
    tampered = [
        url.replace("partNumber=1", "partNumber=2"),
        url[:-1] + ("0" if signature != "0" else "1"),
        url.replace(store.client.key(p("t/x.bin")), store.client.key(p("t/y.bin"))),
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        for bad in tampered:
            assert bad != url
            assert (await http.put(bad, content=b"data")).status_code == 403
    await store.abort_multipart_upload(p("t/x.bin"), created.upload_id)


async def test_abort_is_idempotent(store: S3Store) -> None:
    created = await store.create_multipart_upload(p("ab/x.bin"), 1)
    await put_parts([created.credentials[0].url], [b"partial"])
    await store.abort_multipart_upload(p("ab/x.bin"), created.upload_id)
    await store.abort_multipart_upload(p("ab/x.bin"), created.upload_id)
    await store.abort_multipart_upload(p("ab/x.bin"), "no-such-upload")
    await store.abort_multipart_upload(p("ab/x.bin"), None)
    assert await pending_uploads(store, "ab/x.bin") == []
    with pytest.raises(ResourceNotFound):
        await store.complete_multipart_upload(p("ab/x.bin"), created.upload_id, [CompletedPart(1, '"00"')])
    with pytest.raises(ArtifactNotFound):
        await store.open_read(p("ab/x.bin"))


# presigned download ------------------------------------------------------------------------------------------------
async def test_presign_of_missing_path_or_directory(store: S3Store) -> None:
    await store.write(p("d/inner/f.txt"), stream(b"f"), 1)
    for path in ("nope.txt", "d/inner/f.txt/below", "d/in"):
        with pytest.raises(ArtifactNotFound):
            await store.presign_download(p(path))
    for path in ("d", "d/inner", ""):
        with pytest.raises(IsADirectoryArtifact):
            await store.presign_download(p(path))


async def test_presigned_download_with_range(store: S3Store) -> None:
    data = blob(1000, seed=6)
    await store.write(p("dl/data file.bin"), stream(data), len(data))
    presigned = await store.presign_download(p("dl/data file.bin"))
    assert presigned.file_size == 1000 and presigned.headers == {}
    async with httpx.AsyncClient(timeout=30) as http:
        ranged = await http.get(presigned.url, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        full = await http.get(presigned.url)
        assert full.content == data
        assert full.headers["content-disposition"].startswith("attachment;")
        assert "data file.bin" in full.headers["content-disposition"]
        assert (await http.get(presigned.url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))).status_code == 403


async def test_presign_with_public_endpoint(seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    public = seaweed.endpoint.replace("127.0.0.1", "localhost")
    async with open_store(seaweed, monkeypatch, public_endpoint_url=public) as s3:
        await s3.write(p("pub.txt"), stream(b"public"), 6)
        presigned = await s3.presign_download(p("pub.txt"))
        created = await s3.create_multipart_upload(p("pub.bin"), 1)
        assert presigned.url.startswith(public) and created.credentials[0].url.startswith(public)
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(presigned.url)).content == b"public"
        await s3.abort_multipart_upload(p("pub.bin"), created.upload_id)


# failures ----------------------------------------------------------------------------------------------------------
async def test_wrong_credentials_and_bucket_are_misconfiguration(
    seaweed: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(seaweed, monkeypatch) as s3:
        await s3.check_ready()
    # Credentials are resolved when the client is created, in start().
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    bad_secret = S3Store(seaweed.destination, Settings())
    await bad_secret.start()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.env["AWS_SECRET_ACCESS_KEY"])
    no_bucket = S3Store("s3://no-such-bucket/x", Settings())
    await no_bucket.start()
    for s3 in (bad_secret, no_bucket):
        try:
            with pytest.raises(StorageMisconfigured) as caught:
                await s3.check_ready()
            assert "wrong-secret-value" not in caught.value.message
        finally:
            await s3.close()


async def test_storage_down_then_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with seaweedfs_server(tmp_path) as server:
        async with open_store(server, monkeypatch, max_attempts=1) as s3:  # no SDK retries: fail fast here
            await s3.write(p("kept.txt"), stream(b"kept"), 4)
            # A graceful stop: after SIGKILL, SeaweedFS's volume server sometimes takes 5-20 s to rejoin its master.
            stop_seaweedfs(server.process)
            for call in (
                s3.check_ready(),
                s3.open_read(p("kept.txt")),
                s3.write(p("new"), stream(b"n"), 1),
                s3.list(p("")),
                s3.delete(p("kept.txt")),
            ):
                with pytest.raises(ArtifactProxyError) as caught:
                    await call
                assert isinstance(caught.value, StorageUnavailable), caught.value
                assert caught.value.headers["Retry-After"]
            restart_seaweedfs(server, tmp_path)
            await s3.check_ready()
            assert await read_all(s3, "kept.txt") == b"kept"
