"""Google Cloud Storage backend for `gs://bucket/optional/prefix`, on gcloud-aio-storage.

- One aiohttp session per process, opened in `start()`, shared by gcloud-aio's `Storage` and our streamed requests.
- Reads: object metadata, then ranged `alt=media` downloads pinned to the generation seen at open, so a concurrent
  overwrite never splices two versions into one response.
- Writes: one simple upload for bodies ending within the first block; otherwise a resumable session driven here
  (gcloud-aio's "resumable" upload sends the whole body in one request). The object appears only with the final
  chunk; any failure cancels the session.
- Multipart: neither gcloud-aio nor fake-gcs-server has XML-API multipart, so each part is a staging object under
  the reserved `.artifact.uploading.mpu/` segment, PUT by the client to a V4-signed URL and composed into the target
  at complete. Abandoned uploads leave staging objects behind: give the bucket a lifecycle rule on that prefix.

The session, requests and error mapping live in `gcs_client`, multipart in `gcs_multipart`, URL signing in
`gcs_signing`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

import anyio

from app.downloads import content_disposition
from app.errors import ArtifactNotFound, InvalidParameter, PresignedDownloadUnsupported, StorageUnavailable
from app.paths import TEMP_PREFIX, ArtifactPath
from app.storage.base import DEFAULT_WRITE, FileInfo, ObjectMeta, PresignedUrl, WriteOptions
from app.storage.chunks import first_block
from app.storage.gcs_client import OCTET, GCSClient, GCSConfig, logger, parse_gs_uri
from app.storage.gcs_multipart import GCSMultipart
from app.storage.gcs_signing import signed_url

# GCSConfig and parse_gs_uri live in gcs_client; callers import them from here too.
__all__ = ["GCSConfig", "GCSReadHandle", "GCSStore", "parse_gs_uri"]


class GCSReadHandle:
    def __init__(self, store: GCSStore, path: ArtifactPath, meta: ObjectMeta, generation: str | None) -> None:
        self.meta = meta
        self._store, self._path, self._generation = store, path, generation

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if end > start:
            async for chunk in self._store.stream_range(self._path, self._generation, start, end):
                yield chunk

    async def aclose(self) -> None:
        return None  # each range is its own request, closed when its iteration ends


class GCSStore(GCSMultipart, GCSClient):
    """Artifacts as objects under `gs://bucket/prefix/`; the plumbing is in GCSClient, multipart in GCSMultipart."""

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> GCSReadHandle:
        data = await self._stat(path)
        updated, generation = data.get("updated"), data.get("generation")
        meta = ObjectMeta(
            sha256=(data.get("metadata") or {}).get("sha256"),
            size=int(data.get("size", 0)),
            etag=f'"{generation}"' if generation else None,
            last_modified=datetime.fromisoformat(updated).timestamp() if updated else None,
        )
        return GCSReadHandle(self, path, meta, generation)

    async def stream_range(
        self, path: ArtifactPath, generation: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of one generation, yielded in chunks of at most `_read_chunk`."""
        params = {"alt": "media", **({"generation": generation} if generation else {})}
        # Accept-Encoding: gzip turns off decompressive transcoding, so offsets match the stored size.
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"}
        try:
            with self._errors("reading an object", path):
                resp = await self._send(
                    "GET",
                    self._object_url(self._name(path)),
                    (200, 206),
                    params=params,
                    headers=headers,
                    timeout=self._data_timeout,
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
            with self._errors("reading an object", path):
                async for piece in resp.content.iter_any():
                    piece, skip = piece[skip:], max(0, skip - len(piece))
                    piece = piece[:remaining]
                    buffer += piece
                    remaining -= len(piece)
                    while len(buffer) >= self._read_chunk or (buffer and not remaining):
                        with memoryview(buffer) as view:  # a network read may bring more than one chunk
                            chunk = bytes(view[: self._read_chunk])
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

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        if path.is_root:
            raise InvalidParameter("Artifact path must include a filename (cannot end with '/').")
        block = self.config.upload_block
        head, ended = await first_block(chunks, block)
        # ifGenerationMatch=0: the object may not exist yet, checked atomically by GCS at finalisation.
        condition = {"ifGenerationMatch": "0"} if options.create_only else {}
        if ended:
            digest = options.digest()
            with self._errors("uploading an object", created=path):
                await self.storage.upload(
                    self.bucket,
                    self._name(path),
                    head,
                    content_type=OCTET,
                    force_resumable_upload=False,
                    parameters=condition or None,
                    metadata={"metadata": {"sha256": digest}} if digest else None,
                    timeout=self._seconds,
                )
            return
        session_uri = await self._initiate(self._name(path), condition)
        buffer = bytearray(head)
        del head  # hold one copy of the first block, not two
        try:
            await self._upload_chunks(session_uri, buffer, chunks, block, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cancel_session(session_uri)
            raise

    async def _upload_chunks(
        self, session_uri: str, buffer: bytearray, chunks: AsyncIterator[bytes], block: int, path: ArtifactPath
    ) -> None:
        offset, more = 0, True
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
        with self._errors("starting an upload"):
            resp = await self._send(
                "POST",
                f"{self.api_root}/upload/storage/v1/b/{self.bucket}/o",
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
        with self._errors("uploading an object", created=created):
            ok = (308,) if total is None else (200, 201)
            resp = await self._send("PUT", session_uri, ok, data=data, headers=headers, timeout=self._data_timeout)
            resp.release()
        if total is None and resp.headers.get("Range", "").rpartition("-")[2] != str(last):
            # GCS may persist less than it was sent; the client's retry resends the file, we do not.
            raise StorageUnavailable("Google Cloud Storage accepted only part of an upload chunk")

    async def _cancel_session(self, session_uri: str) -> None:
        try:
            resp = await self._send("DELETE", session_uri, (204, 404, 410, 499))
            resp.release()
        except Exception as exc:  # an unfinished session expires on its own after a week, never becoming visible
            logger.warning("could not cancel a GCS upload session: %s", type(exc).__name__)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix, infos = self._dir(path), []
        async for page in self._pages(prefix, "/"):
            for item in page.get("items", []):
                if base := _child(item["name"], prefix):
                    infos.append(FileInfo(base, False, int(item.get("size", 0))))
            for sub in page.get("prefixes", []):
                if base := _child(sub[:-1], prefix):
                    infos.append(FileInfo(base, True))
        infos.sort(key=lambda info: info.path)  # GCS orders whole names (files, then prefixes): not our order
        return infos

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        await self._delete_objects([self._name(path)])
        await self._delete_prefix(self._dir(path))

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        if not self.presigned_download_enabled or self._key is None:
            raise PresignedDownloadUnsupported()
        data = await self._stat(path)
        query = {"response-content-disposition": content_disposition(path.basename)}
        if data.get("generation"):
            query["generation"] = str(data["generation"])  # every ranged fetch then reads the same version
        url = signed_url(
            self._key,
            method="GET",
            bucket=self.bucket,
            object_name=self._name(path),
            expires_in=self.settings.presigned_download_ttl,
            base_url=self.signed_url_base,
            query=query,
        )
        return PresignedUrl(url, {}, int(data.get("size", 0)))


def _child(name: str, prefix: str) -> str | None:
    """The basename of a listed key one level below `prefix`; None for the placeholder, strays and staging."""
    base = name[len(prefix) :] if name.startswith(prefix) else ""
    return base if base and "/" not in base and not base.startswith(TEMP_PREFIX) else None
