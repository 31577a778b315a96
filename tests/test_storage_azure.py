"""AzureBlobStore against a real Azurite: block uploads, ranges, listing, deletes, SAS multipart and downloads."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError, ServiceResponseTimeoutError
from azure.storage.blob import BlobServiceClient, ContainerClient
from pydantic import SecretStr

from app.downloads import content_disposition
from app.errors import (
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    IsADirectoryArtifact,
    MultipartUploadUnsupported,
    PresignedDownloadUnsupported,
    ResourceNotFound,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import ArtifactPath, canonical_path
from app.settings import Settings
from app.storage import StoreConfigError, open_store
from app.storage.azure import AzureBlobStore
from app.storage.azure.errors import map_error
from app.storage.base import CompletedPart, supports_multipart_upload, supports_presigned_download
from app.store_settings import AzureSettings
from tests.servers import StorageServer, stop_process
from tests.servers.azure import ACCOUNT, CONTAINER, azurite_server, connection_string, restart_azurite
from tests.utils.streams import read_all as read
from tests.utils.streams import stream

BLOCK = 64 * 1024  # the smallest block size the config allows: multi-block uploads stay small and fast
CONN_ENV = "AZURE_STORAGE_CONNECTION_STRING"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


def make_store(server: StorageServer, conn: str | None = None, **settings: object) -> AzureBlobStore:
    # A fresh prefix per store keeps tests independent on the shared Azurite.
    destination = f"{server.destination}/{uuid.uuid4().hex[:12]}"
    config = AzureSettings(
        connection_string=SecretStr(conn or server.env[CONN_ENV]), block_size=BLOCK, max_retries=0, retry_backoff=0
    )
    options: dict[str, object] = {"download_chunk_size": BLOCK, "storage_timeout": 10.0, "azure": config, **settings}
    return AzureBlobStore(destination, Settings(**options))  # type: ignore[arg-type]


@pytest.fixture
async def store(azurite: StorageServer) -> AsyncIterator[AzureBlobStore]:
    store = make_store(azurite)
    await store.start()
    yield store
    await store.close()


@pytest.fixture(scope="module")
def blobs(azurite: StorageServer) -> Iterator[ContainerClient]:
    """A plain SDK client, to look beneath the store (block lists, stray blobs)."""
    with BlobServiceClient.from_connection_string(azurite.env[CONN_ENV]) as service:
        yield service.get_container_client(CONTAINER)


def p(raw: str) -> ArtifactPath:
    return canonical_path(raw)


# proxied reads and writes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [BLOCK, 5 * BLOCK + 123])
async def test_large_write_stages_blocks(blobs: ContainerClient, store: AzureBlobStore, size: int) -> None:
    data = os.urandom(size)
    await store.write(p("big.bin"), stream(data), None)
    assert await read(store, "big.bin") == data
    committed, _ = blobs.get_blob_client(store.client.blob_name(p("big.bin"))).get_block_list("committed")
    assert len(committed) == -(-size // BLOCK)
    assert {len(block.id) for block in committed} == {18}  # the same width as presigned part ids


async def test_abandoned_staged_blocks_do_not_block_a_multipart_upload(store: AzureBlobStore) -> None:
    await store.write(p("m.bin"), stream(b"old"), 3)

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(3 * BLOCK)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await store.write(p("m.bin"), broken(), None)
    # The staged blocks left uncommitted on the blob must not clash with the presigned ones (equal id widths).
    await multipart_upload(store, "m.bin", [b"new-", b"version"])
    assert await read(store, "m.bin") == b"new-version"


# list and delete ---------------------------------------------------------------------------------------------------
async def populate(store: AzureBlobStore, names: list[str]) -> None:
    for name in names:
        await store.write(p(name), stream(name.encode()), None)


async def test_list_skips_placeholders_and_sibling_prefixes(blobs: ContainerClient, store: AzureBlobStore) -> None:
    await populate(store, ["a.txt", "dir/b.txt", "dir/sub/c.txt"])
    blobs.upload_blob(store.client.blob_name(p("dir")) + "/", b"")  # a folder placeholder some tools create
    blobs.upload_blob(store.client.prefix + "-sibling/a.txt", b"")  # shares the prefix string, not the folder
    root = [(f.path, f.is_dir, f.file_size) for f in await store.list(p(""))]
    assert root == [("a.txt", False, 5), ("dir", True, None)]
    listed = [(f.path, f.is_dir, f.file_size) for f in await store.list(p("dir"))]
    assert listed == [("b.txt", False, 9), ("sub", True, None)]


async def test_delete_of_a_prefix_larger_than_one_round_of_deletes(store: AzureBlobStore) -> None:
    await populate(store, [f"dir/many/{i}.txt" for i in range(40)] + ["dir2/x"])  # 40 > DELETE_CONCURRENCY
    await store.delete(p("dir"))
    assert await store.list(p("dir")) == []
    assert [f.path for f in await store.list(p(""))] == ["dir2"]


async def test_presign_of_missing_path_or_directory(store: AzureBlobStore) -> None:
    await populate(store, ["dir/b.txt"])
    with pytest.raises(ArtifactNotFound):
        await store.presign_download(p("nope.txt"))
    with pytest.raises(IsADirectoryArtifact):
        await store.presign_download(p("dir"))


# presigned multipart -----------------------------------------------------------------------------------------------
async def put_parts(urls: list[str], parts: list[bytes]) -> list[httpx.Response]:
    # As the MLflow client does: a plain PUT of the bytes with the credential's (empty) headers, no auth.
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def put(url: str, data: bytes) -> httpx.Response:
            async with limit:
                return await client.put(url, content=data)

        return await asyncio.gather(*(put(url, data) for url, data in zip(urls, parts, strict=True)))


async def multipart_upload(store: AzureBlobStore, path: str, parts: list[bytes]) -> list[str]:
    created = await store.create_multipart_upload(p(path), len(parts))
    assert created.upload_id is None
    assert [c.part_number for c in created.credentials] == list(range(1, len(parts) + 1))
    assert all(c.headers == {} for c in created.credentials)
    urls = [c.url for c in created.credentials]
    for response in await put_parts(urls, parts):
        assert response.status_code == 201, response.text
    done = [CompletedPart(part_number=i, etag="", url=url) for i, url in enumerate(urls, start=1)]
    await store.complete_multipart_upload(p(path), None, done)
    return urls


async def test_multipart_round_trip(store: AzureBlobStore) -> None:
    parts = [os.urandom(100_000), os.urandom(100_000), os.urandom(1234)]
    name = "mpu/my model ?+&= 日本.bin"  # quoted in the URL, signed unquoted: both must agree
    urls = await multipart_upload(store, name, parts)
    assert await read(store, name) == b"".join(parts)
    done = [CompletedPart(i, "", url) for i, url in enumerate(urls, start=1)]
    await store.complete_multipart_upload(p(name), None, done)  # a retried complete still succeeds
    assert await read(store, name) == b"".join(parts)
    await store.write(p(name), stream(b"newer"), 5)  # replaces the committed blocks
    await store.complete_multipart_upload(p(name), None, done)  # blocks gone, blob there: success
    await store.abort_multipart_upload(p(name), None)  # nothing to abort: still fine


async def test_many_parts_keep_equal_length_ids(blobs: ContainerClient, store: AzureBlobStore) -> None:
    parts = [f"part-{i:03d};".encode() for i in range(1, 121)]
    urls = await multipart_upload(store, "many.bin", parts)
    ids = [parse_qs(urlsplit(url).query)["blockid"][0] for url in urls]
    assert len(set(ids)) == 120 and len({len(i) for i in ids}) == 1
    assert await read(store, "many.bin") == b"".join(parts)
    committed, _ = blobs.get_blob_client(store.client.blob_name(p("many.bin"))).get_block_list("committed")
    assert [b.id for b in committed] == [f"mlflow_block_{i:05d}" for i in range(1, 121)]


async def test_complete_rejects_mismatched_block_ids(store: AzureBlobStore) -> None:
    created = await store.create_multipart_upload(p("t.bin"), 2)
    urls = [c.url for c in created.credentials]
    for response in await put_parts(urls, [b"one", b"two"]):
        assert response.status_code == 201
    for bad in ([urls[0], urls[0]], [urls[1], urls[0]], [urls[0], urls[1].replace("blockid=", "x=")]):
        with pytest.raises(InvalidParameter) as err:
            await store.complete_multipart_upload(
                p("t.bin"), None, [CompletedPart(i, "", u) for i, u in enumerate(bad, 1)]
            )
        assert err.value.status_code == 400
    with pytest.raises(InvalidParameter):
        await store.complete_multipart_upload(p("t.bin"), None, [])
    with pytest.raises(ArtifactNotFound):
        await store.open_read(p("t.bin"))  # nothing was committed by the refused calls
    await store.complete_multipart_upload(p("t.bin"), None, [CompletedPart(i, "", u) for i, u in enumerate(urls, 1)])
    assert await read(store, "t.bin") == b"onetwo"


async def test_complete_unknown_upload_is_404(store: AzureBlobStore) -> None:
    created = await store.create_multipart_upload(p("ghost.bin"), 1)
    with pytest.raises(ResourceNotFound) as err:
        await store.complete_multipart_upload(p("ghost.bin"), None, [CompletedPart(1, "", created.credentials[0].url)])
    assert err.value.status_code == 404


async def test_tampered_sas_is_refused_by_storage(store: AzureBlobStore) -> None:
    created = await store.create_multipart_upload(p("x.bin"), 1)
    url = created.credentials[0].url
    query = parse_qs(urlsplit(url).query)
    sig = query["sig"][0]
    query["sig"] = [("B" if sig[0] == "A" else "A") + sig[1:]]  # always a different signature
    tampered = urlunsplit(urlsplit(url)._replace(query=urlencode(query, doseq=True)))
    assert (await put_parts([tampered], [b"data"]))[0].status_code == 403


# presigned download ------------------------------------------------------------------------------------------------
async def test_presigned_download(store: AzureBlobStore) -> None:
    data = os.urandom(50_000)
    await store.write(p('dl/日本 "x".bin'), stream(data), len(data))
    signed = await store.presign_download(p('dl/日本 "x".bin'))
    assert signed.file_size == len(data) and signed.headers == {}
    async with httpx.AsyncClient() as client:
        ranged = await client.get(signed.url, headers={"Range": "bytes=10-19999"})
        assert ranged.status_code == 206 and ranged.content == data[10:20000]
        assert ranged.headers["content-disposition"] == content_disposition('日本 "x".bin')
        write = await client.put(signed.url, content=b"evil", headers={"x-ms-blob-type": "BlockBlob"})
        assert write.status_code == 403
    assert await read(store, 'dl/日本 "x".bin') == data


# configuration and failures ----------------------------------------------------------------------------------------
async def test_registry_reads_connection_string_from_env(
    azurite: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, azurite.env[CONN_ENV])
    store = open_store(azurite.destination, Settings())
    assert isinstance(store, AzureBlobStore)
    assert supports_multipart_upload(store) and supports_presigned_download(store)
    await store.start()
    try:
        await store.check_ready()
    finally:
        await store.close()
    with pytest.raises(StoreConfigError):
        AzureBlobStore("wasbs://devstoreaccount1.blob.core.windows.net/x", Settings())


async def test_destination_without_prefix(azurite: StorageServer) -> None:
    config = AzureSettings(connection_string=SecretStr(azurite.env[CONN_ENV]), max_retries=0)
    store = AzureBlobStore(f"wasb://{CONTAINER}@{ACCOUNT}.blob.core.windows.net/", Settings(azure=config))
    await store.start()
    try:
        name = f"top-{uuid.uuid4().hex[:8]}.txt"
        await store.write(p(name), stream(b"top"), 3)
        assert store.client.blob_name(p(name)) == name
        root = {(f.path, f.is_dir) for f in await store.list(p(""))}
        assert {(name, False), ("prefix", True)} <= root
        await store.delete(p(name))
    finally:
        await store.close()


def test_capabilities_follow_settings_and_credentials(azurite: StorageServer) -> None:
    off = make_store(azurite, enable_multipart=False, enable_presigned_download=False)
    assert not supports_multipart_upload(off) and not supports_presigned_download(off)
    sas_only = f"BlobEndpoint={azurite.endpoint};SharedAccessSignature=sv=2020-01-01&sig=x"
    assert not supports_multipart_upload(make_store(azurite, conn=sas_only))


async def test_misconfiguration_is_reported(azurite: StorageServer) -> None:
    port = urlsplit(azurite.endpoint).port
    assert port is not None
    wrong_key = connection_string(port).replace("AccountKey=Eby8", "AccountKey=Zby8")
    for store in (make_store(azurite, conn=wrong_key), _other_container(azurite)):
        await store.start()
        try:
            with pytest.raises(StorageMisconfigured):
                await store.check_ready()
            with pytest.raises(StorageMisconfigured):
                await store.list(p(""))
        finally:
            await store.close()


def _other_container(server: StorageServer) -> AzureBlobStore:
    config = AzureSettings(connection_string=SecretStr(server.env[CONN_ENV]), max_retries=0)
    return AzureBlobStore(f"wasbs://missing@{ACCOUNT}.blob.core.windows.net", Settings(azure=config))


async def test_storage_down_then_recovers(tmp_path: Path) -> None:
    with azurite_server(tmp_path) as server:
        store = make_store(server)
        await store.start()
        try:
            await store.write(p("a.txt"), stream(b"before"), None)
            stop_process(server.process)
            with pytest.raises(StorageUnavailable) as err:
                await store.open_read(p("a.txt"))
            assert err.value.status_code == 503 and "Retry-After" in err.value.headers
            for size in (1, 3 * BLOCK):  # a single Put Blob, then staged blocks
                with pytest.raises(StorageUnavailable):
                    await store.write(p("b.txt"), stream(os.urandom(size)), None)
            with pytest.raises(StorageUnavailable):
                await store.check_ready()
            restart_azurite(server, tmp_path)  # in-memory: it comes back empty, with its container
            await store.check_ready()
            await store.write(p("a.txt"), stream(b"after"), None)
            assert await read(store, "a.txt") == b"after"
        finally:
            await store.close()


async def test_user_delegation_refused_falls_back_to_501(
    store: AzureBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Azurite grants no user delegation keys to shared-key clients: simulate an identity without that right.
    await store.write(p("f.bin"), stream(b"data"), 4)

    async def refused(*_: object) -> None:
        error = HttpResponseError(message="This request is not authorized to perform this operation.")
        error.status_code, error.error_code = 403, "AuthorizationPermissionMismatch"  # type: ignore[assignment]
        raise error

    monkeypatch.setattr(store.client, "account_key", None)  # as with a token credential: no key to sign with
    monkeypatch.setattr(store.client.service, "get_user_delegation_key", refused)
    with pytest.raises(MultipartUploadUnsupported):
        await store.create_multipart_upload(p("f.bin"), 2)
    with pytest.raises(PresignedDownloadUnsupported):
        await store.presign_download(p("f.bin"))


def _http_error(status: int, code: str) -> HttpResponseError:
    error = HttpResponseError(message=code)
    error.status_code, error.error_code = status, code  # type: ignore[assignment]
    return error


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        (ServiceRequestError("connection refused"), StorageUnavailable, 503),
        (ServiceResponseTimeoutError("read timed out"), StorageTimeout, 504),
        (_http_error(503, "ServerBusy"), StorageUnavailable, 503),
        (_http_error(500, "InternalError"), StorageUnavailable, 503),
        (_http_error(403, "AuthorizationFailure"), StorageMisconfigured, 502),
        (_http_error(400, "InvalidResourceName"), InvalidParameter, 400),
        (_http_error(400, "InvalidBlockList"), StorageUnavailable, 503),
        (_http_error(409, "LeaseIdMissing"), ArtifactProxyError, 500),
    ],
)
def test_error_mapping(error: AzureError, expected: type[ArtifactProxyError], status: int) -> None:
    mapped = map_error(error, "read", "a/b.txt")
    assert isinstance(mapped, expected)
    assert mapped.status_code == status
