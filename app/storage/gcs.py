"""Google Cloud Storage backend for `gs://bucket/optional/prefix`, on gcloud-aio-storage.

- One aiohttp session per process, opened in `start()`, shared by gcloud-aio's `Storage` and our streamed requests.
- Reads: object metadata, then ranged `alt=media` downloads pinned to the generation seen at open, so a concurrent
  overwrite never splices two versions into one response.
- Writes: one simple upload for bodies ending within the first block; otherwise a resumable session driven here
  (gcloud-aio's "resumable" upload sends the whole body in one request). The object appears only with the final
  chunk; any failure cancels the session.
- Multipart: neither gcloud-aio nor fake-gcs-server has XML-API multipart, so each part is a staging object under
  the reserved `.artifact.uploading.mpu/` segment, PUT by the client to a V4-signed URL and composed into the target
  at complete. Abandoned uploads leave staging objects behind: give the bucket a lifecycle rule on that prefix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import anyio.to_thread
from gcloud.aio.storage import Storage
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.downloads import content_disposition
from app.errors import (
    AlreadyExists,
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
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.base import (
    CompletedPart,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PartCredential,
    PresignedUrl,
    WriteOptions,
)
from app.storage.chunks import first_block
from app.storage.gcs_signing import PUBLIC_ENDPOINT, find_signing_key, sign_many, signed_url

logger = logging.getLogger("artifact_proxy.storage.gcs")

GRANULE = 256 * 1024  # resumable chunks must be multiples of this
MAX_READ_CHUNK = 8 * 1024 * 1024  # MLflow's 100 MiB download chunk would be held in memory per reader
COMPOSE_LIMIT = 32  # sources per compose call
CONCURRENCY = 16  # parallel deletes / composes within one operation
STAGING_DIR = f"{TEMP_PREFIX}mpu"
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
PART_NAME = re.compile(r"/part-(\d{5})$")
MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
UPLOAD_ID_KEY = "artifact-proxy-upload-id"  # custom metadata on a composed object, so a retried complete succeeds
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


class GCSReadHandle:
    def __init__(self, store: GCSStore, path: ArtifactPath, meta: ObjectMeta, generation: str | None) -> None:
        self.meta = meta
        self._store, self._path, self._generation = store, path, generation

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if end > start:
            async for chunk in self._store.stream_range(self._path, self._generation, start, end):
                yield chunk

    async def aclose(self) -> None:
        return None  # each range is its own request, closed when its iteration ends


class GCSStore:
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
            session=self._session, api_root=self.api_root, api_is_dev=self.emulated,
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

    def _staging(self, path: ArtifactPath, upload_id: str) -> str:
        # Bound to the key as well as the id: completing an upload under another path finds nothing.
        key_hash = hashlib.sha256(path.canonical.encode()).hexdigest()[:32]
        return f"{self._dir(ArtifactPath(''))}{STAGING_DIR}/{upload_id}/{key_hash}/"

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

    # read ----------------------------------------------------------------------------------------------------------
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

    async def open_read(self, path: ArtifactPath) -> GCSReadHandle:
        data = await self._stat(path)
        updated, generation = data.get("updated"), data.get("generation")
        meta = ObjectMeta(
            sha256=(data.get("metadata") or {}).get("sha256"),
            size=int(data.get("size", 0)),
            etag=f'"{generation}"' if generation else None,
            last_modified=datetime.fromisoformat(updated).timestamp() if updated else None,
        )
        return GCSReadHandle(self, path, meta, generation)

    async def stream_range(
        self, path: ArtifactPath, generation: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of one generation, yielded in chunks of at most about `_read_chunk`."""
        params = {"alt": "media", **({"generation": generation} if generation else {})}
        # Accept-Encoding: gzip turns off decompressive transcoding, so offsets match the stored size.
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"}
        with self._errors("reading an object", path):
            resp = await self._send(
                "GET", self._object_url(self._name(path)), (200, 206), params=params, headers=headers,
                timeout=self._data_timeout, auto_decompress=False,
            )
        # A 200 means the server ignored Range and sends the whole object: skip up to `start`.
        skip, remaining, buffer = (start if resp.status == 200 else 0), end - start, bytearray()
        try:
            with self._errors("reading an object", path):
                async for piece in resp.content.iter_any():
                    piece, skip = piece[skip:], max(0, skip - len(piece))
                    piece = piece[:remaining]
                    buffer += piece
                    remaining -= len(piece)
                    if len(buffer) >= self._read_chunk or (buffer and not remaining):
                        yield bytes(buffer)
                        buffer.clear()
                    if not remaining:
                        break
            if remaining:
                raise StorageUnavailable("Google Cloud Storage ended a download early")
        finally:
            if remaining:
                resp.close()  # an unread body: drop the connection rather than drain it
            else:
                resp.release()

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = WriteOptions()
    ) -> None:
        if path.is_root:
            raise InvalidParameter("Artifact path must include a filename (cannot end with '/').")
        block = self.config.upload_block
        head, ended = await first_block(chunks, block)
        # ifGenerationMatch=0: the object may not exist yet, checked atomically by GCS at finalisation.
        condition = {"ifGenerationMatch": "0"} if options.create_only else {}
        if ended:
            digest = options.digest()
            with self._errors("uploading an object", created=path):
                await self.storage.upload(
                    self.bucket, self._name(path), head, content_type=OCTET, force_resumable_upload=False,
                    parameters=condition or None, metadata={"metadata": {"sha256": digest}} if digest else None,
                    timeout=self._seconds,
                )
            return
        session_uri = await self._initiate(self._name(path), condition)
        buffer = bytearray(head)
        del head  # hold one copy of the first block, not two
        try:
            await self._upload_chunks(session_uri, buffer, chunks, block, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cancel_session(session_uri)
            raise

    async def _upload_chunks(
        self, session_uri: str, buffer: bytearray, chunks: AsyncIterator[bytes], block: int, path: ArtifactPath
    ) -> None:
        offset, more = 0, True
        while more:
            # Hold back the last full block until more data arrives: the final chunk is then never empty (no
            # `bytes */TOTAL` request) and we never need a status query, which finalizes uploads on fake-gcs-server.
            while len(buffer) > block:
                with memoryview(buffer) as view:
                    piece = bytes(view[:block])
                del buffer[:block]  # CPython trims a bytearray's front without copying the rest
                await self._put_chunk(session_uri, piece, offset, None)
                offset += block
                del piece  # not held while waiting for the client's next bytes
            try:
                buffer += await anext(chunks)
            except StopAsyncIteration:
                more = False
        await self._put_chunk(session_uri, buffer, offset, offset + len(buffer), created=path)

    async def _initiate(self, name: str, condition: dict[str, str]) -> str:
        with self._errors("starting an upload"):
            resp = await self._send(
                "POST", f"{self.api_root}/upload/storage/v1/b/{self.bucket}/o", (200, 201),
                params={"uploadType": "resumable", "name": name, **condition}, data=json.dumps({"name": name, "contentType": OCTET}),
                headers={"Content-Type": "application/json; charset=UTF-8"},
            )
            resp.release()
        if not resp.headers.get("Location"):
            raise StorageUnavailable("Google Cloud Storage started an upload without a session URI")
        return resp.headers["Location"]

    async def _put_chunk(
        self, session_uri: str, data: bytes | bytearray, offset: int, total: int | None,
        created: ArtifactPath | None = None,
    ) -> None:
        last = offset + len(data) - 1
        headers = {"Content-Range": f"bytes {offset}-{last}/{'*' if total is None else total}", "Content-Type": OCTET}
        with self._errors("uploading an object", created=created):
            ok = (308,) if total is None else (200, 201)
            resp = await self._send("PUT", session_uri, ok, data=data, headers=headers, timeout=self._data_timeout)
            resp.release()
        if total is None and resp.headers.get("Range", "").rpartition("-")[2] != str(last):
            # GCS may persist less than it was sent; the client's retry resends the file, we do not.
            raise StorageUnavailable("Google Cloud Storage accepted only part of an upload chunk")

    async def _cancel_session(self, session_uri: str) -> None:
        try:
            resp = await self._send("DELETE", session_uri, (204, 404, 410, 499))
            resp.release()
        except Exception as exc:  # an unfinished session expires on its own after a week, never becoming visible
            logger.warning("could not cancel a GCS upload session: %s", type(exc).__name__)

    # list ----------------------------------------------------------------------------------------------------------
    async def _pages(self, prefix: str, delimiter: str | None = None) -> AsyncIterator[dict[str, Any]]:
        params = {"prefix": prefix, **({"delimiter": delimiter} if delimiter else {})}
        while True:
            with self._errors("listing objects"):
                page = await self.storage.list_objects(self.bucket, params=dict(params), timeout=self._seconds)
            yield page
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix, infos = self._dir(path), []
        async for page in self._pages(prefix, "/"):
            for item in page.get("items", []):
                if base := _child(item["name"], prefix):
                    infos.append(FileInfo(base, False, int(item.get("size", 0))))
            for sub in page.get("prefixes", []):
                if base := _child(sub[:-1], prefix):
                    infos.append(FileInfo(base, True))
        return infos

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        await self._delete_objects([self._name(path)])
        await self._delete_prefix(self._dir(path))

    async def _delete_prefix(self, prefix: str) -> None:
        async for page in self._pages(prefix):
            await self._delete_objects([item["name"] for item in page.get("items", [])])

    async def _delete_objects(self, names: list[str]) -> None:
        async def one(name: str) -> None:
            with self._errors("deleting an object", missing_ok=True):  # already gone: delete is idempotent
                await self.storage.delete(self.bucket, name, timeout=self._seconds)

        await self._bounded(one(name) for name in names)

    # multipart -----------------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        if not self.multipart_enabled or self._key is None:
            raise MultipartUploadUnsupported()
        upload_id = secrets.token_hex(16)
        staging = self._staging(path, upload_id)
        names = [f"{staging}part-{i:05d}" for i in range(1, num_parts + 1)]
        ttl = self.settings.multipart_url_ttl
        # RSA signing costs about 1 ms per URL: one thread hop for the batch keeps the event loop free.
        base = self.signed_url_base
        urls = await anyio.to_thread.run_sync(sign_many, self._key, "PUT", self.bucket, names, ttl, base)
        return CreatedMultipartUpload(upload_id, [PartCredential(url, i, {}) for i, url in enumerate(urls, 1)])

    async def complete_multipart_upload(
        self, path: ArtifactPath, upload_id: str | None, parts: list[CompletedPart]
    ) -> None:
        if not upload_id or not UPLOAD_ID.match(upload_id):
            raise ResourceNotFound(f"No such multipart upload for '{path.canonical}'")
        numbers = [part.part_number for part in parts]
        if not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise InvalidParameter("'parts' must list part numbers 1..N in order, without gaps")
        staging = self._staging(path, upload_id)
        staged: dict[int, dict[str, Any]] = {}
        async for page in self._pages(staging):
            for item in page.get("items", []):
                if match := PART_NAME.search(item["name"]):
                    staged[int(match.group(1))] = item
        if not staged:
            if await self._completed_by(path, upload_id):
                return  # a retried complete: the first one finished
            raise ResourceNotFound(f"No such multipart upload for '{path.canonical}'")
        _check_parts(parts, staged)
        await self._compose_tree(self._name(path), [staged[n]["name"] for n in numbers], staging, upload_id)
        try:
            await self._delete_prefix(staging)
        except ArtifactProxyError:
            logger.warning("completed upload %s but could not remove its staging objects", upload_id)

    async def _completed_by(self, path: ArtifactPath, upload_id: str) -> bool:
        try:
            data = await self._stat(path)
        except (ArtifactNotFound, IsADirectoryArtifact):
            return False
        return bool((data.get("metadata") or {}).get(UPLOAD_ID_KEY) == upload_id)

    async def _compose_tree(self, target: str, sources: list[str], staging: str, upload_id: str) -> None:
        level = 0
        while len(sources) > COMPOSE_LIMIT:  # at most 32 sources per call: compose groups, then the groups
            level += 1
            groups = [sources[i : i + COMPOSE_LIMIT] for i in range(0, len(sources), COMPOSE_LIMIT)]
            names = [f"{staging}compose-{level}-{j:05d}" for j in range(len(groups))]
            await self._bounded(self._compose(n, g, {}) for n, g in zip(names, groups, strict=True))
            sources = names
        await self._compose(target, sources, {UPLOAD_ID_KEY: upload_id})

    async def _compose(self, target: str, sources: list[str], metadata: dict[str, str]) -> None:
        body = {
            "sourceObjects": [{"name": source} for source in sources],
            "destination": {"contentType": OCTET, "metadata": metadata},
        }
        with self._errors("composing an upload"):
            resp = await self._send(
                "POST", f"{self._object_url(target)}/compose", (200,), data=json.dumps(body),
                headers={"Content-Type": "application/json; charset=UTF-8"},
            )
            resp.release()

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        if upload_id and UPLOAD_ID.match(upload_id):  # anything else names no upload: nothing to abort
            await self._delete_prefix(self._staging(path, upload_id))

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        if not self.presigned_download_enabled or self._key is None:
            raise PresignedDownloadUnsupported()
        data = await self._stat(path)
        query = {"response-content-disposition": content_disposition(path.basename)}
        if data.get("generation"):
            query["generation"] = str(data["generation"])  # every ranged fetch then reads the same version
        url = signed_url(
            self._key, method="GET", bucket=self.bucket, object_name=self._name(path),
            expires_in=self.settings.presigned_download_ttl, base_url=self.signed_url_base, query=query,
        )
        return PresignedUrl(url, {}, int(data.get("size", 0)))


def _child(name: str, prefix: str) -> str | None:
    """The basename of a listed key one level below `prefix`; None for the placeholder, strays and staging."""
    base = name[len(prefix) :] if name.startswith(prefix) else ""
    return base if base and "/" not in base and not base.startswith(TEMP_PREFIX) else None


def _check_parts(parts: list[CompletedPart], staged: dict[int, dict[str, Any]]) -> None:
    missing = [part.part_number for part in parts if part.part_number not in staged]
    if missing:
        raise InvalidParameter(f"Multipart upload is missing parts {missing[:10]}: upload them before completing")
    for part in parts:
        # A part's XML-API ETag is its MD5: a mismatch means the part was replaced after the client sent it.
        match, md5 = MD5_ETAG.match(part.etag or ""), staged[part.part_number].get("md5Hash")
        if match and md5 and base64.b64decode(md5).hex() != match.group(1).lower():
            raise InvalidParameter(f"Part {part.part_number} changed after it was uploaded (ETag mismatch)")
