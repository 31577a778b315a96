"""Streamed uploads to S3: part sizing, reusable part buffers, and `S3Uploader`, which sends a stream as a
server-side multipart upload with up to `upload_concurrency` parts in flight.

A body that ends within the first part goes as one PutObject instead (S3Store decides, with `first_part`); a longer
one is copied once into part buffers, each uploaded as soon as it is full. Memory stays at `upload_concurrency + 1`
parts per upload, and a failed or cancelled upload is aborted.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio

from app.errors import ArtifactProxyError, PayloadTooLarge
from app.paths import ArtifactPath
from app.storage.s3.client import DIGEST_TAG, ETAG_TAG, S3Client
from app.store_settings import MiB, S3Settings

MAX_PARTS = 10_000  # the most parts one S3 upload may have; read at each use, so it can be lowered in tests


def part_size_for(size: int | None, minimum: int) -> int:
    """The part size: `minimum`, grown (in whole MiB) when the announced size would need more than 10,000 parts."""
    if size is None or size <= minimum * MAX_PARTS:
        return minimum
    return math.ceil(size / MAX_PARTS / MiB) * MiB


class PartBuffer(bytearray):
    """A part's bytes, reused from part to part, whose slices are views: aiohttp sends a body of known length as
    `body[:content_length]`, which would copy a plain bytearray. (A bytes body is not copied there, but botocore
    wraps bytes in a BytesIO, which aiohttp then copies out 64 KiB at a time.)"""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return memoryview(self)[index]
        return super().__getitem__(index)


async def first_part(chunks: AsyncIterator[bytes], part_size: int) -> tuple[list[bytes], bool]:
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


class S3Uploader:
    """Writes a stream to one key as a server-side multipart upload, completed only once every part is stored."""

    def __init__(self, client: S3Client, config: S3Settings) -> None:
        self._client, self._config = client, config

    async def upload(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], part_size: int, condition: dict[str, str]
    ) -> str:
        """Upload the stream in parts of `part_size` and complete it with `condition` (If-None-Match); its ETag."""
        client = self._client
        upload_id = await client.create_upload(path)
        try:
            parts = await self._upload_parts(path, upload_id, chunks, part_size)
            # botocore raises on CompleteMultipartUpload's "200 with an error in the body", so success is real.
            with client.errors("CompleteMultipartUpload", path):
                done = await client.sdk.complete_multipart_upload(
                    Bucket=client.bucket,
                    Key=client.key(path),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                    **client.repeated_args("CompleteMultipartUpload"),
                )
        except BaseException:
            await client.abort_quietly(path, upload_id)
            raise
        return str(done.get("ETag", ""))

    async def tag_digest(self, path: ArtifactPath, digest: str, etag: str) -> None:
        """Record a multipart object's SHA-256, known only after its last part, as tags (metadata is fixed at
        create). The ETag tag ties them to this object: a concurrent overwrite cannot inherit a wrong digest."""
        client = self._client
        tags = [{"Key": DIGEST_TAG, "Value": digest}, {"Key": ETAG_TAG, "Value": etag.strip('"')}]
        try:
            with client.errors("PutObjectTagging", path):
                await client.sdk.put_object_tagging(
                    Bucket=client.bucket, Key=client.key(path), Tagging={"TagSet": tags}
                )
        except ArtifactProxyError:
            pass  # optional: the object is stored; it is served without a Repr-Digest

    async def _upload_parts(
        self, path: ArtifactPath, upload_id: str, chunks: AsyncIterator[bytes], part_size: int
    ) -> list[dict[str, Any]]:
        """Copy the stream into part buffers and upload each full one, up to `upload_concurrency` at once.

        Memory stays at `upload_concurrency + 1` part buffers, allocated once per upload and reused: a buffer goes
        back to the pool when S3 has answered for its part (every byte of it sent), so there is no per-part
        allocation and no copy besides the one into the buffer. Receiving waits while all uploads are busy, which
        is the backpressure on the client. A failed part fails the write when the next part is due, at the latest.
        """
        limit, max_parts = self._config.upload_concurrency, MAX_PARTS
        running: dict[asyncio.Future[dict[str, Any]], PartBuffer] = {}
        free: list[PartBuffer] = []
        parts: list[dict[str, Any]] = []

        def collect() -> None:
            for task in [task for task in running if task.done()]:
                free.append(running.pop(task))
                parts.append(task.result())  # raises the part's failure

        async def send(buffer: PartBuffer) -> None:
            collect()
            while len(running) >= limit:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                collect()
            number = len(parts) + len(running) + 1
            if number > max_parts:
                raise PayloadTooLarge(f"Upload exceeds {max_parts} parts; send Content-Length or a smaller file")
            running[asyncio.ensure_future(self._upload_part(path, upload_id, number, buffer))] = buffer

        try:
            buffer, filled = PartBuffer(), 0
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    if not buffer:
                        buffer, filled = (free.pop() if free else PartBuffer(part_size)), 0
                    n = min(len(view), part_size - filled)
                    buffer[filled : filled + n] = view[:n]
                    filled, view = filled + n, view[n:]
                    if filled == part_size:
                        await send(buffer)
                        buffer = PartBuffer()
                del view, chunk
            if buffer and filled:
                last = PartBuffer(buffer[:filled])  # the short last part, sized exactly: its one extra copy
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
        client = self._client
        extra = client.repeated_args("UploadPart")
        with client.errors("UploadPart", path):
            response = await client.sdk.upload_part(
                Bucket=client.bucket, Key=client.key(path), UploadId=upload_id, PartNumber=number, Body=block, **extra
            )
        # An upload created with a ChecksumAlgorithm is completed only with each part's checksum listed.
        checksums = {k: v for k, v in response.items() if k.startswith("Checksum") and k != "ChecksumType"}
        return {"PartNumber": number, "ETag": response["ETag"], **checksums}
