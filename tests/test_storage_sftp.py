"""SFTPStore against a real SFTP server (asyncssh's, in its own process): transfers, atomicity, login, outages."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import asyncssh
import httpx
import pytest

from app.errors import (
    AlreadyExists,
    StorageMisconfigured,
    StorageUnavailable,
)
from app.main import create_app
from app.paths import ArtifactPath, canonical_path
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import WriteOptions, supports_multipart_upload, supports_presigned_download
from app.storage.sftp import SFTPStore, parse_sftp_uri
from app.store_settings import SFTPSettings
from tests.servers import StorageServer, stop_process
from tests.servers.sftp import USER, make_files, restart_sftp, sftp_server
from tests.utils.streams import read_all, stream

BLOCK = 64 * 1024  # the smallest upload block the settings allow: multi-block uploads stay small
PASSWORD = "not-a-real-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with sftp_server(tmp_path_factory.mktemp("sftp"), password=PASSWORD) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the keys a test names may log in


def config_for(server: StorageServer, **overrides: object) -> SFTPSettings:
    env = server.env
    values: dict[str, object] = {
        "known_hosts": env["ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"],
        "identity_file": env["ARTIFACT_PROXY_SFTP_IDENTITY_FILE"],
        "ssh_config": env["ARTIFACT_PROXY_SFTP_CONFIG"],
        **overrides,
    }
    return SFTPSettings(**values)  # type: ignore[arg-type]


def make_store(server: StorageServer, destination: str | None = None, **overrides: object) -> SFTPStore:
    settings = Settings(
        upload_chunk_size=BLOCK, download_chunk_size=BLOCK, storage_timeout=10, sftp=config_for(server, **overrides)
    )  # type: ignore[call-arg]
    return SFTPStore(destination or f"{server.destination}/{uuid.uuid4().hex[:8]}", settings)


def root_dir(server: StorageServer, store: SFTPStore) -> Path:
    """The store's directory as the server's filesystem sees it (the server is chrooted to `sftp-root`)."""
    keys_dir = Path(server.env["ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"]).parent
    return keys_dir.parent / "sftp-root" / store.root.lstrip("/")


@pytest.fixture
async def store(server: StorageServer) -> AsyncIterator[SFTPStore]:
    sftp = make_store(server)
    await sftp.start()
    yield sftp
    await sftp.close()


def p(raw: str) -> ArtifactPath:
    return canonical_path(raw)


def test_uri_parsing() -> None:
    target = parse_sftp_uri("sftp://me:p%40ss@host:2222/srv/artifacts/")
    assert (target.username, target.password, target.host, target.port, target.root) == (
        "me",
        "p@ss",
        "host",
        2222,
        "/srv/artifacts",
    )
    assert parse_sftp_uri("sftp://host").root == "."
    assert parse_sftp_uri("sftp://host/~/mlruns").root == "mlruns"
    assert parse_sftp_uri("sftp://host/").root == "/"
    assert parse_sftp_uri("sftp://host/x").username is None  # then ~/.ssh/config's User, or the local user
    with pytest.raises(StoreConfigError):
        parse_sftp_uri("sftp:///no-host")


def test_missing_or_unreadable_key_files_fail_at_startup(server: StorageServer, tmp_path: Path) -> None:
    for field in ("identity_file", "known_hosts", "ssh_config"):
        with pytest.raises(StoreConfigError, match="does not exist"):
            make_store(server, **{field: str(tmp_path / "nope")})
    (tmp_path / "garbage").write_text("garbage\n")
    for field, name in (("identity_file", "IDENTITY_FILE"), ("known_hosts", "KNOWN_HOSTS")):
        with pytest.raises(StoreConfigError, match=f"ARTIFACT_PROXY_SFTP_{name}: cannot use"):
            make_store(server, **{field: str(tmp_path / "garbage")})
    encrypted = asyncssh.generate_private_key("ssh-ed25519")
    encrypted.write_private_key(tmp_path / "encrypted", "pkcs8-pem", passphrase="secret", cipher_name="aes256-cbc")
    with pytest.raises(StoreConfigError, match="Passphrase must be specified"):  # such keys belong in the agent
        make_store(server, identity_file=str(tmp_path / "encrypted"))


async def test_servers_without_openssh_extensions(store: SFTPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unsupported(*args: object) -> None:
        raise asyncssh.SFTPOpUnsupported("not supported")

    for name in ("posix_rename", "link"):  # what a plain SFTP v3 server lacks
        monkeypatch.setattr(asyncssh.SFTPClient, name, unsupported)
    monkeypatch.setattr(asyncssh.SFTPClientFile, "fsync", unsupported)
    await store.write(p("x.txt"), stream(b"one"), None)
    await store.write(p("x.txt"), stream(b"two"), None)  # replaced in two steps
    assert await read_all(store, "x.txt") == b"two"
    once = WriteOptions(create_only=True)
    await store.write(p("y.txt"), stream(b"first"), None, once)  # the standard rename, which never replaces
    with pytest.raises(AlreadyExists):
        await store.write(p("y.txt"), stream(b"second"), None, once)
    assert await read_all(store, "y.txt") == b"first"
    assert [f.path for f in await store.list(p(""))] == ["x.txt", "y.txt"]


async def test_list_follows_links_and_hides_stale_temp_files(server: StorageServer, store: SFTPStore) -> None:
    await store.write(p("a/one.txt"), stream(b"1"), None)
    await store.write(p("a/sub/two.txt"), stream(b"22"), None)
    base = root_dir(server, store)
    (base / "a" / ".artifact.uploading.stale").write_bytes(b"partial")  # left by a crashed process
    (base / "a" / "link-to-sub").symlink_to("sub")
    (base / "a" / "dangling").symlink_to("nowhere")
    listed = [(f.path, f.is_dir, f.file_size) for f in await store.list(p("a"))]
    assert listed == [("link-to-sub", True, None), ("one.txt", False, 1), ("sub", True, None)]


async def test_delete_of_a_link_keeps_its_target(server: StorageServer, store: SFTPStore) -> None:
    await store.write(p("d/tree/x/y.txt"), stream(b"y"), None)
    (root_dir(server, store) / "d" / "link").symlink_to("tree")
    await store.delete(p("d/link"))  # the link goes, never what it points to
    assert [f.path for f in await store.list(p("d"))] == ["tree"]
    assert await read_all(store, "d/tree/x/y.txt") == b"y"


async def test_capabilities_answer_501_and_server_info_false(store: SFTPStore) -> None:
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
        presigned = await client.get("/api/2.0/mlflow-artifacts/presigned/d/m.bin")
        assert presigned.status_code == 501
        assert presigned.json()["message"].startswith("Multipart download is not supported")


async def test_password_in_uri_works_and_is_warned_about(
    server: StorageServer, caplog: pytest.LogCaptureFixture
) -> None:
    destination = server.destination.replace(f"{USER}@", f"{USER}:{PASSWORD}@") + "/pw"
    with caplog.at_level(logging.WARNING, "artifact_proxy.storage.sftp"):
        sftp = make_store(server, destination, identity_file=None)
    assert "carries a password" in caplog.text and PASSWORD not in caplog.text
    await sftp.start()
    try:
        await sftp.write(p("x.txt"), stream(b"via password"), None)
        assert await read_all(sftp, "x.txt") == b"via password"
    finally:
        await sftp.close()


async def test_ssh_config_host_entry(server: StorageServer, tmp_path: Path) -> None:
    port = server.endpoint.rsplit(":", 1)[1]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host artifacts-box\n  HostName 127.0.0.1\n  Port {port}\n  User {USER}\n"
        f"  IdentityFile {server.env['ARTIFACT_PROXY_SFTP_IDENTITY_FILE']}\n"
    )
    sftp = make_store(server, "sftp://artifacts-box/artifacts/via-config", identity_file=None, ssh_config=str(config))
    await sftp.start()
    try:
        await sftp.write(p("c.txt"), stream(b"config"), None)
        assert await read_all(sftp, "c.txt") == b"config"
    finally:
        await sftp.close()


async def test_untrusted_host_key_and_wrong_key_are_misconfiguration(server: StorageServer, tmp_path: Path) -> None:
    other = make_files(tmp_path / "other", int(server.endpoint.rsplit(":", 1)[1]))
    for overrides in ({"known_hosts": str(other.known_hosts)}, {"identity_file": str(other.client_key)}):
        sftp = make_store(server, **overrides)
        with pytest.raises(StorageMisconfigured) as caught:
            await sftp.start()
        assert caught.value.status_code == 502
        await sftp.close()
    relaxed = make_store(server, known_hosts="none")  # host-key checking off: connects to any server
    await relaxed.start()
    await relaxed.check_ready()
    await relaxed.close()


async def test_outage_then_recovery_without_restarting_the_store(tmp_path: Path) -> None:
    with sftp_server(tmp_path) as flaky:
        sftp = make_store(flaky)
        await sftp.start()
        try:
            await sftp.write(p("f.txt"), stream(b"before"), None)
            stop_process(flaky.process)
            for attempt in (
                sftp.check_ready(),
                sftp.open_read(p("f.txt")),
                sftp.list(p("")),
                sftp.write(p("g.txt"), stream(b"g"), None),
                sftp.delete(p("f.txt")),
            ):
                with pytest.raises(StorageUnavailable) as caught:
                    await attempt
                assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
            restart_sftp(flaky)
            await sftp.check_ready()  # reconnected on use
            assert await read_all(sftp, "f.txt") == b"before"
        finally:
            await sftp.close()


async def test_start_with_the_server_down_serves_503_until_it_is_up(tmp_path: Path) -> None:
    with sftp_server(tmp_path) as late:
        stop_process(late.process)
        sftp = make_store(late)
        await sftp.start()  # logs a warning; the service still starts
        try:
            results = await asyncio.gather(*(sftp.list(p("")) for _ in range(5)), return_exceptions=True)
            assert all(isinstance(result, StorageUnavailable) for result in results)
            assert sftp._connection._attempts == 2  # start's, then one shared by the five queued requests
            restart_sftp(late)
            assert await sftp.list(p("")) == []
        finally:
            await sftp.close()


async def test_a_connection_lost_mid_operation_is_retried_on_a_new_one(store: SFTPStore) -> None:
    await store.write(p("r.txt"), stream(b"r"), None)
    seen: list[asyncssh.SFTPClient] = []

    async def flaky(client: asyncssh.SFTPClient) -> bytes:
        seen.append(client)
        if len(seen) == 1:
            raise asyncssh.SFTPConnectionLost("connection lost")
        async with client.open(store.root + "/r.txt", "rb") as file:
            return cast(bytes, await file.read())

    assert await store._connection.run("reading", "r.txt", flaky) == b"r"
    assert len(seen) == 2 and seen[0] is not seen[1]  # the lost connection was dropped and replaced
    seen.clear()
    with pytest.raises(StorageUnavailable):  # an operation that must not run twice is not retried
        await store._connection.run("publishing", "r.txt", flaky, retry=False)
    assert len(seen) == 1
