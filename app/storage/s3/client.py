"""The S3 side of S3Store: one bucket and key prefix, reached through aiobotocore clients opened once per process.

`S3Client` owns the clients' lifecycle, the mapping of artifact paths to keys, the translation of SDK failures, and
the object and multipart-upload calls that reads, streamed writes and presigned uploads all need (HEAD, create,
abort). A second client exists only when presigned URLs must name a different (public) endpoint than the one the
server uses: SigV4 signs the Host, so a URL signed for an internal endpoint fails for clients outside.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from app.downloads import content_type
from app.errors import ArtifactNotFound, ArtifactProxyError, IsADirectoryArtifact, ResourceNotFound
from app.paths import ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.base import ObjectMeta
from app.storage.s3.config import parse_s3_uri
from app.storage.s3.errors import map_error
from app.store_settings import S3Settings

logger = logging.getLogger("artifact_proxy.storage.s3")

ABORT_GRACE = 30.0  # seconds a shielded abort may take after a failure or cancellation
DIGEST_TAG, ETAG_TAG = "sha256", "etag"  # the upload's SHA-256: user metadata (single PUT) or tags (multipart)
# Upload args that later calls on the object must repeat: the SSE-C key on each part and read, requester pays and
# the bucket-owner check on each call, the checksum algorithm an upload was created with on each of its parts.
REPEATED_ARGS = frozenset(
    {
        "SSECustomerAlgorithm",
        "SSECustomerKey",
        "SSECustomerKeyMD5",
        "RequestPayer",
        "ExpectedBucketOwner",
        "ChecksumAlgorithm",
    }
)


def checksum_calculation(endpoint: str | None) -> str:
    """Over plain HTTP, SigV4 always signs each request's payload SHA-256, which S3 verifies: a CRC32 header on every
    part as well would only spend CPU on the serving process. Over HTTPS the checksum is what lets botocore skip
    the payload hash (UNSIGNED-PAYLOAD), so keep it there."""
    if endpoint and urlsplit(endpoint).scheme.lower() == "http":
        return "when_required"
    return "when_supported"


def _expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Send UploadPart with `Expect: 100-continue`, as botocore already does for file-like bodies but not for the
    bytearray parts of `S3Uploader`: aiohttp then sends the headers on their own and the part in one zero-copy
    write. Without it aiohttp (on Python < 3.12.9, where it avoids `writelines`) joins the headers and the whole part
    into a new bytes object: a copy of every part, in memory until sent. S3 also refuses a bad request before the
    part is sent."""
    params["headers"]["Expect"] = "100-continue"


