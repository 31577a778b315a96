"""Ranged reads of one blob version: every range is its own request, conditioned on the ETag seen at open."""

from __future__ import annotations

from collections.abc import AsyncIterator

from azure.core import MatchConditions
from azure.storage.blob.aio import BlobClient

from app.storage.azure.errors import storage_errors
from app.storage.base import ObjectMeta


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
