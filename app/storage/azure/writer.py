"""Proxied uploads to Azure: a body that ends within the first block is one Put Blob; a larger one is streamed into
staged blocks, which become visible only at Put Block List, so a failed upload leaves nothing behind but invisible
blocks that Azure drops on its own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob.aio import BlobClient

from app.errors import PayloadTooLarge
from app.paths import EntryPath
from app.storage.azure.blocks import MAX_BLOCKS, PROXY_ID, block_list
from app.storage.azure.client import AzureClient
from app.storage.azure.errors import storage_errors
from app.storage.base import WriteOptions
from app.storage.chunks import first_block, prepend, rechunk


class BlockWriter:
    """Writes request bodies as block blobs, holding at most two blocks of a body in memory."""

    def __init__(self, client: AzureClient, block_size: int) -> None:
        self._client, self._block_size = client, block_size

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions
    ) -> None:
        block_size = self._block_size
        if size is not None and size > block_size * MAX_BLOCKS:
            raise PayloadTooLarge(f"Artifacts larger than {block_size * MAX_BLOCKS} bytes exceed Azure's block limit")
        blob = self._client.blob(path)
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
            block_ids = await _stage_blocks(blob, blocks)
            # The only step that makes the new version visible; If-None-Match: * makes it create-only, atomically.
            await blob.commit_block_list(
                block_list(block_ids), metadata=_digest_metadata(options), **_write_condition(options)
            )


async def _stage_blocks(blob: BlobClient, blocks: AsyncIterator[bytes]) -> list[str]:
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


def _digest_metadata(options: WriteOptions) -> dict[str, str] | None:
    digest = options.digest()
    return {"sha256": digest} if digest else None


def _write_condition(options: WriteOptions) -> dict[str, Any]:
    if options.create_only:
        return {"match_condition": MatchConditions.IfMissing}  # If-None-Match: * (the SDK supplies the "*")
    return {}