class S3Client:
    """`s3://bucket/prefix` through one shared aiobotocore client (`sdk`), and `signer` for presigned URLs."""

    def __init__(self, uri: str, settings: Settings, config: S3Settings) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self._settings, self._config = settings, config
        self._stack: contextlib.AsyncExitStack | None = None
        self._sdk: Any = None
        self._signer: Any = None

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            session = get_session()
            self._sdk = await stack.enter_async_context(session.create_client(**self._client_args(False)))
            self._sdk.meta.events.register("before-call.s3.UploadPart", _expect_continue)
            self._signer = self._sdk
            if self._config.public_endpoint_url:
                self._signer = await stack.enter_async_context(session.create_client(**self._client_args(True)))
            self._check_extra_args()
            self._stack = stack.pop_all()
        endpoint = urlsplit(self._config.endpoint_url or "https://s3.amazonaws.com")
        where = f"{endpoint.scheme}://{endpoint.hostname}"  # never the whole URL: it could carry userinfo
        logger.info("S3 store: bucket %s, prefix %r, endpoint %s", self.bucket, self.prefix, where)

    def _client_args(self, public: bool) -> dict[str, Any]:
        cfg = self._config
        endpoint = cfg.public_endpoint_url if public else cfg.endpoint_url
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "auto"},
            connect_timeout=min(self._settings.storage_timeout, 10.0),  # an unreachable store should fail fast
            read_timeout=self._settings.storage_timeout,
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},  # initial try included
            max_pool_connections=cfg.max_pool_connections,
            request_checksum_calculation=checksum_calculation(endpoint),
        )
        verify: bool | str | None = False if cfg.ignore_tls else cfg.ca_bundle
        return dict(service_name="s3", endpoint_url=endpoint, region_name=cfg.region, verify=verify, config=config)

    def _check_extra_args(self) -> None:
        """Fail at startup, not on the first upload, on extra args that PutObject or CreateMultipartUpload refuse."""
        model = self._sdk.meta.service_model
        put, create = (
            set(model.operation_model(op).input_shape.members) for op in ("PutObject", "CreateMultipartUpload")
        )
        accepted = (put & create) - {"Bucket", "Key"}  # those two are ours to set
        unknown = sorted(set(self._config.upload_extra_args) - accepted)
        if unknown:
            raise ValueError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS has keys an upload does not accept: {', '.join(unknown)}")

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @property
    def sdk(self) -> Any:
        """The aiobotocore client every S3 call goes through (its connection pool is the process's)."""
        if self._sdk is None:
            raise RuntimeError("S3Store.start() has not been called")
        return self._sdk

    @property
    def signer(self) -> Any:
        """The client that signs presigned URLs: `sdk` itself, unless a public endpoint is set."""
        if self._signer is None:
            raise RuntimeError("S3Store.start() has not been called")
        return self._signer

    async def check_ready(self) -> None:
        # ListObjectsV2 rather than HeadBucket: a prefix-scoped policy may allow only listing, and a missing bucket
        # is reported as NoSuchBucket instead of a bare 404.
        with self.errors("ListObjectsV2", None):
            await self.sdk.list_objects_v2(Bucket=self.bucket, Prefix=self.dir_prefix(ArtifactPath("")), MaxKeys=1)

    # upload args ---------------------------------------------------------------------------------------------------
    def upload_args(self, path: ArtifactPath) -> dict[str, Any]:
        """What PutObject and CreateMultipartUpload get: the Content-Type a presigned GET then answers with (the one
        our own GET gives), and MLFLOW_S3_UPLOAD_EXTRA_ARGS, which win. No guessed ContentEncoding, unlike MLflow:
        a `.tar.gz` stored as `Content-Encoding: gzip` is unpacked by HTTP clients on the way down."""
        return {"ContentType": content_type(path.basename), **self._config.upload_extra_args}

    def repeated_args(self, operation: str) -> dict[str, Any]:
        """The upload args (REPEATED_ARGS) that `operation` takes."""
        members = self.sdk.meta.service_model.operation_model(operation).input_shape.members
        return {k: v for k, v in self._config.upload_extra_args.items() if k in REPEATED_ARGS and k in members}

    def as_headers(self, operation: str, args: dict[str, Any]) -> dict[str, str]:
        """The HTTP headers `operation` sends these params as: what a presigned request must carry, since the
        signature covers them (x-amz-request-payer, x-amz-expected-bucket-owner)."""
        members = self.sdk.meta.service_model.operation_model(operation).input_shape.members
        return {members[name].serialization["name"]: str(value) for name, value in args.items()}

    # keys and errors -----------------------------------------------------------------------------------------------
    def key(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def dir_prefix(self, path: ArtifactPath) -> str:
        key = self.key(path)
        return f"{key}/" if key else ""

    @contextlib.contextmanager
    def errors(self, op: str, path: ArtifactPath | None) -> Iterator[None]:
        """Raise whatever the block fails with as the service's error (`map_error`), naming the S3 operation."""
        try:
            yield
        except ArtifactProxyError:
            raise
        except Exception as exc:
            where = f"s3://{self.bucket}/{self.key(path) if path is not None else self.prefix}"
            raise map_error(exc, op, where, path.canonical if path is not None else None) from exc

    # object metadata -----------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        """The object's metadata; `IsADirectoryArtifact` for a prefix with keys below it, `ArtifactNotFound` else."""
        try:
            with self.errors("HeadObject", path):
                head = await self.sdk.head_object(
                    Bucket=self.bucket, Key=self.key(path), **self.repeated_args("HeadObject")
                )
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
                response = await self.sdk.get_object_tagging(Bucket=self.bucket, Key=self.key(path))
        except ArtifactProxyError:
            return None  # the digest is optional: serve without it
        tags = {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}
        return tags.get(DIGEST_TAG) if tags.get(ETAG_TAG) == etag.strip('"') else None

    async def _has_children(self, path: ArtifactPath) -> bool:
        with self.errors("ListObjectsV2", path):
            page = await self.sdk.list_objects_v2(Bucket=self.bucket, Prefix=self.dir_prefix(path), MaxKeys=1)
        return bool(page.get("Contents") or page.get("CommonPrefixes"))

    # multipart uploads, shared by streamed and presigned uploads ---------------------------------------------------
    async def create_upload(self, path: ArtifactPath) -> str:
        """A new multipart upload of `path`, with its upload args (type, SSE, metadata...); its upload id."""
        with self.errors("CreateMultipartUpload", path):
            created = await self.sdk.create_multipart_upload(
                Bucket=self.bucket, Key=self.key(path), **self.upload_args(path)
            )
        return str(created["UploadId"])

    async def abort_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        """Drop an upload's parts. Idempotent: an upload already aborted or completed (or no id) is not an error."""
        if not upload_id:
            return
        try:
            with self.errors("AbortMultipartUpload", path):
                await self.sdk.abort_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key(path),
                    UploadId=upload_id,
                    **self.repeated_args("AbortMultipartUpload"),
                )
        except ResourceNotFound:
            return

    async def abort_quietly(self, path: ArtifactPath, upload_id: str) -> None:
        """Abort after a failure, even while being cancelled (shielded, bounded), never masking the failure."""
        with anyio.move_on_after(ABORT_GRACE, shield=True):
            try:
                await self.abort_upload(path, upload_id)
            except Exception:  # the original failure matters more; S3 lifecycle rules reap what is left
                logger.warning("could not abort multipart upload for %s", self.key(path), exc_info=True)
