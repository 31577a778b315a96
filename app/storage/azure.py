"""Azure Blob Storage backend: `wasbs://<container>@<account>.blob.core.windows.net[/<prefix>]` (and `wasb://`).

One BlobServiceClient per process (built in `start`). Proxied uploads stream into staged blocks and become visible
only at Put Block List; presigned multipart hands out Put Block URLs carrying a blob SAS and commits the block ids it
derives itself; presigned downloads are read-only SAS URLs. Credentials, first found wins:
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCESS_KEY (account from the URI), DefaultAzureCredential.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobBlock, BlobSasPermissions, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobPrefix, BlobServiceClient, ContainerClient, ExponentialRetry
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.downloads import content_disposition
from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    InvalidPath,
    IsADirectoryArtifact,
    MultipartUploadUnsupported,
    PayloadTooLarge,
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
from app.storage.chunks import first_block, rechunk

logger = logging.getLogger("artifact_proxy.storage.azure")
# The SDK logs every request and response at INFO; give it our own logger, quiet unless an operator lowers its level.
http_logger = logging.getLogger("artifact_proxy.storage.azure.http")
if http_logger.level == logging.NOTSET:
    http_logger.setLevel(logging.WARNING)

MiB = 1024 * 1024
MAX_BLOCKS = 50_000  # Azure's limit of committed blocks per blob
DELETE_CONCURRENCY = 16
# Azure refuses Put Block when the blob already has uncommitted blocks whose ids differ in length (Azurite too), so
# every id we ever stage on any blob is 18 characters: presigned parts and proxied uploads may meet on one blob.
PART_ID = "mlflow_block_{:05d}"
PROXY_ID = "w{token}{index:05d}"  # token: 12 hex digits, random per upload so concurrent PUTs never share blocks
BAD_NAME_CODES = {"InvalidResourceName", "InvalidUri", "OutOfRangeInput"}


class AzureConfig(BaseSettings):
    """Azure credentials and tuning from the environment; secrets stay `SecretStr` so they never reach a log."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    connection_string: SecretStr | None = Field(None, validation_alias="AZURE_STORAGE_CONNECTION_STRING")
    access_key: SecretStr | None = Field(None, validation_alias="AZURE_STORAGE_ACCESS_KEY")
    block_size: int = Field(8 * MiB, ge=64 * 1024, le=4000 * MiB, validation_alias="ARTIFACT_PROXY_AZURE_BLOCK_SIZE")
    # The SDK's default retries wait over a minute, eating the client's 120 s answer budget: fail fast to a 503.
    max_retries: int = Field(3, ge=0, le=10, validation_alias="ARTIFACT_PROXY_AZURE_MAX_RETRIES")
    retry_backoff: float = Field(0.5, ge=0, validation_alias="ARTIFACT_PROXY_AZURE_RETRY_BACKOFF")
    api_version: str | None = Field(None, validation_alias="ARTIFACT_PROXY_AZURE_API_VERSION")


