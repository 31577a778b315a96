"""`S3ReadHandle`: an opened S3 object, its byte ranges streamed by ranged GetObjects in fixed-size chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.paths import ArtifactPath
from app.storage.base import ObjectMeta
from app.storage.s3.client import S3Client


class S3ReadHandle:
    def __init__(self, client: S3Client, path: ArtifactPath, meta: ObjectMeta, chunk_size: int) -> None:
        self.meta = meta
        self._client, self._path, self._chunk_size = client, path, chunk_size
        self._key = client.key(path)

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            return
        client, chunk_size = self._client, self._chunk_size
        args: dict[str, Any] = {
            "Bucket": client.bucket,
            "Key": self._key,
            "Range": f"bytes={start}-{end - 1}",
            **client.repeated_args("GetObject"),
        }
        if self.meta.etag:  # never splice a concurrent overwrite into a response sized for the old version
            args["IfMatch"] = self.meta.etag
        with client.errors("GetObject", self._path):
            response = await client.sdk.get_object(**args)
        body = response["Body"]
        try:
            while True:
                with client.errors("GetObject", self._path):
                    chunk = await _read_up_to(body, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def aclose(self) -> None:
        return None  # each iter_range closes its own body


async def _read_up_to(body: Any, size: int) -> bytes:
    """Read `size` bytes (fewer only at the end): aiohttp hands out whatever it has buffered, often 64-256 KiB."""
    buffer = bytearray()
    while len(buffer) < size:
        piece = await body.read(size - len(buffer))
        if not piece:
            break
        buffer += piece
    return bytes(buffer)
