"""GCSStore against fake-gcs-server: streamed writes, ranged reads, listing, deletes, multipart, presigning, outages.

fake-gcs-server checks no signatures, so signing is pinned separately against gcloud-aio-storage's own V4 signer.
The tests of signed URLs run with both signers: a key file ("key") and IAM signBlob as on GKE ("iam", through the
stand-in of tests/servers/gce.py); what only IAM signing does is in tests/test_storage_gcs_iam.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from gcloud.aio.storage import Storage, blob

from app.errors import (
    ArtifactNotFound,
    InvalidParameter,
    IsADirectoryArtifact,
    ResourceNotFound,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage.base import CompletedPart, FileInfo, supports_multipart_upload, supports_presigned_download
from app.storage.gcs import GCSStore
from app.storage.gcs.config import PUBLIC_ENDPOINT
from app.storage.gcs.iam import IamSigner
from app.storage.gcs.signing import KeySigner, URLSigner, signing_key_from_service_data
from app.store_settings import GCSSettings
from tests.servers import StorageServer, stop_process
from tests.servers.gcs import BUCKET, create_bucket, fake_gcs_server, start_fake_gcs
from tests.utils.streams import read_all, stream

BLOCK = 256 * 1024
BOTH_SIGNERS = pytest.mark.parametrize("signing", ["key", "iam"])


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with fake_gcs_server(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def make_store(server: StorageServer, prefix: str, *, key: bool = True, **settings: object) -> GCSStore:
    """A store signing with the key file, or (`key=False`) with whatever the environment offers."""
    config = GCSSettings(
        api_root=server.endpoint,
        credentials_file=server.env["GOOGLE_APPLICATION_CREDENTIALS"] if key else None,
        upload_chunk_size=BLOCK,  # small blocks, so a few hundred KiB already take the resumable path
    )
    store_settings = Settings(storage_timeout=5, gcs=config, **settings)  # type: ignore[arg-type]
    return GCSStore(f"gs://{BUCKET}/{prefix}", store_settings)


@pytest.fixture
def signing() -> str:
    return "key"  # BOTH_SIGNERS parametrizes it


@pytest.fixture
async def store(gcs_server: StorageServer, signing: str, request: pytest.FixtureRequest) -> AsyncIterator[GCSStore]:
    if signing == "iam":
        request.getfixturevalue("on_gke")
    gcs = make_store(gcs_server, f"t-{uuid.uuid4().hex[:8]}/root", key=signing == "key")
    assert gcs.url_signer is not None
    assert isinstance(gcs.url_signer.signer, KeySigner if signing == "key" else IamSigner)
    await gcs.start()
    try:
        yield gcs
    finally:
        await gcs.close()


def p(value: str) -> ArtifactPath:
    return ArtifactPath(value)


async def raw_names(server: StorageServer, prefix: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.endpoint}/storage/v1/b/{BUCKET}/o", params={"prefix": prefix})
    return [item["name"] for item in response.json().get("items", [])]


# write / read ------------------------------------------------------------------------------------------------------
# list / delete -----------------------------------------------------------------------------------------------------
@BOTH_SIGNERS
async def test_list_hides_multipart_staging(store: GCSStore) -> None:
    await store.write(p("sub/b.txt"), stream(b"bb"), None)
    created = await store.create_multipart_upload(p("sub/m.bin"), 1)
    httpx.put(created.credentials[0].url, content=b"part").raise_for_status()  # a staging object now exists
    assert await store.list(p("")) == [FileInfo("sub", True)]
    assert await store.list(p("sub")) == [FileInfo("b.txt", False, 2)]


async def test_list_follows_pages(store: GCSStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(7):
        await store.write(p(f"many/f{i}"), stream(b"x"), None)
        await store.write(p(f"many/d{i}/x"), stream(b"x"), None)
    real = store.client.storage.list_objects

    async def small_pages(bucket: str, *, params: dict[str, str], **kw: object) -> dict[str, object]:
        return await real(bucket, params={**params, "maxResults": "3"})

    monkeypatch.setattr(store.client.storage, "list_objects", small_pages)
    listed = await store.list(p("many"))
    assert sorted(i.path for i in listed if not i.is_dir) == [f"f{i}" for i in range(7)]
    assert sorted(i.path for i in listed if i.is_dir) == [f"d{i}" for i in range(7)]
    await store.delete(p("many"))
    assert await store.list(p("many")) == []


# multipart ---------------------------------------------------------------------------------------------------------
def upload_parts(urls: list[str], parts: list[bytes]) -> list[CompletedPart]:
    done = []
    with httpx.Client() as client:
        for number, (url, body) in enumerate(zip(urls, parts, strict=True), 1):
            response = client.put(url, content=body)  # what the MLflow client does: no auth, no extra headers
            assert response.status_code == 200, response.text
            done.append(CompletedPart(number, response.headers.get("etag", ""), url))
    return done


def staging_prefix(store: GCSStore) -> str:
    return f"{store.client.prefix}/.artifact.uploading.mpu/"


@BOTH_SIGNERS
async def test_multipart_round_trip_and_cleanup(store: GCSStore, gcs_server: StorageServer) -> None:
    parts = [os.urandom(BLOCK), os.urandom(BLOCK), b"tail bytes"]
    target = p("models/my model ü.bin")  # spaces and non-ASCII must survive signing and the emulator's route
    created = await store.create_multipart_upload(target, 3)
    assert created.upload_id and [c.part_number for c in created.credentials] == [1, 2, 3]
    assert all(c.headers == {} and c.url.startswith(gcs_server.endpoint) for c in created.credentials)
    done = upload_parts([c.url for c in created.credentials], parts)
    with pytest.raises(ResourceNotFound):  # an upload id is bound to its key
        await store.complete_multipart_upload(p("models/other.bin"), created.upload_id, done)
    await store.complete_multipart_upload(target, created.upload_id, done)
    assert await read_all(store, target.canonical) == b"".join(parts)
    assert await raw_names(gcs_server, staging_prefix(store)) == []
    await store.complete_multipart_upload(target, created.upload_id, done)  # a retried complete succeeds
    assert [i.path for i in await store.list(p(""))] == ["models"]


@BOTH_SIGNERS
async def test_multipart_composes_more_than_32_parts(store: GCSStore, gcs_server: StorageServer) -> None:
    parts = [f"part {i};".encode() for i in range(1, 71)]
    created = await store.create_multipart_upload(p("many.bin"), len(parts))
    done = upload_parts([c.url for c in created.credentials], parts)
    await store.complete_multipart_upload(p("many.bin"), created.upload_id, done)
    assert await read_all(store, "many.bin") == b"".join(parts)
    assert await raw_names(gcs_server, staging_prefix(store)) == []


@BOTH_SIGNERS
async def test_multipart_abort_and_errors(store: GCSStore, gcs_server: StorageServer) -> None:
    created = await store.create_multipart_upload(p("x.bin"), 3)
    done = upload_parts([c.url for c in created.credentials[:2]], [b"a", b"b"])
    with pytest.raises(InvalidParameter):  # part 3 was never uploaded
        await store.complete_multipart_upload(p("x.bin"), created.upload_id, [*done, CompletedPart(3, "")])
    with pytest.raises(InvalidParameter):  # gaps in the numbering
        await store.complete_multipart_upload(p("x.bin"), created.upload_id, [done[1]])
    assert len(await raw_names(gcs_server, staging_prefix(store))) == 2
    await store.abort_multipart_upload(p("x.bin"), created.upload_id)
    assert await raw_names(gcs_server, staging_prefix(store)) == []
    await store.abort_multipart_upload(p("x.bin"), created.upload_id)  # idempotent
    await store.abort_multipart_upload(p("x.bin"), "../not-an-id")
    with pytest.raises(ResourceNotFound):
        await store.complete_multipart_upload(p("x.bin"), created.upload_id, done)
    with pytest.raises(ResourceNotFound):
        await store.complete_multipart_upload(p("x.bin"), "../../escape", done)
    with pytest.raises(ArtifactNotFound):
        await store.open_read(p("x.bin"))


@BOTH_SIGNERS
async def test_multipart_rejects_a_replaced_part(store: GCSStore) -> None:
    created = await store.create_multipart_upload(p("e.bin"), 1)
    upload_parts([created.credentials[0].url], [b"original"])
    stale = CompletedPart(1, '"0123456789abcdef0123456789abcdef"')  # MD5 of other bytes
    with pytest.raises(InvalidParameter):
        await store.complete_multipart_upload(p("e.bin"), created.upload_id, [stale])


# presigned download ------------------------------------------------------------------------------------------------
@BOTH_SIGNERS
async def test_presigned_download_with_range(store: GCSStore, gcs_server: StorageServer) -> None:
    data = os.urandom(BLOCK + 100)
    await store.write(p("dl/file.bin"), stream(data), None)
    signed = await store.presign_download(p("dl/file.bin"))
    assert signed.file_size == len(data) and signed.headers == {}
    assert signed.url.startswith(f"{gcs_server.endpoint}/{BUCKET}/{store.client.prefix}/dl/file.bin?")
    assert "response-content-disposition=attachment%3B%20filename%3Dfile.bin" in signed.url
    assert "X-Goog-Expires=300&" in signed.url
    response = httpx.get(signed.url, headers={"Range": "bytes=5-1004"})
    assert response.status_code == 206 and response.content == data[5:1005]
    with pytest.raises(ArtifactNotFound):
        await store.presign_download(p("dl/missing.bin"))
    with pytest.raises(IsADirectoryArtifact):
        await store.presign_download(p("dl"))


async def test_capabilities_need_a_signing_key(
    gcs_server: StorageServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no application-default credentials either
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", "ARTIFACT_PROXY_GCS_SIGNING_SERVICE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)  # nor a way to IAM (tests/test_storage_gcs_iam.py has the rule)
    signed = make_store(gcs_server, "caps")
    assert supports_multipart_upload(signed) and supports_presigned_download(signed)
    switched_off = make_store(gcs_server, "caps", enable_multipart=False)
    assert not supports_multipart_upload(switched_off) and supports_presigned_download(switched_off)
    unsigned = make_store(gcs_server, "caps", key=False)
    assert not supports_multipart_upload(unsigned) and not supports_presigned_download(unsigned)


async def test_signature_matches_gcloud_aio_signer(gcs_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """fake-gcs-server accepts any signature, so pin ours to gcloud-aio-storage's V4 implementation."""
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> FrozenDatetime:  # type: ignore[override]
            return now  # type: ignore[return-value]

    monkeypatch.setattr(blob, "datetime", types.SimpleNamespace(datetime=FrozenDatetime, timezone=dt.timezone))
    monkeypatch.setattr(blob, "HOST", "storage.googleapis.com")
    credentials = gcs_server.env["GOOGLE_APPLICATION_CREDENTIALS"]
    key = signing_key_from_service_data(json.loads(Path(credentials).read_text()))
    assert key is not None and "PRIVATE" not in repr(key)
    name = "pre/dir/a file+ü~.bin"
    query = {"response-content-disposition": "attachment; filename=x.bin"}

    async def reference() -> str:
        storage = Storage(service_file=credentials)
        try:
            obj = blob.Blob(storage.get_bucket("bkt"), name, {"size": 0})
            return await obj.get_signed_url(600, http_method="PUT", query_params=dict(query))
        finally:
            await storage.close()

    ours = await URLSigner(KeySigner(key), "bkt", PUBLIC_ENDPOINT).url("PUT", name, 600, query, now)
    assert ours == await reference()


