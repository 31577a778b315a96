"""Proxied uploads to GCS: one simple upload for a body that ends within the first block; otherwise a resumable
session driven here (gcloud-aio's "resumable" upload sends the whole body in one request). The object appears only
with the final chunk; any failure cancels the session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio

from app.errors import StorageUnavailable
from app.paths import ArtifactPath, EntryPath
from app.storage.base import WriteOptions
from app.storage.chunks import first_block
from app.storage.gcs.client import OCTET, GCSClient, logger


class ObjectWriter:
    """Writes request bodies as objects, holding about one block of a body in memory."""

    def __init__(self, client: GCSClient, block: int) -> None:
        self._client, self._block = client, block  # block: a multiple of 256 KiB, as resumable chunks must be

    async def write(self, path: EntryPath, chunks: AsyncIterator[bytes], options: WriteOptions) -> None:
        client, block = self._client, self._block
        head, ended = await first_block(chunks, block)
        # ifGenerationMatch=0: the object may not exist yet, checked atomically by GCS at finalisation.
        condition = {"ifGenerationMatch": "0"} if options.create_only else {}
        if ended:
            digest = options.digest()
            with client.errors("uploading an object", created=path):
                await client.storage.upload(
                    client.bucket,
                    client.object_name(path),
                    head,
                    content_type=OCTET,
                    force_resumable_upload=False,
                    parameters=condition or None,
                    metadata={"metadata": {"sha256": digest}} if digest else None,
                    timeout=client.sdk_timeout,
                )
            return
        session_uri = await self._initiate(client.object_name(path), condition)
        buffer = bytearray(head)
        del head  # hold one copy of the first block, not two
        try:
            await self._upload_chunks(session_uri, buffer, chunks, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cancel_session(session_uri)
            raise

    async def _upload_chunks(
        self, session_uri: str, buffer: bytearray, chunks: AsyncIterator[bytes], path: ArtifactPath
    ) -> None:
        block, offset, more = self._block, 0, True
        while more:
            # Hold back the last full block until more data arrives: the final chunk is then never empty (no
            # `bytes */TOTAL` request) and we never need a status query, which finalizes uploads on fake-gcs-server.
            while len(buffer) > block:
                with memoryview(buffer) as view:
                    piece = bytes(view[:block])
                del buffer[:block]  # CPython trims a bytearray's front without copying the rest
                await self._put_chunk(session_uri, piece, offset, None)
                offset += block
                del piece  # not held while waiting for the client's next bytes
            try:
                buffer += await anext(chunks)
            except StopAsyncIteration:
                more = False
        await self._put_chunk(session_uri, buffer, offset, offset + len(buffer), created=path)

    async def _initiate(self, name: str, condition: dict[str, str]) -> str:
        client = self._client
        with client.errors("starting an upload"):
            resp = await client.send(
                "POST",
                f"{client.api_root}/upload/storage/v1/b/{client.bucket}/o",
                (200, 201),
                params={"uploadType": "resumable", "name": name, **condition},
                data=json.dumps({"name": name, "contentType": OCTET}),
                headers={"Content-Type": "application/json; charset=UTF-8"},
            )
            resp.release()
        if not resp.headers.get("Location"):
            raise StorageUnavailable("Google Cloud Storage started an upload without a session URI")
        return resp.headers["Location"]

    async def _put_chunk(
        self,
        session_uri: str,
        data: bytes | bytearray,
        offset: int,
        total: int | None,
        created: ArtifactPath | None = None,
    ) -> None:
        last = offset + len(data) - 1
        headers = {"Content-Range": f"bytes {offset}-{last}/{'*' if total is None else total}", "Content-Type": OCTET}
        client = self._client
        with client.errors("uploading an object", created=created):
            ok = (308,) if total is None else (200, 201)
            resp = await client.send(
                "PUT", session_uri, ok, data=data, headers=headers, timeout=client.transfer_timeout
            )
            resp.release()
        if total is None and resp.headers.get("Range", "").rpartition("-")[2] != str(last):
            # GCS may persist less than it was sent; the client's retry resends the file, we do not.
            raise StorageUnavailable("Google Cloud Storage accepted only part of an upload chunk")

    async def _cancel_session(self, session_uri: str) -> None:
        try:
            resp = await self._client.send("DELETE", session_uri, (204, 404, 410, 499))
            resp.release()
        except Exception as exc:  # an unfinished session expires on its own after a week, never becoming visible
            logger.warning("could not cancel a GCS upload session: %s", type(exc).__name__)
