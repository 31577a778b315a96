"""Expired presigned URLs are refused by the service itself (local: self-signed download and part URLs) and by the
stores that check signatures (SeaweedFS, Azurite). fake-gcs-server checks none, so GCS is left to the real service.

Nothing here waits for a URL to expire: each expired URL is signed by the real signer with its clock an hour in the
past. Two controls show the refusal is the expiry and nothing else: a URL signed with the clock left alone is served,
and so is one signed an hour ago whose TTL outlasts the hour.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import botocore.auth
import httpx
import pytest

from app.paths import canonical_path
from app.signing import UrlSigner
from app.storage.azure import AzureBlobStore
from app.storage.azure import sas as azure_sas
from app.storage.base import PresignedUrl
from app.storage.s3 import S3Store
from tests.contract.stores import BACKENDS, fresh_prefix
from tests.servers import StorageServer
from tests.utils.proxy import running_proxy
from tests.utils.streams import stream

AN_HOUR = timedelta(hours=1)
TTL, LONG_TTL = 300, 2 * 3600  # LONG_TTL outlasts AN_HOUR
CONTENT = b"short-lived"
SAS_TIME = "%Y-%m-%dT%H:%M:%SZ"  # how a SAS writes its times (`se`: expiry)
EXPIRED = {"error_code": "PERMISSION_DENIED", "message": "This URL has expired"}


def with_query(url: str, query: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=query))


# local: the service signs and checks its own URLs ------------------------------------------------------------------
def test_expired_local_urls_are_refused(tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    env = {"ARTIFACT_PROXY_SIGNING_SECRET": secret}
    now, an_hour_ago = UrlSigner(secret), UrlSigner(secret, clock=lambda: time.time() - AN_HOUR.total_seconds())
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        httpx.put(proxy.artifact_url("e/f.txt"), content=CONTENT).raise_for_status()
        signed = httpx.get(f"{proxy.api}/presigned/e/f.txt").json()
        assert httpx.get(signed["url"]).content == CONTENT
        download = ("download", (canonical_path("e/f.txt").canonical,))
        assert httpx.get(with_query(signed["url"], now.query(*download, TTL))).content == CONTENT
        assert httpx.get(with_query(signed["url"], an_hour_ago.query(*download, LONG_TTL))).content == CONTENT
        expired = httpx.get(with_query(signed["url"], an_hour_ago.query(*download, TTL)))
        assert expired.status_code == 403, expired.text
        assert expired.json() == EXPIRED

        created = httpx.post(f"{proxy.api}/mpu/create/d", json={"path": "m.bin", "num_parts": 1}).json()
        part_url, upload_id = created["credentials"][0]["url"], created["upload_id"]
        part = ("part", (upload_id, "1"))
        late = httpx.put(with_query(part_url, an_hour_ago.query(*part, TTL)), content=b"late")
        assert late.status_code == 403, late.text
        assert late.json() == EXPIRED
        fresh = httpx.put(with_query(part_url, an_hour_ago.query(*part, LONG_TTL)), content=b"in time")
        assert fresh.status_code == 200, fresh.text
        parts = [{"part_number": 1, "etag": fresh.headers["etag"]}]
        done = httpx.post(f"{proxy.api}/mpu/complete/d", json={"path": "m.bin", "upload_id": upload_id, "parts": parts})
        assert done.status_code == 200, done.text
        assert httpx.get(proxy.artifact_url("d/m.bin")).content == b"in time"


@asynccontextmanager
async def contract_store(
    name: str, servers: Callable[[str], StorageServer], env: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """A started store of the contract suite's, on its shared session server, under a fresh prefix."""
    spec = next(backend for backend in BACKENDS if backend.name == name)
    store = spec.make(servers(name), fresh_prefix(), env)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


# S3 (SeaweedFS checks SigV4 and its expiry) ---------------------------------------------------------------------
@pytest.fixture
async def s3(
    storage_server_for: Callable[[str], StorageServer], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[S3Store]:
    async with contract_store("s3", storage_server_for, monkeypatch) as store:
        yield store


async def test_expired_s3_presigned_download_is_refused(s3: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    path = canonical_path("e/f.txt")
    await s3.write(path, stream(CONTENT), None)
    s3.settings.presigned_download_ttl = TTL
    fresh = await s3.presign_download(path)
    signed_at = datetime.now(UTC) - AN_HOUR

    def an_hour_ago(remove_tzinfo: bool = True) -> datetime:  # botocore's SigV4 signers take "now" from here
        return signed_at.replace(tzinfo=None) if remove_tzinfo else signed_at

    real_presign = s3.client.signer.generate_presigned_url

    async def presigned_an_hour_ago(*args: Any, **kwargs: Any) -> Any:
        # Only the URL's signing is moved: the HEAD before it must keep a valid date, or S3 refuses it.
        with monkeypatch.context() as clock:
            clock.setattr(botocore.auth, "get_current_datetime", an_hour_ago)
            return await real_presign(*args, **kwargs)

    monkeypatch.setattr(s3.client.signer, "generate_presigned_url", presigned_an_hour_ago)
    stale = await s3.presign_download(path)
    assert parse_qs(urlsplit(stale.url).query)["X-Amz-Date"] == [signed_at.strftime("%Y%m%dT%H%M%SZ")]
    s3.settings.presigned_download_ttl = LONG_TTL
    lasting = await s3.presign_download(path)
    await assert_only_the_stale_url_is_refused(fresh, lasting, stale)


async def assert_only_the_stale_url_is_refused(fresh: PresignedUrl, lasting: PresignedUrl, stale: PresignedUrl) -> None:
    """`fresh` (signed now) and `lasting` (signed an hour ago, TTL over an hour) are served; `stale` (signed an hour
    ago, TTL minutes) is refused."""
    async with httpx.AsyncClient(timeout=60) as http:
        for url in (fresh, lasting):
            served = await http.get(url.url, headers=url.headers)
            assert (served.status_code, served.content) == (200, CONTENT), served.text
        expired = await http.get(stale.url, headers=stale.headers)
    assert expired.status_code == 403, expired.text
    assert CONTENT not in expired.content


# Azure (Azurite checks SAS signatures and their expiry) ------------------------------------------------------------
@pytest.fixture
async def azure(
    storage_server_for: Callable[[str], StorageServer], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AzureBlobStore]:
    async with contract_store("azure", storage_server_for, monkeypatch) as store:
        yield store


async def test_expired_azure_sas_download_is_refused(azure: AzureBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    path = canonical_path("e/f.txt")
    await azure.write(path, stream(CONTENT), None)
    azure.settings.presigned_download_ttl = TTL
    fresh = await azure.presign_download(path)
    signed_at = datetime.now(UTC) - AN_HOUR

    class AnHourAgo(datetime):  # the SAS signer's clock: it takes "now" from its module's `datetime`
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return signed_at

    monkeypatch.setattr(azure_sas, "datetime", AnHourAgo)
    stale = await azure.presign_download(path)
    assert parse_qs(urlsplit(stale.url).query)["se"] == [(signed_at + timedelta(seconds=TTL)).strftime(SAS_TIME)]
    azure.settings.presigned_download_ttl = LONG_TTL
    lasting = await azure.presign_download(path)
    await assert_only_the_stale_url_is_refused(fresh, lasting, stale)
