"""The plumbing GCSStore (`app.storage.gcs`) is built on: its settings, the shared aiohttp session and gcloud-aio
`Storage`, object names, error mapping, authenticated raw requests, and the object primitives (metadata, paged
listing, bulk delete) that reads, writes and multipart uploads share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from gcloud.aio.storage import Storage
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    IsADirectoryArtifact,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.gcs_signing import PUBLIC_ENDPOINT, find_signing_key

logger = logging.getLogger("artifact_proxy.storage.gcs")

GRANULE = 256 * 1024  # resumable chunks must be multiples of this
MAX_READ_CHUNK = 8 * 1024 * 1024  # MLflow's 100 MiB download chunk would be held in memory per reader
CONCURRENCY = 16  # parallel deletes / composes within one operation
OCTET = "application/octet-stream"


class GCSConfig(BaseSettings):
    """GCS-only settings. An API root means an emulator, reached anonymously (as gcloud-aio does)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    api_root: str | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_API_ROOT", "STORAGE_EMULATOR_HOST")
    )
    # Where signed URLs point (clients must reach it): default the API root, else storage.googleapis.com.
    signed_url_base: str | None = Field(None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_SIGNED_URL_BASE"))
    credentials_file: str | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS")
    )
    upload_chunk_size: int = Field(8 * 1024 * 1024, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_UPLOAD_CHUNK_SIZE"))
    download_chunk_size: int | None = Field(None, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_DOWNLOAD_CHUNK_SIZE"))

    @field_validator("api_root", "signed_url_base")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        value = value.strip().rstrip("/")
        return value if "://" in value else f"http://{value}"  # STORAGE_EMULATOR_HOST is often bare host:port

    @property
    def upload_block(self) -> int:
        return -(-self.upload_chunk_size // GRANULE) * GRANULE  # rounded up to a multiple of 256 KiB


def parse_gs_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise StoreConfigError(f"Expected gs://bucket[/prefix], got {uri!r}")
    return parts.netloc, "/".join(s for s in parts.path.split("/") if s)


class GCSClient:
    """Base of GCSStore: the session, names, requests and object primitives every operation uses."""

    def __init__(self, uri: str, settings: Settings, config: GCSConfig | None = None) -> None:
        self.bucket, self.prefix = parse_gs_uri(uri)
        self.settings, self.config = settings, config or GCSConfig()
        self.emulated = self.config.api_root is not None
        self.api_root = self.config.api_root or PUBLIC_ENDPOINT
        self.signed_url_base = self.config.signed_url_base or self.api_root
        try:
            self._key = find_signing_key(self.config.credentials_file)
        except (OSError, ValueError) as exc:
            raise StoreConfigError(f"Cannot use the Google credentials ({type(exc).__name__}): {exc}") from exc
        self.multipart_enabled = settings.enable_multipart and self._key is not None
        self.presigned_download_enabled = settings.enable_presigned_download and self._key is not None
        self._read_chunk = min(self.config.download_chunk_size or settings.download_chunk_size, MAX_READ_CHUNK)
        seconds = settings.storage_timeout
        self._timeout = aiohttp.ClientTimeout(total=seconds)
        # Data transfers get no total deadline (objects may be huge), only per-socket-operation ones.
        self._data_timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
        self._seconds = max(1, math.ceil(seconds))  # gcloud-aio takes whole seconds
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._data_timeout)
        # api_root is always explicit: gcloud-aio would otherwise read STORAGE_EMULATOR_HOST at import time.
        self._storage = Storage(
            session=self._session,  # type: ignore[arg-type]  # gcloud-aio types its own Session wrapper
            api_root=self.api_root,
            api_is_dev=self.emulated,
            service_file=self.config.credentials_file,
        )
        signer = f"as {self._key.client_email}" if self._key else "unavailable (no service-account key)"
        logger.info("GCS store gs://%s/%s via %s; URL signing %s", self.bucket, self.prefix, self.api_root, signer)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()  # gcloud-aio never closes a session it was given
        self._session = self._storage = None

    async def check_ready(self) -> None:
        with self._errors("checking the bucket"):
            await self.storage.get_bucket_metadata(self.bucket, timeout=self._seconds)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("GCSStore.start() was not called")
        return self._storage

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("GCSStore.start() was not called")
        return self._session

    # names ---------------------------------------------------------------------------------------------------------
    def _name(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def _dir(self, path: ArtifactPath) -> str:
        name = self._name(path)
        return f"{name}/" if name else ""

    def _object_url(self, name: str) -> str:
        return f"{self.api_root}/storage/v1/b/{self.bucket}/o/{quote(name, safe='')}"

    # errors and raw requests ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(
        self, what: str, path: ArtifactPath | None = None, missing_ok: bool = False, created: ArtifactPath | None = None
    ) -> Iterator[None]:
        """Map transport and HTTP failures to service errors. A 404 names `path`, or is ignored with `missing_ok`;
        a 412 on a write to `created` means a create-only write found the object there."""
        try:
            yield
        except aiohttp.ClientResponseError as exc:
            if exc.status == 412 and created is not None:
                raise AlreadyExists(created.canonical) from exc
            if exc.status == 404 and "bucket does not exist" not in exc.message.lower():
                if missing_ok:
                    return
                if path is not None:
                    raise ArtifactNotFound(path.canonical) from exc
            raise self._http_error(exc.status, exc.message[:500], what) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            logger.warning("GCS timed out while %s", what)
            raise StorageTimeout(f"Google Cloud Storage did not answer in time while {what}") from exc
        except aiohttp.ClientError as exc:
            logger.warning("GCS unreachable while %s: %s", what, type(exc).__name__)
            raise StorageUnavailable(f"Google Cloud Storage is unreachable ({type(exc).__name__})") from exc

    def _http_error(self, status: int, detail: str, what: str) -> ArtifactProxyError:
        logger.warning("GCS answered %s while %s: %s", status, what, detail)
        if status in (401, 403):
            return StorageMisconfigured(
                f"Google Cloud Storage refused access to bucket '{self.bucket}' (HTTP {status}): check the "
                "credentials (GOOGLE_APPLICATION_CREDENTIALS) and that they may read and write objects there"
            )
        if status == 404:
            return StorageMisconfigured(f"Google Cloud Storage bucket '{self.bucket}' does not exist or is not visible")
        if status == 408:
            return StorageTimeout(f"Google Cloud Storage timed out while {what}")
        if status == 429 or status >= 500:
            return StorageUnavailable(f"Google Cloud Storage is unavailable or throttling (HTTP {status})")
        return ArtifactProxyError(f"Google Cloud Storage rejected a request while {what} (HTTP {status})")

    async def _auth(self) -> dict[str, str]:
        if self.emulated:
            return {}
        try:
            token = await self.storage.token.get()
        except Exception as exc:  # any failure here is a credentials problem for an operator
            logger.error("could not obtain a Google access token: %s", type(exc).__name__)
            raise StorageMisconfigured("Could not obtain Google credentials for Cloud Storage; see the log") from exc
        return {"Authorization": f"Bearer {token}"}

    async def _send(
        self, method: str, url: str, ok: Iterable[int], *, timeout: aiohttp.ClientTimeout | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        """One request on the shared session; a status outside `ok` raises ClientResponseError (see `_errors`)."""
        headers = {**kw.pop("headers", {}), **(await self._auth())}
        timeout = timeout or self._timeout
        resp = await self.session.request(method, url, headers=headers, allow_redirects=False, timeout=timeout, **kw)
        if resp.status not in set(ok):
            body = await resp.text(errors="replace")
            resp.release()
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=body)
        return resp

    async def _bounded(self, jobs: Iterable[Awaitable[None]]) -> None:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def run(job: Awaitable[None]) -> None:
            async with limit:
                await job

        try:
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    group.create_task(run(job))
        except ExceptionGroup as errors:  # callers and the error handlers expect one mapped error
            raise errors.exceptions[0] from None

    # objects -------------------------------------------------------------------------------------------------------
    async def _stat(self, path: ArtifactPath) -> dict[str, Any]:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        try:
            with self._errors("reading object metadata", path):
                return await self.storage.download_metadata(self.bucket, self._name(path), timeout=self._seconds)
        except ArtifactNotFound:
            with self._errors("listing objects"):
                params = {"prefix": self._dir(path), "maxResults": "1"}
                page = await self.storage.list_objects(self.bucket, params=params, timeout=self._seconds)
            if page.get("items") or page.get("prefixes"):
                raise IsADirectoryArtifact(path.canonical) from None
            raise

    async def _pages(self, prefix: str, delimiter: str | None = None) -> AsyncIterator[dict[str, Any]]:
        params = {"prefix": prefix, **({"delimiter": delimiter} if delimiter else {})}
        while True:
            with self._errors("listing objects"):
                page = await self.storage.list_objects(self.bucket, params=dict(params), timeout=self._seconds)
            yield page
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    async def _delete_prefix(self, prefix: str) -> None:
        async for page in self._pages(prefix):
            await self._delete_objects([item["name"] for item in page.get("items", [])])

    async def _delete_objects(self, names: list[str]) -> None:
        async def one(name: str) -> None:
            with self._errors("deleting an object", missing_ok=True):  # already gone: delete is idempotent
                await self.storage.delete(self.bucket, name, timeout=self._seconds)

        await self._bounded(one(name) for name in names)
