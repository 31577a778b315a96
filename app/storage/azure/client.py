"""The Azure connection of a store: one BlobServiceClient per process (built in `start`), the credentials behind it,
the blob names of artifact paths, and blob properties (the head that reads and presigned downloads start from).
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry

from app.errors import IsADirectoryArtifact, StorageUnavailable
from app.paths import ArtifactPath, EntryPath
from app.settings import Settings
from app.storage import StoreConfigError
from app.storage.azure.config import parse_wasbs
from app.storage.azure.errors import error_code, storage_errors
from app.storage.base import ObjectMeta
from app.store_settings import AzureSettings

logger = logging.getLogger("artifact_proxy.storage.azure")
# The SDK logs every request and response at INFO; give it our own logger, quiet unless an operator lowers its level.
http_logger = logging.getLogger("artifact_proxy.storage.azure.http")
if http_logger.level == logging.NOTSET:
    http_logger.setLevel(logging.WARNING)


class AzureClient:
    """The SDK clients of one `wasbs://` destination, and the blob each artifact path names in it."""

    def __init__(self, uri: str, settings: Settings, config: AzureSettings) -> None:
        self.settings, self.config = settings, config
        self.container_name, self.account, self.host, self.prefix = parse_wasbs(uri)
        # Known once started: the key a SAS is signed with; without one, signing needs a user delegation key.
        self.account_key: str | None = None
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        self._credential: Any = None

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
        self.account_key = getattr(self._service.credential, "account_key", None)
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
            await self.container.get_container_properties()

    # clients and names ---------------------------------------------------------------------------------------------
    @property
    def service(self) -> BlobServiceClient:
        if self._service is None:
            raise StorageUnavailable("The Azure store is not started")
        return self._service

    @property
    def container(self) -> ContainerClient:
        if self._container is None:
            raise StorageUnavailable("The Azure store is not started")
        return self._container

    def blob_name(self, path: ArtifactPath) -> str:
        return "/".join(part for part in (self.prefix, path.canonical) if part)

    def blob(self, path: ArtifactPath) -> BlobClient:
        return self.container.get_blob_client(self.blob_name(path))

    # properties ----------------------------------------------------------------------------------------------------
    async def meta(self, path: EntryPath) -> ObjectMeta:
        """The blob's size, ETag, time and recorded digest; a missing blob with blobs below it is a directory."""
        with storage_errors("read", path.canonical):
            try:
                props = await self.blob(path).get_blob_properties()
            except ResourceNotFoundError as exc:
                if error_code(exc) != "ContainerNotFound" and await self._has_children(self.blob_name(path)):
                    raise IsADirectoryArtifact(path.canonical) from exc
                raise
        etag = props.etag if props.etag.startswith('"') else f'"{props.etag}"'
        digest = (props.metadata or {}).get("sha256")
        return ObjectMeta(size=props.size, etag=etag, last_modified=props.last_modified.timestamp(), sha256=digest)

    async def _has_children(self, name: str) -> bool:
        async for _ in self.container.list_blobs(name_starts_with=name + "/", results_per_page=1):
            return True
        return False
