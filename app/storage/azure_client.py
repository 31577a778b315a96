"""The plumbing AzureBlobStore (`app.storage.azure`) is built on: settings and credentials from the environment, the
destination URI, the one BlobServiceClient per process, blob names and blob properties.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import UserDelegationKey
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import IsADirectoryArtifact, StorageUnavailable
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.azure_errors import error_code, storage_errors
from app.storage.base import ObjectMeta

logger = logging.getLogger("artifact_proxy.storage.azure")
# The SDK logs every request and response at INFO; give it our own logger, quiet unless an operator lowers its level.
http_logger = logging.getLogger("artifact_proxy.storage.azure.http")
if http_logger.level == logging.NOTSET:
    http_logger.setLevel(logging.WARNING)

MiB = 1024 * 1024


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


class AzureClient:
    """Base of AzureBlobStore: the service client, names and blob properties every operation uses."""

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

    # properties ----------------------------------------------------------------------------------------------------
    async def _meta(self, path: ArtifactPath) -> ObjectMeta:
        if path.is_root:
            raise IsADirectoryArtifact(path.canonical)
        with storage_errors("read", path.canonical):
            try:
                props = await self._blob(path).get_blob_properties()
            except ResourceNotFoundError as exc:
                if error_code(exc) != "ContainerNotFound" and await self._has_children(self._name(path)):
                    raise IsADirectoryArtifact(path.canonical) from exc
                raise
        etag = props.etag if props.etag.startswith('"') else f'"{props.etag}"'
        digest = (props.metadata or {}).get("sha256")
        return ObjectMeta(size=props.size, etag=etag, last_modified=props.last_modified.timestamp(), sha256=digest)
