"""The GCS connection of a store: one aiohttp session per process (opened in `start`), shared by gcloud-aio's
`Storage` and the raw requests gcloud-aio cannot make (ranged and resumable transfers, compose); object names;
authenticated requests; and the object primitives that reads, writes and multipart uploads share (metadata, paged
listing, bulk delete).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage

from app.errors import ArtifactNotFound, IsADirectoryArtifact, StorageMisconfigured
from app.paths import ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.gcs.config import PUBLIC_ENDPOINT
from app.storage.gcs.errors import storage_errors
from app.store_settings import GCSSettings

logger = logging.getLogger("artifact_proxy.storage.gcs")

CONCURRENCY = 16  # parallel deletes / composes / signBlob calls within one operation
T = TypeVar("T")
OCTET = "application/octet-stream"


class GCSClient:
    """The session and `Storage` of one `gs://` destination, and the object each artifact path names in it."""

    def __init__(self, bucket: str, prefix: str, settings: Settings, config: GCSSettings) -> None:
        self.bucket, self.prefix, self.settings, self.config = bucket, prefix, settings, config
        self.emulated = config.api_root is not None
        self.api_root = config.api_root or PUBLIC_ENDPOINT
        seconds = settings.storage_timeout
        self.timeout = aiohttp.ClientTimeout(total=seconds)
        # Data transfers get no total deadline (objects may be huge), only per-socket-operation ones.
        self.transfer_timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
        self.sdk_timeout = max(1, math.ceil(seconds))  # gcloud-aio takes whole seconds
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.transfer_timeout)
        # api_root is always explicit: gcloud-aio would otherwise read STORAGE_EMULATOR_HOST at import time.
        self._storage = Storage(
            session=self._session,  # type: ignore[arg-type]  # gcloud-aio types its own Session wrapper
            api_root=self.api_root,
            api_is_dev=self.emulated,
            service_file=self.config.credentials_file,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()  # gcloud-aio never closes a session it was given
        self._session = self._storage = None

    async def check_ready(self) -> None:
        with self.errors("checking the bucket"):
            await self.storage.get_bucket_metadata(self.bucket, timeout=self.sdk_timeout)

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
    def object_name(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def dir_prefix(self, path: ArtifactPath) -> str:
        name = self.object_name(path)
        return f"{name}/" if name else ""

    def object_url(self, name: str) -> str:
        return f"{self.api_root}/storage/v1/b/{self.bucket}/o/{quote(name, safe='')}"

    # errors and raw requests ---------------------------------------------------------------------------------------
    def errors(
        self, what: str, path: ArtifactPath | None = None, missing_ok: bool = False, created: ArtifactPath | None = None
    ) -> AbstractContextManager[None]:
        """`storage_errors` for this bucket: see there."""
        return storage_errors(self.bucket, what, path, missing_ok, created)

    async def _auth(self) -> dict[str, str]:
        if self.emulated:
            return {}
        try:
            token = await self.storage.token.get()
        except Exception as exc:  # any failure here is a credentials problem for an operator
            logger.error("could not obtain a Google access token: %s", type(exc).__name__)
            raise StorageMisconfigured("Could not obtain Google credentials for Cloud Storage; see the log") from exc
        return {"Authorization": f"Bearer {token}"}

    async def send(
        self, method: str, url: str, ok: Iterable[int], *, timeout: aiohttp.ClientTimeout | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        """One request on the shared session; a status outside `ok` raises ClientResponseError (see `errors`)."""
        headers = {**kw.pop("headers", {}), **(await self._auth())}
        timeout = timeout or self.timeout
        resp = await self.session.request(method, url, headers=headers, allow_redirects=False, timeout=timeout, **kw)
        if resp.status not in set(ok):
            body = await resp.text(errors="replace")
            resp.release()
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=body)
        return resp

    # objects -------------------------------------------------------------------------------------------------------
    async def stat(self, path: EntryPath) -> dict[str, Any]:
        """The object's metadata resource; a missing object with objects below it is a directory."""
        try:
            with self.errors("reading object metadata", path):
                return await self.storage.download_metadata(
                    self.bucket, self.object_name(path), timeout=self.sdk_timeout
                )
        except ArtifactNotFound:
            with self.errors("listing objects"):
                params = {"prefix": self.dir_prefix(path), "maxResults": "1"}
                page = await self.storage.list_objects(self.bucket, params=params, timeout=self.sdk_timeout)
            if page.get("items") or page.get("prefixes"):
                raise IsADirectoryArtifact(path.canonical) from None
            raise

    async def pages(self, prefix: str, delimiter: str | None = None) -> AsyncIterator[dict[str, Any]]:
        params = {"prefix": prefix, **({"delimiter": delimiter} if delimiter else {})}
        while True:
            with self.errors("listing objects"):
                page = await self.storage.list_objects(self.bucket, params=dict(params), timeout=self.sdk_timeout)
            yield page
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    async def delete_prefix(self, prefix: str) -> None:
        async for page in self.pages(prefix):
            await self.delete_objects([item["name"] for item in page.get("items", [])])

    async def delete_objects(self, names: list[str]) -> None:
        async def one(name: str) -> None:
            with self.errors("deleting an object", missing_ok=True):  # already gone: delete is idempotent
                await self.storage.delete(self.bucket, name, timeout=self.sdk_timeout)

        await bounded(one(name) for name in names)


async def bounded(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """The jobs' results in order, at most CONCURRENCY running at once. Workers take a job only when free, so from a
    generator none is even created once one has failed (and a 10,000-part batch is not 10,000 tasks). The first
    failure is raised alone, the others cancelled: callers and the error handlers expect one mapped error."""
    pending = enumerate(jobs)
    results: dict[int, T] = {}

    async def worker() -> None:
        for index, job in pending:  # shared by the workers: next() runs between awaits, never inside one
            results[index] = await job

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENCY):
                group.create_task(worker())
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [results[index] for index in range(len(results))]
