"""The plumbing S3Store (`app.storage.s3`) is built on: settings from the variables MLflow users already set, the
destination URI, the aiobotocore clients (one per process, plus a signer for a public endpoint), object keys, error
translation, and the object and multipart primitives that reads, writes and presigned uploads share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ArtifactNotFound, ArtifactProxyError, IsADirectoryArtifact, ResourceNotFound
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage.base import ObjectMeta
from app.storage.s3.errors import logger, map_error

MiB = 1024 * 1024
ABORT_GRACE = 30.0  # seconds a shielded abort may take after a failure or cancellation
DIGEST_TAG, ETAG_TAG = "sha256", "etag"  # the upload's SHA-256: user metadata (single PUT) or tags (multipart)


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


class S3Client:
    """Base of S3Store: the clients, keys, error translation and object primitives every operation uses."""

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

    # object metadata -----------------------------------------------------------------------------------------------
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

    # multipart primitives, shared by streamed and presigned uploads ------------------------------------------------
    async def _create_upload(self, path: ArtifactPath) -> str:
        with self.errors("CreateMultipartUpload", path):
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._key(path), **self.config.upload_extra_args
            )
        return str(created["UploadId"])

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        if not upload_id:
            return
        try:
            with self.errors("AbortMultipartUpload", path):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(path), UploadId=upload_id)
        except ResourceNotFound:
            return  # already aborted or completed: abort is idempotent

    async def _abort_quietly(self, path: ArtifactPath, upload_id: str) -> None:
        """Abort after a failure, even while being cancelled (shielded, bounded), never masking the failure."""
        with anyio.move_on_after(ABORT_GRACE, shield=True):
            try:
                await self.abort_multipart_upload(path, upload_id)
            except Exception:  # the original failure matters more; S3 lifecycle rules reap what is left
                logger.warning("could not abort multipart upload for %s", self._key(path), exc_info=True)
