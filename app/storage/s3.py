"""S3 and S3-compatible backend (aiobotocore): streamed puts via server-side multipart, ranged gets, presigning.

One aiobotocore client per process, opened in `start()`, so its connection pool is shared by every request. A second
client exists only when presigned URLs must name a different (public) endpoint than the one the server uses: SigV4
signs the Host, so a URL signed for an internal endpoint fails for clients outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as bce
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.downloads import content_disposition
from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    IsADirectoryArtifact,
    PayloadTooLarge,
    ResourceNotFound,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage.base import (
    CompletedPart,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PartCredential,
    PresignedUrl,
    WriteOptions,
)

logger = logging.getLogger("artifact_proxy.storage.s3")

MiB = 1024 * 1024
MAX_PARTS = 10_000
DELETE_BATCH = 1000  # the DeleteObjects limit
ABORT_GRACE = 30.0  # seconds a shielded abort may take after a failure or cancellation
DEFAULT_WRITE = WriteOptions()
DIGEST_TAG, ETAG_TAG = "sha256", "etag"  # the upload's SHA-256: user metadata (single PUT) or tags (multipart)

# UploadPart must repeat these upload args (SSE-C keys, requester pays); the others apply only to create/put.
_PART_ARGS = {"SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "RequestPayer", "ExpectedBucketOwner"}

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# Transient: retry later (5xx statuses are transient too, whatever their code).
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
_THROTTLED.add("ConditionalRequestConflict")  # two create-only writes racing: the retry settles it
_CLIENT_MISTAKE = set("EntityTooSmall EntityTooLarge InvalidPart InvalidPartOrder MalformedXML".split())
_WRONG_REGION = "the bucket is in another region: set AWS_DEFAULT_REGION to the bucket's region"
# Codes an operator must fix, with what to check. Messages never carry credentials.
_MISCONFIGURED = {
    "AccessDenied": "the credentials lack s3:GetObject/PutObject/DeleteObject/ListBucket permission on {where}",
    "403": "the credentials lack permission on {where} (a HEAD without s3:ListBucket also answers 403)",
    "AllAccessDisabled": "all access to {where} is disabled",
    "InvalidAccessKeyId": "the access key is unknown to the server: check AWS_ACCESS_KEY_ID or the AWS profile",
    "SignatureDoesNotMatch": "the signature was rejected: check AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL",
    "ExpiredToken": "the session token has expired: refresh the AWS credentials",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "NoSuchBucket": "the bucket of {where} does not exist: check the artifacts destination",
    "InvalidBucketName": "the bucket name of {where} is invalid",
    "PermanentRedirect": _WRONG_REGION,
    "301": _WRONG_REGION,
    "AuthorizationHeaderMalformed": _WRONG_REGION,
    "KMS.NotFoundException": "the KMS key in MLFLOW_S3_UPLOAD_EXTRA_ARGS does not exist",
    "KMS.DisabledException": "the KMS key in MLFLOW_S3_UPLOAD_EXTRA_ARGS is disabled",
}


class S3Config(BaseSettings):
    """S3 client settings, read from the variables MLflow users already set."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    )
    public_endpoint_url: str | None = Field(None, validation_alias="ARTIFACT_PROXY_S3_PUBLIC_ENDPOINT_URL")
    ignore_tls: bool = Field(False, validation_alias="MLFLOW_S3_IGNORE_TLS")
    ca_bundle: str | None = Field(None, validation_alias="AWS_CA_BUNDLE")
    upload_extra_args: dict[str, Any] = Field(default_factory=dict, validation_alias="MLFLOW_S3_UPLOAD_EXTRA_ARGS")
    region: str | None = Field(None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"))
    max_attempts: int = Field(
        3, ge=1, validation_alias=AliasChoices("ARTIFACT_PROXY_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS")
    )
    max_pool_connections: int = Field(64, ge=1, validation_alias="ARTIFACT_PROXY_S3_MAX_POOL_CONNECTIONS")
    part_size: int = Field(8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB, validation_alias="ARTIFACT_PROXY_S3_PART_SIZE")
    # Parts of one streamed upload sent at once; it buffers at most this many parts plus the one being received.
    upload_concurrency: int = Field(4, ge=1, le=64, validation_alias="ARTIFACT_PROXY_S3_UPLOAD_CONCURRENCY")
    list_page_size: int = Field(1000, ge=1, le=1000, validation_alias="ARTIFACT_PROXY_S3_LIST_PAGE_SIZE")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix")."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"Invalid S3 destination {uri!r}: expected s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


def part_size_for(size: int | None, minimum: int) -> int:
    """The part size: `minimum`, grown (in whole MiB) when the announced size would need more than 10,000 parts."""
    if size is None or size <= minimum * MAX_PARTS:
        return minimum
    return math.ceil(size / MAX_PARTS / MiB) * MiB


def multipart_etag(etags: Sequence[str]) -> str | None:
    """The ETag S3 gives an object completed from these parts: md5 of the parts' binary md5s, then `-<count>`."""
    try:
        digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    except ValueError:
        return None
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(etags)}"'


