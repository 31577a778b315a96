"""FTPStore against a real FTP server (pyftpdlib, in its own process): transfers, pooling, FTPS, LIST, outages."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioftp
import httpx
import pytest
import uvloop
from pydantic import SecretStr

from app.errors import (
    AlreadyExists,
    IsADirectoryArtifact,
    StorageMisconfigured,
    StorageUnavailable,
)
from app.main import create_app
from app.paths import ArtifactPath, canonical_path
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import WriteOptions, supports_multipart_upload, supports_presigned_download
from app.storage.ftp import FTPStore, parse_ftp_uri
from app.store_settings import FTPSettings
from tests.servers import StorageServer, stop_process
from tests.servers.ftp import PASSWORD, USER, ftp_server, start_ftp
from tests.utils.streams import read_all, stream

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftp")


@pytest.fixture(scope="module")
def server(server_dir: Path) -> Iterator[StorageServer]:
    with ftp_server(server_dir) as running:
        yield running


def make_store(server: StorageServer, destination: str | None = None, **config: object) -> FTPStore:
    values: dict[str, object] = {"ca_file": server.env.get("ARTIFACT_PROXY_FTP_CA_FILE"), **config}
    ftp = FTPSettings(**values)  # type: ignore[arg-type]
    settings = Settings(download_chunk_size=CHUNK, storage_timeout=10, ftp=ftp)  # type: ignore[call-arg]
    return FTPStore(destination or f"{server.destination}/{uuid.uuid4().hex[:8]}", settings)


@pytest.fixture
async def store(server: StorageServer) -> AsyncIterator[FTPStore]:
    ftp = make_store(server)
    await ftp.start()
    yield ftp
    await ftp.close()


def p(raw: str) -> ArtifactPath:
    return canonical_path(raw)


def test_uri_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    target = parse_ftp_uri("ftp://me:p%40ss@host:2121/srv/artifacts/", FTPSettings())  # type: ignore[call-arg]
    assert (target.user, target.password, target.host, target.port, target.root, target.tls) == (
        "me",
        "p@ss",
        "host",
        2121,
        "/srv/artifacts",
        False,
    )
    anonymous = parse_ftp_uri("ftp://host", FTPSettings())  # type: ignore[call-arg]
    assert (anonymous.user, anonymous.port, anonymous.root) == ("anonymous", 21, ".")
    assert parse_ftp_uri("ftps://u@host/~/runs", FTPSettings()).tls  # type: ignore[call-arg]
    assert parse_ftp_uri("ftps://u@host/~/runs", FTPSettings()).root == "runs"  # type: ignore[call-arg]
    monkeypatch.setenv("ARTIFACT_PROXY_FTP_PASSWORD", "from-env")
    monkeypatch.setenv("ARTIFACT_PROXY_FTP_TLS", "true")
    from_env = parse_ftp_uri("ftp://u@host/x", FTPSettings())  # type: ignore[call-arg]
    assert (from_env.password, from_env.tls) == ("from-env", True)
    with pytest.raises(StoreConfigError):
        parse_ftp_uri("ftp:///no-host", FTPSettings())  # type: ignore[call-arg]


async def test_ranges_and_early_close_keep_the_pool_usable(store: FTPStore) -> None:
    data = os.urandom(40 * CHUNK)  # large enough that the server is still sending when a range ends
    await store.write(p("r.bin"), stream(data), len(data))
    for start, end in [(0, 10), (CHUNK - 5, CHUNK + 5), (len(data) - 1, len(data)), (7, 7)]:
        assert await read_all(store, "r.bin", start, end) == data[start:end]
    assert len(store._connection._pool._idle) == 1  # an aborted RETR (426) still leaves a clean, reusable session
    handle = await store.open_read(p("r.bin"))
    pieces = handle.iter_range(0, len(data))
    assert await anext(pieces)
    await handle.aclose()  # the client went away mid-download: that connection is closed, not pooled
    assert await read_all(store, "r.bin", 5, 15) == data[5:15]


async def test_etag_changes_with_each_upload(store: FTPStore) -> None:
    tags = []
    for body in (b"same size 1", b"same size 2"):
        await store.write(p("e.txt"), stream(body), None)
        handle = await store.open_read(p("e.txt"))
        tags.append(handle.meta.etag)
        await handle.aclose()
    assert tags[0] != tags[1]  # MLSx `unique` differs even within one second


async def test_server_refusing_to_rename_onto_a_file(store: FTPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    original = aioftp.Client.rename

    async def strict_rename(client: aioftp.Client, source: str, destination: str) -> None:
        if await client.exists(destination):  # as IIS does
            raise aioftp.StatusCodeError(aioftp.Code("2xx"), aioftp.Code("550"), ["Cannot create a file: it exists."])
        await original(client, source, destination)

    monkeypatch.setattr(aioftp.Client, "rename", strict_rename)
    await store.write(p("x.txt"), stream(b"one"), None)
    await store.write(p("x.txt"), stream(b"two"), None)  # replaced in two steps
    assert await read_all(store, "x.txt") == b"two"
    assert [f.path for f in await store.list(p(""))] == ["x.txt"]


async def test_pool_bounds_connections_under_concurrency(server: StorageServer) -> None:
    ftp = make_store(server, connections=2)
    await ftp.start()
    try:
        bodies = {f"c{i}.bin": os.urandom(CHUNK + i) for i in range(6)}
        await asyncio.gather(*(ftp.write(p(name), stream(body), None) for name, body in bodies.items()))
        read = await asyncio.gather(*(read_all(ftp, name) for name in bodies))
        assert read == list(bodies.values())
        assert len(ftp._connection._pool._idle) <= 2
    finally:
        await ftp.close()


async def test_server_without_mlsd_is_served_through_list(tmp_path: Path) -> None:
    with ftp_server(tmp_path, mlsx=False) as plain:
        ftp = make_store(plain)
        await ftp.start()
        try:
            await ftp.write(p("a/b.txt"), stream(b"bee"), None)
            await ftp.write(p("a/c/d.txt"), stream(b"dee"), None)
            assert ftp._commands._mlsx is False
            assert [(f.path, f.is_dir, f.file_size) for f in await ftp.list(p("a"))] == [
                ("b.txt", False, 3),
                ("c", True, None),
            ]
            assert await ftp.list(p("a/b.txt")) == [] and await ftp.list(p("nope")) == []
            assert await read_all(ftp, "a/b.txt") == b"bee"
            with pytest.raises(IsADirectoryArtifact):
                await ftp.open_read(p("a/c"))
            with pytest.raises(AlreadyExists):
                await ftp.write(p("a/b.txt"), stream(b"x"), None, WriteOptions(create_only=True))
            await ftp.delete(p("a"))
            assert await ftp.list(p("")) == []
        finally:
            await ftp.close()


async def test_ftps(tmp_path: Path) -> None:
    with ftp_server(tmp_path, tls=True) as secure:
        ftp = make_store(secure)  # the server refuses plain control and data channels
        await ftp.start()
        try:
            await ftp.write(p("s/secret.bin"), stream(b"over tls" * 1000), None)
            assert await read_all(ftp, "s/secret.bin", 8, 16) == b"over tls"
            assert [f.path for f in await ftp.list(p("s"))] == ["secret.bin"]
        finally:
            await ftp.close()
        untrusted = make_store(secure, ca_file=None)
        with pytest.raises(StorageMisconfigured, match="certificate is not trusted"):
            await untrusted.start()


def test_ftps_downloads_are_complete_on_uvloop(tmp_path: Path) -> None:
    """uvicorn serves on uvloop, whose TLS layer dropped the end of every FTPS download read slowly (uvloop#661)."""
    data = os.urandom(1_500_000)

    async def slow_reader(secure: StorageServer) -> bytes:
        ftp = make_store(secure)
        await ftp.start()
        try:
            await ftp.write(p("big.bin"), stream(data), None)
            handle = await ftp.open_read(p("big.bin"))
            pieces = handle.iter_range(0, len(data))
            received = bytearray(await anext(pieces))
            await asyncio.sleep(0.3)  # a slow client: the data connection's reader is paused when the server ends
            async for piece in pieces:
                received += piece
            await handle.aclose()
            return bytes(received)
        finally:
            await ftp.close()

    with ftp_server(tmp_path, tls=True) as secure:
        assert uvloop.run(slow_reader(secure)) == data


async def test_credentials(server: StorageServer, caplog: pytest.LogCaptureFixture) -> None:
    port = server.endpoint.rsplit(":", 1)[1]
    with caplog.at_level(logging.WARNING, "artifact_proxy.storage.ftp"):
        make_store(server)
    assert "carries a password" in caplog.text and PASSWORD not in caplog.text
    from_env = make_store(server, f"ftp://{USER}@127.0.0.1:{port}/artifacts/env", password=SecretStr(PASSWORD))
    await from_env.start()
    await from_env.check_ready()
    await from_env.close()
    wrong = make_store(server, f"ftp://{USER}:wrong@127.0.0.1:{port}/artifacts")
    with pytest.raises(StorageMisconfigured, match="refused the login") as caught:
        await wrong.start()
    assert caught.value.status_code == 502


async def test_capabilities_answer_501_and_server_info_false(store: FTPStore) -> None:
    assert not supports_multipart_upload(store) and not supports_presigned_download(store)
    app = create_app(Settings())  # type: ignore[call-arg]
    app.state.store = store  # the lifespan (not run by ASGITransport) would open it from the registry
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        info = (await client.get("/api/3.0/mlflow/server-info")).json()
        assert (info["multipart_uploads_enabled"], info["multipart_downloads_enabled"]) == (False, False)
        created = await client.post("/api/2.0/mlflow-artifacts/mpu/create/d", json={"path": "m.bin", "num_parts": 2})
        assert created.status_code == 501
        assert created.json() == {
            "error_code": "NOT_IMPLEMENTED",
            "message": "Multipart upload is not supported for the current artifact repository",
        }
        assert (await client.get("/api/2.0/mlflow-artifacts/presigned/d/m.bin")).status_code == 501


async def test_outage_then_recovery_without_restarting_the_store(tmp_path: Path) -> None:
    with ftp_server(tmp_path) as flaky:
        port = int(flaky.endpoint.rsplit(":", 1)[1])
        ftp = make_store(flaky)
        await ftp.start()
        try:
            await ftp.write(p("f.txt"), stream(b"before"), None)
            stop_process(flaky.process)
            for attempt in (
                ftp.check_ready(),
                ftp.open_read(p("f.txt")),
                ftp.list(p("")),
                ftp.write(p("g.txt"), stream(b"g"), None),
                ftp.delete(p("f.txt")),
            ):
                with pytest.raises(StorageUnavailable) as caught:
                    await attempt
                assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
            flaky.process = start_ftp(tmp_path / "ftp-root", port, tmp_path)
            await ftp.check_ready()
            assert await read_all(ftp, "f.txt") == b"before"
            # A restart behind pooled connections: the first command finds one dead, and the retry uses a new one.
            await asyncio.gather(*(read_all(ftp, "f.txt") for _ in range(3)))
            assert len(ftp._connection._pool._idle) == 3
            stop_process(flaky.process)
            flaky.process = start_ftp(tmp_path / "ftp-root", port, tmp_path)
            assert [f.path for f in await ftp.list(p(""))] == ["f.txt"]
        finally:
            await ftp.close()


async def test_start_with_the_server_down_serves_503_until_it_is_up(tmp_path: Path) -> None:
    with ftp_server(tmp_path) as late:
        stop_process(late.process)
        ftp = make_store(late)
        await ftp.start()  # logs a warning; the service still starts
        try:
            with pytest.raises(StorageUnavailable):
                await ftp.list(p(""))
            late.process = start_ftp(tmp_path / "ftp-root", int(late.endpoint.rsplit(":", 1)[1]), tmp_path)
            assert await ftp.list(p("")) == []
        finally:
            await ftp.close()


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("452", "Insufficient storage space"),
        ("552", "Exceeded storage allocation"),
        ("426", "No space left on device; transfer aborted."),  # pyftpdlib, ProFTPD
        ("451", "Disk quota exceeded"),
    ],
)
def test_a_full_disk_reply_is_507(code: str, text: str) -> None:
    from app.errors import InsufficientStorage
    from app.storage.ftp.errors import map_error

    reply = aioftp.StatusCodeError(aioftp.Code("2xx"), aioftp.Code(code), [f" {text}"])
    mapped = map_error(reply, "writing", "m/model.bin")
    assert isinstance(mapped, InsufficientStorage) and mapped.status_code == 507


def test_other_transient_replies_stay_503() -> None:
    from app.storage.ftp.errors import map_error

    reply = aioftp.StatusCodeError(aioftp.Code("2xx"), aioftp.Code("426"), [" Connection closed; transfer aborted."])
    assert map_error(reply, "writing", "m/model.bin").status_code == 503
