"""Ranged reads of one object generation: every range is its own `alt=media` request pinned to the generation seen
at open, so a concurrent overwrite never splices two versions into one response."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.errors import ArtifactNotFound, StorageUnavailable
from app.paths import ArtifactPath
from app.storage.base import ObjectMeta
from app.storage.gcs.client import GCSClient

MAX_READ_CHUNK = 8 * 1024 * 1024  # MLflow's 100 MiB download chunk would be held in memory per reader


class GCSReadHandle:
    def __init__(
        self, client: GCSClient, path: ArtifactPath, meta: ObjectMeta, generation: str | None, chunk_size: int
    ) -> None:
        self.meta = meta
        self._client, self._path, self._generation, self._chunk_size = client, path, generation, chunk_size

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the generation, yielded in chunks of at most `chunk_size`."""
        if end <= start:
            return
        client, path, generation, chunk_size = self._client, self._path, self._generation, self._chunk_size
        params = {"alt": "media", **({"generation": generation} if generation else {})}
        # Accept-Encoding: gzip turns off decompressive transcoding, so offsets match the stored size.
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"}
        try:
            with client.errors("reading an object", path):
                resp = await client.send(
                    "GET",
                    client.object_url(client.object_name(path)),
                    (200, 206),
                    params=params,
                    headers=headers,
                    timeout=client.transfer_timeout,
                    auto_decompress=False,
                )
        except ArtifactNotFound:
            if generation is None:
                raise
            # The generation opened is gone: the object was replaced (or deleted) since open_read, not missing.
            raise StorageUnavailable("The artifact changed while it was being read; retry", retry_after=1) from None
        # A 200 means the server ignored Range and sends the whole object: skip up to `start`.
        skip, remaining, buffer = (start if resp.status == 200 else 0), end - start, bytearray()
        try:
            with client.errors("reading an object", path):
                async for piece in resp.content.iter_any():
                    piece, skip = piece[skip:], max(0, skip - len(piece))
                    piece = piece[:remaining]
                    buffer += piece
                    remaining -= len(piece)
                    while len(buffer) >= chunk_size or (buffer and not remaining):
                        with memoryview(buffer) as view:  # a network read may bring more than one chunk
                            chunk = bytes(view[:chunk_size])
                        del buffer[: len(chunk)]
                        yield chunk
                    if not remaining:
                        break
            if remaining:
                raise StorageUnavailable("Google Cloud Storage ended a download early")
        finally:
            if remaining:
                resp.close()  # an unread body: drop the connection rather than drain it
            else:
                resp.release()

    async def aclose(self) -> None:
        return None  # each range is its own request, closed when its iteration ends