def map_error(exc: Exception, op: str, where: str, path: str | None) -> ArtifactProxyError:
    """Translate an SDK/transport failure into the service's error hierarchy; log what operators need."""
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"S3 {op} on {where} failed: {code} (HTTP {status}) {error.get('Message', '')}"
        if code in _NOT_FOUND and path is not None:
            return ArtifactNotFound(path)
        if code == "NoSuchUpload":
            return ResourceNotFound(f"No such multipart upload for '{path}'")
        if code in _MISCONFIGURED:
            logger.error("%s", detail)
            return StorageMisconfigured(
                f"The artifact store is misconfigured: {_MISCONFIGURED[code].format(where=where)}"
            )
        if code in ("RequestTimeout", "RequestTimeoutException"):
            logger.warning("%s", detail)
            return StorageTimeout("The artifact store timed out")
        if code in _THROTTLED or status >= 500:
            logger.warning("%s", detail)
            return StorageUnavailable(f"The artifact store is unavailable or throttling ({code})")
        if code == "PreconditionFailed" and op in ("PutObject", "CompleteMultipartUpload"):
            return AlreadyExists(path or where)  # a create-only write (If-None-Match: *) found an object
        if code == "PreconditionFailed":
            return StorageUnavailable("The artifact changed while it was being read; retry", retry_after=1)
        if code in _CLIENT_MISTAKE:
            return InvalidParameter(f"S3 rejected the multipart upload: {code}: {error.get('Message', '')}")
        logger.error("%s", detail)
        return ArtifactProxyError(f"S3 {op} failed: {code}")
    if isinstance(exc, bce.ReadTimeoutError | TimeoutError):
        logger.warning("S3 %s on %s timed out: %s", op, where, exc)
        return StorageTimeout("The artifact store timed out")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError):
        logger.error("S3 %s on %s: no usable credentials: %s", op, where, type(exc).__name__)
        return StorageMisconfigured("The artifact store is misconfigured: no usable AWS credentials were found")
    if isinstance(
        exc, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError | aiohttp.ClientError | OSError
    ):
        logger.warning("S3 %s on %s: storage unreachable: %s", op, where, exc)
        return StorageUnavailable("The artifact store is unreachable")
    if isinstance(exc, bce.ParamValidationError):  # its text echoes parameter values, SSE-C keys included
        logger.error("S3 %s on %s: botocore rejected the request parameters", op, where)
        return ArtifactProxyError(f"S3 {op} failed: invalid request parameters")
    logger.error("S3 %s on %s failed unexpectedly", op, where, exc_info=exc)
    return ArtifactProxyError(f"S3 {op} failed")


