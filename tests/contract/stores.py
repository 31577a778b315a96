"""Started stores of every backend for the store-level contract (tests/contract/test_store.py), with what each can
promise beyond the core (its capabilities) and a look beneath its API at what it really stored.

Every store gets small blocks (at or near the least each backend accepts), so multi-block writes stay cheap, and a
fresh directory or key prefix of the session's shared server, so tests never see each other.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import SecretStr

from app.paths import ArtifactPath
from app.settings import Settings
from app.storage.base import ArtifactStore
from tests.servers import StorageServer

KiB, MiB = 1024, 1024 * 1024
UPLOAD_CHUNK = 64 * KiB  # the smallest the settings allow: local and SFTP write blocks of it
DOWNLOAD_CHUNK = 256 * KiB  # bytes per read request or hop: small enough for several per body, few enough for speed

# What a read through a handle opened before an overwrite gets:
# - "snapshot": the version it opened (an open file keeps its bytes after a rename over it);
# - "checked": the bytes are fetched pinned to the opened version (ETag, generation), so they are the opened version
#   or, once that version is gone, a StorageUnavailable ("changed while it was being read").
ReadIsolation = Literal["snapshot", "checked"]


def settings(**branches: Any) -> Settings:
    """The contract's service settings, with a backend's branch (`s3=...`) where the test server needs one."""
    return Settings(upload_chunk_size=UPLOAD_CHUNK, download_chunk_size=DOWNLOAD_CHUNK, storage_timeout=30, **branches)


# The two ways a body is written: within the first block (one request, or one small file write), or streamed
# block by block (multipart, resumable, staged blocks, a temp file filled chunk by chunk).
WritePath = Literal["single", "streamed"]
BOTH: frozenset[WritePath] = frozenset({"single", "streamed"})


@dataclass(frozen=True)
class Backend:
    name: str
    block: int  # bytes buffered per upload block or part: a body past it takes the streamed path
    create_only: frozenset[WritePath]  # where a create-only write onto an existing object is refused
    atomic_create_only: frozenset[WritePath]  # where concurrent create-only writers get exactly one winner
    read_isolation: ReadIsolation
    hierarchical: bool  # a real directory tree: no file below a file, no file over a directory
    rounds: int  # overwrites in the overwrite-under-readers test: scaled to the cost of one request
    make: Callable[[StorageServer, str, pytest.MonkeyPatch], ArtifactStore]  # (server, fresh prefix, env) -> store
    # Every name stored under a directory, hidden ones included (temp files, pending multipart uploads).
    raw_names: Callable[[Any, str], Awaitable[list[str]]]

    def __repr__(self) -> str:
        return self.name


def fresh_prefix() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


# local ---------------------------------------------------------------------------------------------------------------
def _local(server: StorageServer, prefix: str, _: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.local import LocalStore

    return LocalStore(os.path.join(server.destination, prefix), settings())


async def _local_names(store: Any, path: str) -> list[str]:
    try:
        return sorted(os.listdir(os.path.join(store.root, path)))
    except FileNotFoundError:
        return []


# S3 (SeaweedFS) ------------------------------------------------------------------------------------------------------
@functools.cache
def _botocore_session() -> Any:
    from aiobotocore.session import get_session

    return get_session()


def _s3(server: StorageServer, prefix: str, env: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.s3 import S3Store
    from app.storage.s3 import client as s3_client
    from app.store_settings import S3Settings

    for name, value in server.env.items():  # credentials are only ever read from the environment, at start()
        env.setenv(name, value)
    # A new session loads botocore's S3 model again, most of a store's start-up: one serves every test's client.
    env.setattr(s3_client, "get_session", _botocore_session)
    return S3Store(f"{server.destination}/{prefix}", settings(s3=S3Settings(part_size=5 * MiB)))


async def _s3_names(store: Any, path: str) -> list[str]:
    prefix = store.client.dir_prefix(ArtifactPath(path))
    keys = await store.client.sdk.list_objects_v2(Bucket=store.client.bucket, Prefix=prefix)
    uploads = await store.client.sdk.list_multipart_uploads(Bucket=store.client.bucket, Prefix=prefix)
    names = [obj["Key"][len(prefix) :] for obj in keys.get("Contents", [])]
    return sorted(names + [f"{u['Key'][len(prefix) :]} (pending upload)" for u in uploads.get("Uploads", [])])


# GCS (fake-gcs-server) -----------------------------------------------------------------------------------------------
GCS_BLOCK = 256 * KiB  # resumable uploads go in multiples of 256 KiB


def _gcs(server: StorageServer, prefix: str, _: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.gcs import GCSStore
    from app.store_settings import GCSSettings

    credentials = server.env["GOOGLE_APPLICATION_CREDENTIALS"]
    config = GCSSettings(api_root=server.endpoint, credentials_file=credentials, upload_chunk_size=GCS_BLOCK)
    return GCSStore(f"{server.destination}/{prefix}", settings(gcs=config))


async def _gcs_names(store: Any, path: str) -> list[str]:
    prefix = store.client.dir_prefix(ArtifactPath(path))
    page = await store.client.storage.list_objects(store.client.bucket, params={"prefix": prefix})
    return sorted(item["name"][len(prefix) :] for item in page.get("items", []))


# Azure (Azurite) -----------------------------------------------------------------------------------------------------
AZURE_BLOCK = 256 * KiB  # Azurite takes milliseconds per request: smaller blocks would make its tests slow


def _azure(server: StorageServer, prefix: str, _: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.azure import AzureBlobStore
    from app.store_settings import AzureSettings

    conn = SecretStr(server.env["AZURE_STORAGE_CONNECTION_STRING"])
    config = AzureSettings(connection_string=conn, block_size=AZURE_BLOCK, max_retries=0, retry_backoff=0)
    return AzureBlobStore(f"{server.destination}/{prefix}", settings(azure=config))


async def _azure_names(store: Any, path: str) -> list[str]:
    # Committed blobs only: blocks staged by an upload that never committed are not blobs, and Azure drops them.
    name = store.client.blob_name(ArtifactPath(path))
    prefix = f"{name}/" if name else ""
    blobs = store.client.container.list_blobs(name_starts_with=prefix)
    return sorted([blob.name[len(prefix) :] async for blob in blobs])


# SFTP ----------------------------------------------------------------------------------------------------------------
def _sftp(server: StorageServer, prefix: str, env: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.sftp import SFTPStore
    from app.store_settings import SFTPSettings

    env.delenv("SSH_AUTH_SOCK", raising=False)  # log in with the server's key only, never a developer's agent
    config = SFTPSettings(
        known_hosts=server.env["ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"],
        identity_file=server.env["ARTIFACT_PROXY_SFTP_IDENTITY_FILE"],
        ssh_config=server.env["ARTIFACT_PROXY_SFTP_CONFIG"],
    )  # type: ignore[call-arg]
    return SFTPStore(f"{server.destination}/{prefix}", settings(sftp=config))


async def _sftp_names(store: Any, path: str) -> list[str]:
    import asyncssh

    from app.storage.remote_paths import remote_path

    async def op(sftp: asyncssh.SFTPClient) -> list[str]:
        try:
            return sorted(str(name) for name in await sftp.listdir(remote_path(store.root, ArtifactPath(path))))
        except asyncssh.SFTPNoSuchFile:
            return []

    return [name for name in await store._connection.run("listing", path, op) if name not in (".", "..")]


# FTP -----------------------------------------------------------------------------------------------------------------
def _ftp(server: StorageServer, prefix: str, _: pytest.MonkeyPatch) -> ArtifactStore:
    from app.storage.ftp import FTPStore

    return FTPStore(f"{server.destination}/{prefix}", settings())


async def _ftp_names(store: Any, path: str) -> list[str]:
    from app.storage.remote_paths import remote_path

    async def op(lease: Any) -> list[str]:
        remote = remote_path(store.root, ArtifactPath(path))
        return sorted(name for name, _ in await store._commands.entries(lease, remote) or [])

    return list(await store._connection.run("listing", path, op))


BACKENDS = [
    # Its race is between threads of this process, so it takes many rounds to meet; each costs microseconds.
    Backend("local", UPLOAD_CHUNK, BOTH, BOTH, "snapshot", True, 1000, _local, _local_names),
    # SeaweedFS (4.48) checks If-None-Match on CompleteMultipartUpload but not atomically: 3 to 5 of 8 concurrent
    # creators won in some runs. S3 itself settles it atomically; here only the single PUT is shown atomic.
    Backend("s3", 5 * MiB, BOTH, frozenset({"single"}), "checked", False, 40, _s3, _s3_names),
    # fake-gcs-server ignores ifGenerationMatch on uploads (a second one with ifGenerationMatch=0 answers 200), so
    # it cannot show create-only at all: that is covered against real GCS only.
    Backend("gcs", GCS_BLOCK, frozenset(), frozenset(), "checked", False, 100, _gcs, _gcs_names),
    Backend("azure", AZURE_BLOCK, BOTH, BOTH, "checked", False, 40, _azure, _azure_names),
    Backend("sftp", UPLOAD_CHUNK, BOTH, BOTH, "snapshot", True, 100, _sftp, _sftp_names),
    # FTP cannot rename only-if-absent: create-only is a check just before the rename, which a racer can beat.
    # Reads are by name at each RETR: the store checks the file is still the opened version before the last block.
    Backend("ftp", UPLOAD_CHUNK, BOTH, frozenset(), "checked", True, 100, _ftp, _ftp_names),
]


def backends(**capabilities: object) -> list[Any]:
    """pytest params for the backends having every given capability (e.g. `hierarchical=True`)."""
    chosen = [b for b in BACKENDS if all(getattr(b, key) == value for key, value in capabilities.items())]
    return [pytest.param(backend, id=backend.name) for backend in chosen]


def backends_writing(capability: str) -> list[Any]:
    """pytest params (backend, write path) for each write path on which a backend has `capability`."""
    return [
        pytest.param(backend, path, id=f"{path}-{backend.name}")
        for backend in BACKENDS
        for path in ("single", "streamed")
        if path in getattr(backend, capability)
    ]