def parse_wasbs(uri: str) -> tuple[str, str, str, str]:
    """`wasbs://container@account.host/prefix` -> (container, account, host, prefix without outer slashes)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("wasbs", "wasb") or not parts.username or not parts.hostname:
        raise StoreConfigError(f"Use wasbs://<container>@<account>.blob.core.windows.net[/<prefix>], not {uri!r}")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return parts.username, parts.hostname.split(".", 1)[0], parts.hostname, prefix


def _has_account_key(connection_string: str) -> bool:
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    return bool(fields.get("AccountKey"))


def _b64(block_id: str) -> str:
    return base64.b64encode(block_id.encode()).decode()


def part_block_id(part_number: int) -> str:
    if not 1 <= part_number <= MAX_BLOCKS:
        raise InvalidParameter(f"Invalid part_number {part_number}: Azure allows parts 1..{MAX_BLOCKS}")
    return PART_ID.format(part_number)


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)  # a StorageErrorCode enum, or a plain string from the headers
    return str(getattr(code, "value", code) or "")


def map_error(exc: AzureError, op: str, where: str) -> ArtifactProxyError:
    """Translate an SDK error into the service's hierarchy; details go to the log, never credentials."""
    code = _code(exc)
    status = getattr(exc, "status_code", None)
    logger.warning("azure %s %r failed: %s status=%s code=%s", op, where, type(exc).__name__, status, code or "-")
    if op == "write" and (code in ("BlobAlreadyExists", "ConditionNotMet") or isinstance(exc, ResourceExistsError)):
        return AlreadyExists(where)  # a create-only write found the blob already there
    if code == "ContainerNotFound":
        return StorageMisconfigured("The Azure container in the artifacts destination does not exist; create it")
    if isinstance(exc, ResourceNotFoundError):
        return ArtifactNotFound(where)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return StorageMisconfigured(
            "Azure Blob Storage refused the proxy's credentials: check AZURE_STORAGE_CONNECTION_STRING, "
            "AZURE_STORAGE_ACCESS_KEY or the identity's role on the container (Storage Blob Data Contributor)"
        )
    if isinstance(exc, ServiceResponseTimeoutError):
        return StorageTimeout("Azure Blob Storage did not answer in time")
    if isinstance(exc, ResourceModifiedError):
        return StorageUnavailable("The artifact changed while it was being read; retry")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StorageUnavailable("Azure Blob Storage is unreachable")
    if code == "ServerBusy" or (status is not None and (status >= 500 or status == 429)):
        return StorageUnavailable("Azure Blob Storage is busy or unavailable")
    if code == "InvalidBlockList":  # a concurrent upload's commit discarded our staged blocks: a retry will do
        return StorageUnavailable("A concurrent upload of the same artifact replaced this one; retry")
    if code in BAD_NAME_CODES:
        return InvalidPath()
    logger.error("unexpected azure error during %s %r: %s", op, where, exc)
    return ArtifactProxyError(f"Azure Blob Storage error during {op}")


@contextmanager
def storage_errors(op: str, where: str) -> Iterator[None]:
    try:
        yield
    except AzureError as exc:
        raise map_error(exc, op, where) from exc


class AzureReadHandle:
    def __init__(self, blob: BlobClient, meta: ObjectMeta, where: str) -> None:
        self.meta = meta
        self._blob = blob
        self._where = where

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        with storage_errors("read", self._where):
            # If-Match: the bytes must belong to the version whose size and ETag the response headers announced.
            if_match = MatchConditions.IfNotModified
            stream = await self._blob.download_blob(start, end - start, etag=self.meta.etag, match_condition=if_match)
            async for chunk in stream.chunks():
                yield chunk

    async def aclose(self) -> None:
        return None  # each chunk is a complete request: nothing stays open between chunks


def _digest_metadata(options: WriteOptions) -> dict[str, str] | None:
    digest = options.digest()
    return {"sha256": digest} if digest else None


def _write_condition(options: WriteOptions) -> dict[str, Any]:
    if options.create_only:
        return {"match_condition": MatchConditions.IfMissing}  # If-None-Match: * (the SDK supplies the "*")
    return {}


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head.pop()  # popped, not kept: the first block must not stay alive beside the re-chunking buffer
    async for chunk in rest:
        yield chunk