class S3ReadHandle:
    def __init__(self, store: S3Store, path: ArtifactPath, key: str, meta: ObjectMeta) -> None:
        self.meta = meta
        self._store, self._path, self._key = store, path, key

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            return
        store, chunk_size = self._store, self._store.settings.download_chunk_size
        args: dict[str, Any] = {"Bucket": store.bucket, "Key": self._key, "Range": f"bytes={start}-{end - 1}"}
        if self.meta.etag:  # never splice a concurrent overwrite into a response sized for the old version
            args["IfMatch"] = self.meta.etag
        with store.errors("GetObject", self._path):
            response = await store.client.get_object(**args)
        body = response["Body"]
        try:
            while True:
                with store.errors("GetObject", self._path):
                    chunk = await _read_up_to(body, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def aclose(self) -> None:
        return None  # each iter_range closes its own body


def _checksum_calculation(endpoint: str | None) -> str:
    """Over plain HTTP, SigV4 always signs each request's payload SHA-256, which S3 verifies: a CRC32 header on every
    part as well would only spend CPU on the serving process. Over HTTPS the checksum is what lets botocore skip
    the payload hash (UNSIGNED-PAYLOAD), so keep it there."""
    if endpoint and urlsplit(endpoint).scheme.lower() == "http":
        return "when_required"
    return "when_supported"


def _expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Send UploadPart with `Expect: 100-continue`, as botocore already does for file-like bodies but not for the
    bytearray parts of `_upload_parts`: aiohttp then sends the headers on their own and the part in one zero-copy
    write. Without it aiohttp (on Python < 3.12.9, where it avoids `writelines`) joins the headers and the whole part
    into a new bytes object: a copy of every part, in memory until sent. S3 also refuses a bad request before the
    part is sent."""
    params["headers"]["Expect"] = "100-continue"


async def _read_up_to(body: Any, size: int) -> bytes:
    """Read `size` bytes (fewer only at the end): aiohttp hands out whatever it has buffered, often 64-256 KiB."""
    buffer = bytearray()
    while len(buffer) < size:
        piece = await body.read(size - len(buffer))
        if not piece:
            break
        buffer += piece
    return bytes(buffer)


class _PartBuffer(bytearray):
    """A part's bytes, reused from part to part, whose slices are views: aiohttp sends a body of known length as
    `body[:content_length]`, which would copy a plain bytearray. (A bytes body is not copied there, but botocore
    wraps bytes in a BytesIO, which aiohttp then copies out 64 KiB at a time.)"""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return memoryview(self)[index]
        return super().__getitem__(index)


async def _first_part(chunks: AsyncIterator[bytes], part_size: int) -> tuple[list[bytes], bool]:
    """The chunks of the first `part_size` bytes (more at most by the last chunk), and whether the stream ended
    before that: a single PutObject then, a multipart upload otherwise. The chunks are kept, not copied."""
    head: list[bytes] = []
    received = 0
    async for chunk in chunks:
        if chunk:
            head.append(chunk)
            received += len(chunk)
            if received >= part_size:
                return head, False
    return head, True


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    while head:
        yield head.pop(0)  # each chunk goes once copied into a part buffer
    async for chunk in rest:
        yield chunk


class S3Store:
    """Artifacts as objects under `s3://bucket/prefix`."""

    def __init__(self, uri: str, settings: Settings, config: S3Config | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.settings = settings
        self.config = config if config is not None else S3Config()
        self.multipart_enabled = settings.enable_multipart
        self.presigned_download_enabled = settings.enable_presigned_download
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._signer: Any = None

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            session = get_session()
            self._client = await stack.enter_async_context(session.create_client(**self._client_args(False)))
            self._client.meta.events.register("before-call.s3.UploadPart", _expect_continue)
            self._signer = self._client
            if self.config.public_endpoint_url:
                self._signer = await stack.enter_async_context(session.create_client(**self._client_args(True)))
            self._check_extra_args()
            self._stack = stack.pop_all()
        endpoint = urlsplit(self.config.endpoint_url or "https://s3.amazonaws.com")
        where = f"{endpoint.scheme}://{endpoint.hostname}"  # never the whole URL: it could carry userinfo
        logger.info("S3 store: bucket %s, prefix %r, endpoint %s", self.bucket, self.prefix, where)

    def _client_args(self, public: bool) -> dict[str, Any]:
        cfg = self.config
        endpoint = cfg.public_endpoint_url if public else cfg.endpoint_url
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "auto"},
            connect_timeout=min(self.settings.storage_timeout, 10.0),  # an unreachable store should fail fast
            read_timeout=self.settings.storage_timeout,
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},  # initial try included
            max_pool_connections=cfg.max_pool_connections,
            request_checksum_calculation=_checksum_calculation(endpoint),
        )
        verify: bool | str | None = False if cfg.ignore_tls else cfg.ca_bundle
        return dict(service_name="s3", endpoint_url=endpoint, region_name=cfg.region, verify=verify, config=config)

    def _check_extra_args(self) -> None:
        """Fail at startup, not on the first upload, on extra args that PutObject or CreateMultipartUpload refuse."""
        model = self._client.meta.service_model
        put, create = (
            set(model.operation_model(op).input_shape.members) for op in ("PutObject", "CreateMultipartUpload")
        )
        accepted = (put & create) - {"Bucket", "Key"}  # those two are ours to set
        unknown = sorted(set(self.config.upload_extra_args) - accepted)
        if unknown:
            raise ValueError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS has keys an upload does not accept: {', '.join(unknown)}")

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Store.start() has not been called")
        return self._client

    async def check_ready(self) -> None:
        # ListObjectsV2 rather than HeadBucket: a prefix-scoped policy may allow only listing, and a missing bucket
        # is reported as NoSuchBucket instead of a bare 404.
        with self.errors("ListObjectsV2", None):
            await self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._dir_prefix(ArtifactPath("")), MaxKeys=1)

    # keys and errors -----------------------------------------------------------------------------------------------
    def _key(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def _dir_prefix(self, path: ArtifactPath) -> str:
        key = self._key(path)
        return f"{key}/" if key else ""

    @contextlib.contextmanager
    def errors(self, op: str, path: ArtifactPath | None) -> Iterator[None]:
        try:
            yield
        except ArtifactProxyError:
            raise
        except Exception as exc:
            where = f"s3://{self.bucket}/{self._key(path) if path is not None else self.prefix}"
            raise map_error(exc, op, where, path.canonical if path is not None else None) from exc

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> S3ReadHandle:
        return S3ReadHandle(self, path, self._key(path), await self._head(path))

    async def _head(self, path: ArtifactPath) -> ObjectMeta:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        try:
            with self.errors("HeadObject", path):
                head = await self.client.head_object(Bucket=self.bucket, Key=self._key(path))
        except ArtifactNotFound:
            if await self._has_children(path):
                raise IsADirectoryArtifact(path.canonical) from None
            raise
        modified = head.get("LastModified")
        etag, digest = head.get("ETag"), (head.get("Metadata") or {}).get(DIGEST_TAG)
        if digest is None and head.get("TagCount") and etag:
            digest = await self._tagged_digest(path, etag)
        return ObjectMeta(int(head["ContentLength"]), etag, modified.timestamp() if modified else None, digest)

    async def _tagged_digest(self, path: ArtifactPath, etag: str) -> str | None:
        """The SHA-256 a multipart write tagged, trusted only if the tag names this very object's ETag."""
        try:
            with self.errors("GetObjectTagging", path):
                response = await self.client.get_object_tagging(Bucket=self.bucket, Key=self._key(path))
        except ArtifactProxyError:
            return None  # the digest is optional: serve without it
        tags = {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}
        return tags.get(DIGEST_TAG) if tags.get(ETAG_TAG) == etag.strip('"') else None

    async def _has_children(self, path: ArtifactPath) -> bool:
        with self.errors("ListObjectsV2", path):
            page = await self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._dir_prefix(path), MaxKeys=1)
        return bool(page.get("Contents") or page.get("CommonPrefixes"))

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        part_size = part_size_for(size, self.config.part_size)
        head, ended = await _first_part(chunks, part_size)
        condition = {"IfNoneMatch": "*"} if options.create_only else {}  # atomic create-only, settled by S3
        if ended:
            args = {**self.config.upload_extra_args, **condition}
            if digest := options.digest():
                args["Metadata"] = {**args.get("Metadata", {}), DIGEST_TAG: digest}
            body = b"".join(head)  # no copy when the body came as one chunk
            del head
            with self.errors("PutObject", path):
                await self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=body, **args)
            return
        etag = await self._write_multipart(path, _chain(head, chunks), part_size, condition)
        if digest := options.digest():
            await self._tag_digest(path, digest, etag)

    async def _write_multipart(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], part_size: int, condition: dict[str, str]
    ) -> str:
        upload_id = await self._create_upload(path)
        try:
            parts = await self._upload_parts(path, upload_id, chunks, part_size)
            # botocore raises on CompleteMultipartUpload's "200 with an error in the body", so success is real.
            with self.errors("CompleteMultipartUpload", path):
                done = await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self._key(path),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )
        except BaseException:
            await self._abort_quietly(path, upload_id)
            raise
        return str(done.get("ETag", ""))

    async def _tag_digest(self, path: ArtifactPath, digest: str, etag: str) -> None:
        """Record a multipart object's SHA-256, known only after its last part, as tags (metadata is fixed at
        create). The ETag tag ties them to this object: a concurrent overwrite cannot inherit a wrong digest."""
        tags = [{"Key": DIGEST_TAG, "Value": digest}, {"Key": ETAG_TAG, "Value": etag.strip('"')}]
        try:
            with self.errors("PutObjectTagging", path):
                await self.client.put_object_tagging(Bucket=self.bucket, Key=self._key(path), Tagging={"TagSet": tags})
        except ArtifactProxyError:
            pass  # optional: the object is stored; it is served without a Repr-Digest

    async def _create_upload(self, path: ArtifactPath) -> str:
        with self.errors("CreateMultipartUpload", path):
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._key(path), **self.config.upload_extra_args
            )
        return str(created["UploadId"])

    async def _upload_parts(
        self, path: ArtifactPath, upload_id: str, chunks: AsyncIterator[bytes], part_size: int
    ) -> list[dict[str, Any]]:
        """Copy the stream into part buffers and upload each full one, up to `upload_concurrency` at once.

        Memory stays at `upload_concurrency + 1` part buffers, allocated once per upload and reused: a buffer goes
        back to the pool when S3 has answered for its part (every byte of it sent), so there is no per-part
        allocation and no copy besides the one into the buffer. Receiving waits while all uploads are busy, which
        is the backpressure on the client. A failed part fails the write when the next part is due, at the latest.
        """
        limit = self.config.upload_concurrency
        running: dict[asyncio.Future[dict[str, Any]], _PartBuffer] = {}
        free: list[_PartBuffer] = []
        parts: list[dict[str, Any]] = []

        def collect() -> None:
            for task in [task for task in running if task.done()]:
                free.append(running.pop(task))
                parts.append(task.result())  # raises the part's failure

        async def send(buffer: _PartBuffer) -> None:
            collect()
            while len(running) >= limit:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                collect()
            number = len(parts) + len(running) + 1
            if number > MAX_PARTS:
                raise PayloadTooLarge(f"Upload exceeds {MAX_PARTS} parts; send Content-Length or a smaller file")
            running[asyncio.ensure_future(self._upload_part(path, upload_id, number, buffer))] = buffer

        try:
            buffer, filled = _PartBuffer(), 0
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    if not buffer:
                        buffer, filled = (free.pop() if free else _PartBuffer(part_size)), 0
                    n = min(len(view), part_size - filled)
                    buffer[filled : filled + n] = view[:n]
                    filled, view = filled + n, view[n:]
                    if filled == part_size:
                        await send(buffer)
                        buffer = _PartBuffer()
                del view, chunk
            if buffer and filled:
                last = _PartBuffer(buffer[:filled])  # the short last part, sized exactly: its one extra copy
                await send(last)
            del buffer, free[:]
            while running:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                collect()
        finally:
            if running:
                for task in running:
                    task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(*running, return_exceptions=True)
        parts.sort(key=lambda part: part["PartNumber"])
        return parts

    async def _upload_part(self, path: ArtifactPath, upload_id: str, number: int, block: bytearray) -> dict[str, Any]:
        extra = {k: v for k, v in self.config.upload_extra_args.items() if k in _PART_ARGS}
        with self.errors("UploadPart", path):
            response = await self.client.upload_part(
                Bucket=self.bucket, Key=self._key(path), UploadId=upload_id, PartNumber=number, Body=block, **extra
            )
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def _abort_quietly(self, path: ArtifactPath, upload_id: str) -> None:
        """Abort after a failure, even while being cancelled (shielded, bounded), never masking the failure."""
        with anyio.move_on_after(ABORT_GRACE, shield=True):
            try:
                await self.abort_multipart_upload(path, upload_id)
            except Exception:  # the original failure matters more; S3 lifecycle rules reap what is left
                logger.warning("could not abort multipart upload for %s", self._key(path), exc_info=True)

    # list ----------------------------------------------------------------------------------------------------------
    async def _pages(self, path: ArtifactPath, prefix: str, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.config.list_page_size}
        if delimiter:
            args["Delimiter"] = "/"
        while True:
            with self.errors("ListObjectsV2", path):
                page = await self.client.list_objects_v2(**args)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix = self._dir_prefix(path)
        infos: list[FileInfo] = []
        async for page in self._pages(path, prefix, delimiter=True):
            for obj in page.get("Contents", []):
                name = _child_name(obj["Key"], prefix)
                if name is not None:  # skips the placeholder key equal to the prefix, and foreign keys
                    infos.append(FileInfo(name, False, int(obj.get("Size", 0))))
            for common in page.get("CommonPrefixes", []):
                name = _child_name(common["Prefix"].removesuffix("/"), prefix)
                if name is not None:
                    infos.append(FileInfo(name, True))
        infos.sort(key=lambda info: info.path)
        return infos

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        key, prefix = self._key(path), self._dir_prefix(path)
        batch: list[str] = []
        markers: set[str] = set()
        async for page in self._pages(path, prefix, delimiter=False):
            keys = [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].startswith(prefix)]
            markers.update(marker for k in keys for marker in _parent_markers(k, prefix))
            batch += keys
            while len(batch) >= DELETE_BATCH:
                await self._delete_keys(path, batch[:DELETE_BATCH])
                del batch[:DELETE_BATCH]
        # Then the directory markers, deepest first, and the exact key. Consoles create markers; filer-backed stores
        # (SeaweedFS) keep a directory entry per level that lingers in listings unless its marker is deleted.
        batch += [*sorted(markers, key=lambda m: -m.count("/")), prefix, key]
        for start in range(0, len(batch), DELETE_BATCH):
            await self._delete_keys(path, batch[start : start + DELETE_BATCH])

    async def _delete_keys(self, path: ArtifactPath, keys: Sequence[str]) -> None:
        objects = [{"Key": key} for key in dict.fromkeys(keys)]
        with self.errors("DeleteObjects", path):
            response = await self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            error = bce.ClientError(
                {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "DeleteObjects"
            )
            raise map_error(error, "DeleteObjects", f"s3://{self.bucket}/{first.get('Key')}", None)

    # presigned multipart -------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        upload_id = await self._create_upload(path)
        try:
            urls = [await self._presign_part(path, upload_id, number) for number in range(1, num_parts + 1)]
        except BaseException:
            await self._abort_quietly(path, upload_id)
            raise
        return CreatedMultipartUpload(upload_id, [PartCredential(url, i, {}) for i, url in enumerate(urls, 1)])

    async def _presign_part(self, path: ArtifactPath, upload_id: str, number: int) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(path), "UploadId": upload_id, "PartNumber": number}
        with self.errors("presign UploadPart", path):
            url = await self._signer.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=self.settings.multipart_url_ttl
            )
        return str(url)

    async def complete_multipart_upload(
        self, path: ArtifactPath, upload_id: str | None, parts: Sequence[CompletedPart]
    ) -> None:
        if not upload_id:
            raise InvalidParameter("Missing value for required parameter 'upload_id'")
        if not parts:
            raise InvalidParameter("Missing value for required parameter 'parts'")
        ordered = sorted(parts, key=lambda part: part.part_number)
        listed = [{"PartNumber": part.part_number, "ETag": part.etag} for part in ordered]  # ETags verbatim
        try:
            with self.errors("CompleteMultipartUpload", path):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self._key(path), UploadId=upload_id, MultipartUpload={"Parts": listed}
                )
        except ResourceNotFound:
            # A retried complete whose first attempt succeeded: the object is there, built from exactly these
            # parts. Matching the ETag (not mere existence) keeps an upload id bound to its own key.
            if await self._completed_from(path, [p.etag for p in ordered]):
                return
            raise

    async def _completed_from(self, path: ArtifactPath, etags: Sequence[str]) -> bool:
        try:
            meta = await self._head(path)
        except (ArtifactNotFound, IsADirectoryArtifact):
            return False
        expected = multipart_etag(etags)
        return expected is not None and meta.etag == expected

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        if not upload_id:
            return
        try:
            with self.errors("AbortMultipartUpload", path):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(path), UploadId=upload_id)
        except ResourceNotFound:
            return  # already aborted or completed: abort is idempotent

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        meta = await self._head(path)
        disposition = content_disposition(path.basename)
        params = {"Bucket": self.bucket, "Key": self._key(path), "ResponseContentDisposition": disposition}
        with self.errors("presign GetObject", path):
            url = await self._signer.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self.settings.presigned_download_ttl
            )
        return PresignedUrl(str(url), {}, meta.size)


def _parent_markers(key: str, prefix: str) -> list[str]:
    """`pre/a/b/c` under `pre/` -> [`pre/a/`, `pre/a/b/`]: the directory levels a key implies below the prefix."""
    parts = key[len(prefix) :].split("/")[:-1]
    return [prefix + "/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def _child_name(key: str, prefix: str) -> str | None:
    """The basename of a listed key or common prefix under `prefix`, or None when it must not be listed."""
    if not key.startswith(prefix):
        return None
    name = key[len(prefix) :]
    if not name or "/" in name or name.startswith(TEMP_PREFIX):
        return None
    return name