# errors ------------------------------------------------------------------------------------------------------------
async def test_missing_bucket_is_misconfiguration(gcs_server: StorageServer) -> None:
    config = GCSSettings(
        api_root=gcs_server.endpoint, credentials_file=gcs_server.env["GOOGLE_APPLICATION_CREDENTIALS"]
    )
    gcs = GCSStore("gs://no-such-bucket/x", Settings(storage_timeout=5, gcs=config))
    await gcs.start()
    try:
        with pytest.raises(StorageMisconfigured):
            await gcs.check_ready()
    finally:
        await gcs.close()


async def test_silent_server_is_a_timeout(gcs_server: StorageServer) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        unanswered = GCSSettings(api_root=f"http://{host}:{port}")
        gcs = GCSStore(f"gs://{BUCKET}/x", Settings(storage_timeout=0.5, gcs=unanswered))
        await gcs.start()
        try:
            with pytest.raises(StorageTimeout) as caught:
                await gcs.check_ready()
            assert caught.value.status_code == 504
        finally:
            await gcs.close()


async def test_outage_then_recovery_on_the_same_port(tmp_path: Path) -> None:
    with fake_gcs_server(tmp_path) as server:
        gcs = make_store(server, "outage")
        await gcs.start()
        try:
            await gcs.write(p("f.txt"), stream(b"before"), None)
            await gcs.check_ready()
            stop_process(server.process)
            with pytest.raises(StorageUnavailable) as caught:
                await gcs.check_ready()
            assert caught.value.status_code == 503 and caught.value.headers.get("Retry-After")
            with pytest.raises(StorageUnavailable):
                await gcs.open_read(p("f.txt"))
            with pytest.raises(StorageUnavailable):
                await gcs.write(p("g.txt"), stream(os.urandom(3 * BLOCK)), None)
            with pytest.raises(StorageUnavailable):
                await gcs.delete(p("f.txt"))
            with pytest.raises(StorageUnavailable):
                await gcs.list(p(""))
            port = int(server.endpoint.rsplit(":", 1)[1])
            server.process = start_fake_gcs(port, tmp_path / "restarted.log")
            create_bucket(server.endpoint)  # the memory backend starts empty
            await gcs.check_ready()
            await gcs.write(p("f.txt"), stream(b"after"), None)
            assert await read_all(gcs, "f.txt") == b"after"
        finally:
            await gcs.close()
