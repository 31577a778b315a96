"""Azure Blob Storage backend: `wasbs://<container>@<account>.blob.core.windows.net[/<prefix>]` (and `wasb://`).

One BlobServiceClient per process (built in `start`). Proxied uploads stream into staged blocks and become visible
only at Put Block List; presigned multipart hands out Put Block URLs carrying a blob SAS and commits the block ids it
derives itself; presigned downloads are read-only SAS URLs. Credentials, first found wins:
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCESS_KEY (account from the URI), DefaultAzureCredential.

Settings and the service client live in `azure_client`, SAS URLs in `azure_sas`, the block-id scheme in
`azure_blocks`, error mapping in `azure_errors`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobClient, BlobPrefix

from app.errors import InvalidParameter, PayloadTooLarge
from app.paths import TEMP_PREFIX, ArtifactPath
from app.storage.azure_blocks import MAX_BLOCKS, PROXY_ID, block_list
from app.storage.azure_client import AzureClient, AzureConfig, parse_wasbs
from app.storage.azure_errors import error_code, map_error, storage_errors
from app.storage.azure_sas import AzureSigning
from app.storage.base import DEFAULT_WRITE, FileInfo, ObjectMeta, WriteOptions
from app.storage.chunks import first_block, prepend, rechunk

# AzureConfig, parse_wasbs and map_error live in azure_client and azure_errors; callers import them from here too.
__all__ = ["AzureBlobStore", "AzureConfig", "AzureReadHandle", "map_error", "parse_wasbs"]

DELETE_CONCURRENCY = 16


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


class AzureBlobStore(AzureSigning, AzureClient):
    """Artifacts as block blobs under `<prefix>/` in one container."""

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> AzureReadHandle:
        meta = await self._meta(path)
        return AzureReadHandle(self._blob(path), meta, path.canonical)

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
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
                await blob.upload_blob(
                    head,
                    length=len(head),
                    max_concurrency=1,
                    metadata=_digest_metadata(options),
                    overwrite=not options.create_only,
                )
                return
            blocks = rechunk(prepend([head], chunks), block_size)
            del head  # the re-chunker owns the first block now
            block_ids = await self._stage_blocks(blob, blocks)
            # The only step that makes the new version visible; If-None-Match: * makes it create-only, atomically.
            await blob.commit_block_list(
                block_list(block_ids), metadata=_digest_metadata(options), **_write_condition(options)
            )

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
        infos.sort(key=lambda info: info.path)  # Azure orders whole names, and "b.txt" < "b/" but "b" < "b.txt"
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
            if error_code(exc) == "ContainerNotFound":
                raise


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