class AzureBlobStore:
    """Artifacts as block blobs under `<prefix>/` in one container."""

    def __init__(self, uri: str, settings: Settings, config: AzureConfig | None = None) -> None:
        self.settings = settings
        self.config = config or AzureConfig()
        self.container_name, self.account, self.host, self.prefix = parse_wasbs(uri)
        conn = self.config.connection_string
        # Signing needs an account key or a token credential (user delegation); a SAS-only connection string has none.
        can_sign = conn is None or _has_account_key(conn.get_secret_value())
        self.multipart_enabled = settings.enable_multipart and can_sign
        self.presigned_download_enabled = settings.enable_presigned_download and can_sign
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        self._credential: Any = None
        self._account_key: str | None = None
        self._delegation: tuple[UserDelegationKey, datetime] | None = None

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        backoff, tries = self.config.retry_backoff, self.config.max_retries
        # Backoffs are typed as int seconds, but any number works. Waits: backoff + 2**n per retry.
        retry = ExponentialRetry(initial_backoff=backoff, increment_base=2, retry_total=tries)  # type: ignore[arg-type]
        options: dict[str, Any] = {
            "retry_policy": retry,
            "logger": http_logger,
            "connection_timeout": min(self.settings.storage_timeout, 30.0),
            "read_timeout": self.settings.storage_timeout,
            # Bound memory: the SDK never buffers more than one block (upload) or one chunk (download).
            "max_single_put_size": self.config.block_size,
            "max_block_size": self.config.block_size,
            "max_single_get_size": self.settings.download_chunk_size,
            "max_chunk_get_size": self.settings.download_chunk_size,
        }
        if self.config.api_version:
            options["api_version"] = self.config.api_version
        self._service = self._build_service(options)
        self._account_key = getattr(self._service.credential, "account_key", None)
        if self._service.account_name != self.account:
            names = (self._service.account_name, self.account)
            logger.warning("the connection string names account %r, the destination %r: using the former", *names)
        self._container = self._service.get_container_client(self.container_name)

    def _build_service(self, options: dict[str, Any]) -> BlobServiceClient:
        if self.config.connection_string is not None:
            return BlobServiceClient.from_connection_string(self.config.connection_string.get_secret_value(), **options)
        url = f"https://{self.host}"  # wasb:// too: never downgrade artifact traffic to plain HTTP
        if self.config.access_key is not None:
            key = {"account_name": self.account, "account_key": self.config.access_key.get_secret_value()}
            return BlobServiceClient(url, credential=key, **options)
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError as exc:
            raise StoreConfigError(
                "No Azure credentials: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCESS_KEY, or "
                "pip install 'artifact-proxy[azure-identity]' to use DefaultAzureCredential"
            ) from exc
        self._credential = DefaultAzureCredential()
        return BlobServiceClient(url, credential=self._credential, **options)

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = self._container = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

    async def check_ready(self) -> None:
        with storage_errors("check", self.container_name):
            await self._client().get_container_properties()

    # names ---------------------------------------------------------------------------------------------------------
    def _client(self) -> ContainerClient:
        if self._container is None:
            raise StorageUnavailable("The Azure store is not started")
        return self._container

    def _name(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def _blob(self, path: ArtifactPath) -> BlobClient:
        return self._client().get_blob_client(self._name(path))

    async def _has_children(self, name: str) -> bool:
        async for _ in self._client().list_blobs(name_starts_with=name + "/", results_per_page=1):
            return True
        return False

    # read ----------------------------------------------------------------------------------------------------------
    async def _meta(self, path: ArtifactPath) -> ObjectMeta:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        with storage_errors("read", path.canonical):
            try:
                props = await self._blob(path).get_blob_properties()
            except ResourceNotFoundError as exc:
                if _code(exc) != "ContainerNotFound" and await self._has_children(self._name(path)):
                    raise IsADirectoryArtifact(path.canonical) from exc
                raise
        etag = props.etag if props.etag.startswith('"') else f'"{props.etag}"'
        digest = (props.metadata or {}).get("sha256")
        return ObjectMeta(size=props.size, etag=etag, last_modified=props.last_modified.timestamp(), sha256=digest)

    async def open_read(self, path: ArtifactPath) -> AzureReadHandle:
        meta = await self._meta(path)
        return AzureReadHandle(self._blob(path), meta, path.canonical)

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = WriteOptions()
    ) -> None:
        if path.is_root:
            raise InvalidParameter("Artifact path must include a filename (cannot end with '/').")
        block_size = self.config.block_size
        if size is not None and size > block_size * MAX_BLOCKS:
            raise PayloadTooLarge(f"Artifacts larger than {block_size * MAX_BLOCKS} bytes exceed Azure's block limit")
        blob = self._blob(path)
        head, ended = await first_block(chunks, block_size)
        with storage_errors("write", path.canonical):
            if ended:  # small body: one Put Blob
                # overwrite=False sends If-None-Match: *, so a create-only write is atomic here too.
                await blob.upload_blob(head, length=len(head), max_concurrency=1, metadata=_digest_metadata(options),
                                       overwrite=not options.create_only)
                return
            blocks = rechunk(_chain([head], chunks), block_size)
            del head  # the re-chunker owns the first block now
            block_ids = await self._stage_blocks(blob, blocks)
            # The only step that makes the new version visible; If-None-Match: * makes it create-only, atomically.
            await blob.commit_block_list(_blocks(block_ids), metadata=_digest_metadata(options),
                                         **_write_condition(options))

    async def _stage_blocks(self, blob: BlobClient, blocks: AsyncIterator[bytes]) -> list[str]:
        """Stage every block, uploading one while the next is read: at most two blocks in memory."""
        token = secrets.token_hex(6)
        block_ids: list[str] = []
        pending: asyncio.Future[Any] | None = None
        try:
            async for block in blocks:
                if len(block_ids) == MAX_BLOCKS:
                    raise PayloadTooLarge(f"Artifacts over {MAX_BLOCKS} blocks exceed Azure's limit")
                block_ids.append(PROXY_ID.format(token=token, index=len(block_ids) + 1))
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(blob.stage_block(block_ids[-1], block, length=len(block)))
            if pending is not None:
                await pending
        finally:
            # On any failure nothing is committed; staged blocks are never visible and expire on their own.
            if pending is not None and not pending.done():
                pending.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await pending
        return block_ids

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        name = self._name(path)
        prefix = f"{name}/" if name else ""
        infos: list[FileInfo] = []
        with storage_errors("list", path.canonical):
            async for item in self._client().walk_blobs(name_starts_with=prefix or None, delimiter="/"):
                info = _listed(item, prefix)
                if info is not None:
                    infos.append(info)
        return infos

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        name = self._name(path)
        with storage_errors("delete", path.canonical):
            await self._delete_blob(name)
            # Azurite rejects blob batches (400 InvalidInput), so delete one by one with bounded concurrency.
            batch: list[str] = []
            async for blob in self._client().list_blobs(name_starts_with=name + "/"):
                batch.append(blob.name)
                if len(batch) == DELETE_CONCURRENCY:
                    await asyncio.gather(*(self._delete_blob(n) for n in batch))
                    batch = []
            await asyncio.gather(*(self._delete_blob(n) for n in batch))

    async def _delete_blob(self, name: str) -> None:
        try:
            await self._client().delete_blob(name, delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise

    # presigning ----------------------------------------------------------------------------------------------------
    async def _sas(self, path: ArtifactPath, perm: str, ttl: int, unsupported: type[Exception], **extra: str) -> str:
        now = datetime.now(UTC)
        start, expiry = now - timedelta(minutes=5), now + timedelta(seconds=ttl)  # start earlier: clock skew
        common: dict[str, Any] = {"permission": BlobSasPermissions.from_string(perm), "start": start, "expiry": expiry}
        common.update(extra)
        args = (self._client().account_name or self.account, self.container_name, self._name(path))
        if self._account_key:
            return generate_blob_sas(*args, account_key=self._account_key, **common)
        with storage_errors("sign", path.canonical):
            try:
                key = await self._delegation_key(now, expiry)
            except HttpResponseError as exc:
                # The identity may read and write blobs yet lack the right to get a user delegation key.
                if _code(exc) == "AuthorizationPermissionMismatch":
                    raise unsupported() from exc
                raise
        return generate_blob_sas(*args, user_delegation_key=key, **common)

    async def _delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        if self._delegation is not None and self._delegation[1] >= expiry:
            return self._delegation[0]
        key_expiry = min(expiry + timedelta(hours=12), now + timedelta(days=7))  # Azure's cap is 7 days
        assert self._service is not None
        key = await self._service.get_user_delegation_key(now - timedelta(minutes=5), key_expiry)
        self._delegation = (key, key_expiry)
        return key

    # multipart -----------------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        if not self.multipart_enabled:
            raise MultipartUploadUnsupported()
        if not 1 <= num_parts <= MAX_BLOCKS:
            raise InvalidParameter(f"Invalid value {num_parts} for parameter 'num_parts': Azure allows 1..{MAX_BLOCKS}")
        ttl = self.settings.multipart_url_ttl
        sas = await self._sas(path, "w", ttl, MultipartUploadUnsupported)
        url = self._blob(path).url
        credentials = [
            PartCredential(f"{url}?comp=block&blockid={quote(_b64(part_block_id(n)), safe='')}&{sas}", n)
            for n in range(1, num_parts + 1)
        ]
        return CreatedMultipartUpload(upload_id=None, credentials=credentials)

    async def complete_multipart_upload(
        self, path: ArtifactPath, upload_id: str | None, parts: Sequence[CompletedPart]
    ) -> None:
        block_ids = _expected_block_ids(parts)
        blob = self._blob(path)
        with storage_errors("complete", path.canonical):
            try:
                await blob.commit_block_list(_blocks(block_ids))
            except HttpResponseError as exc:
                if _code(exc) != "InvalidBlockList":
                    raise
                if not await blob.exists():
                    raise ResourceNotFound(f"No upload in progress for '{path.canonical}'") from exc
                # A retried complete whose first attempt committed: the blocks are gone, the artifact is there.
                logger.info("complete of %r: no staged blocks but the blob exists; done already", path.canonical)

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        return None  # uncommitted blocks are invisible and Azure discards them after 7 days

    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        if not self.presigned_download_enabled:
            raise PresignedDownloadUnsupported()
        meta = await self._meta(path)
        ttl, disposition = self.settings.presigned_download_ttl, content_disposition(path.basename)
        sas = await self._sas(path, "r", ttl, PresignedDownloadUnsupported, content_disposition=disposition)
        return PresignedUrl(url=f"{self._blob(path).url}?{sas}", headers={}, file_size=meta.size)


def _listed(item: Any, prefix: str) -> FileInfo | None:
    """One listing entry as a basename, or None for placeholders, stray keys and empty segments."""
    name: str = item.name
    if not name.startswith(prefix):  # the listing sanity check MLflow applies too
        return None
    rest = name[len(prefix) :]
    if isinstance(item, BlobPrefix):
        base = rest[:-1] if rest.endswith("/") else rest
        return FileInfo(base, True) if base and "/" not in base else None
    if not rest or "/" in rest or rest.startswith(TEMP_PREFIX):
        return None
    return FileInfo(rest, False, item.size)


def _blocks(block_ids: list[str]) -> list[BlobBlock]:
    return [BlobBlock(block_id) for block_id in block_ids]  # state "latest": uncommitted, else committed


def _expected_block_ids(parts: Sequence[CompletedPart]) -> list[str]:
    """Block ids in part order, derived from part numbers; each part's URL must carry exactly its own id."""
    if not parts:
        raise InvalidParameter("Missing value for required parameter 'parts'")
    ordered = sorted(parts, key=lambda part: part.part_number)
    block_ids: list[str] = []
    for part in ordered:
        expected = part_block_id(part.part_number)
        if block_ids and block_ids[-1] == expected:
            raise InvalidParameter(f"Duplicate part_number {part.part_number}")
        carried = parse_qs(urlsplit(part.url or "").query).get("blockid", [])
        if carried != [_b64(expected)]:
            raise InvalidParameter(f"Part {part.part_number}: its url does not carry the block id of that part")
        block_ids.append(expected)
    return block_ids
