"""AzureBlobStore: the artifact operations over one container, put together from the client (SDK clients, names,
properties), the block writer (proxied uploads), the SAS signer and the block-list uploads (presigned multipart).
Listing and deleting are here: they are short, and only the store needs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobPrefix

from app.downloads import content_disposition
from app.errors import PresignedDownloadUnsupported
from app.paths import TEMP_PREFIX, ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.azure.client import AzureClient
from app.storage.azure.errors import error_code, storage_errors
from app.storage.azure.multipart import BlockListUploads
from app.storage.azure.reader import AzureReadHandle
from app.storage.azure.sas import SasSigner
from app.storage.azure.writer import BlockWriter
from app.storage.base import (
    DEFAULT_COMPLETE,
    DEFAULT_WRITE,
    Capabilities,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PresignedUrl,
    WalkEntry,
    WriteOptions,
)
from app.storage.walks import relative_key

DELETE_CONCURRENCY = 16


class AzureBlobStore:
    """Artifacts as block blobs under `<prefix>/` in one container."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.settings, self.config = settings, settings.azure
        self.client = AzureClient(uri, settings, self.config)
        self.capabilities = Capabilities(
            multipart_upload=settings.enable_multipart and self.config.can_sign,
            presigned_download=settings.enable_presigned_download and self.config.can_sign,
            can_presign=self.config.can_sign,
        )
        self._writer = BlockWriter(self.client, self.config.block_size)
        self._signer = SasSigner(self.client)
        self._uploads = BlockListUploads(self.client, self._signer, settings)

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def check_ready(self) -> None:
        await self.client.check_ready()

    # read and write ------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        return await self.client.meta(path)

    async def open_read(self, path: EntryPath) -> AzureReadHandle:
        meta = await self.client.meta(path)
        return AzureReadHandle(self.client.blob(path), meta, path.canonical)

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        await self._writer.write(path, chunks, size, options)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        name = self.client.blob_name(path)
        prefix = f"{name}/" if name else ""
        infos: list[FileInfo] = []
        with storage_errors("list", path.canonical):
            async for item in self.client.container.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
                info = _listed(item, prefix)
                if info is not None:
                    infos.append(info)
        infos.sort(key=lambda info: info.path)  # Azure orders whole names, and "b.txt" < "b/" but "b" < "b.txt"
        return infos

    async def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        name = self.client.blob_name(path)
        prefix = f"{name}/" if name else ""
        with storage_errors("list", path.canonical):
            async for blob in self.client.container.list_blobs(name_starts_with=prefix or None):
                if (relative := relative_key(blob.name, prefix)) is not None:
                    modified = blob.last_modified
                    yield WalkEntry(relative, int(blob.size or 0), modified.timestamp() if modified else None)

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: EntryPath) -> None:
        name = self.client.blob_name(path)
        with storage_errors("delete", path.canonical):
            await self._delete_blob(name)
            # Azurite rejects blob batches (400 InvalidInput), so delete one by one with bounded concurrency.
            batch: list[str] = []
            async for blob in self.client.container.list_blobs(name_starts_with=name + "/"):
                batch.append(blob.name)
                if len(batch) == DELETE_CONCURRENCY:
                    await asyncio.gather(*(self._delete_blob(n) for n in batch))
                    batch = []
            await asyncio.gather(*(self._delete_blob(n) for n in batch))

    async def _delete_blob(self, name: str) -> None:
        try:
            await self.client.container.delete_blob(name, delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if error_code(exc) == "ContainerNotFound":
                raise

    # presigned multipart -------------------------------------------------------------------------------------------
    # The routes call these only when `capabilities` offers them (app/storage/base.py).
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._uploads.create(path, num_parts)

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self._uploads.complete(path, parts, options)  # no upload id: the blob and its block ids are the upload

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        # Uncommitted blocks are invisible, and Azure has no call to drop them: they go with the blob's next commit,
        # or after 7 days. A refused complete (too large, or create-only against an existing blob) leaves them too.
        return None

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        meta = await self.client.meta(path)
        ttl, disposition = self.settings.presigned_download_ttl, content_disposition(path.basename)
        sas = await self._signer.sign(path, "r", ttl, PresignedDownloadUnsupported, content_disposition=disposition)
        return PresignedUrl(url=f"{self.client.blob(path).url}?{sas}", headers={}, file_size=meta.size)


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
