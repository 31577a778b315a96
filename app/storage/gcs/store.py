"""GCSStore: the artifact operations over one bucket prefix, put together from the client (session, names, requests,
object primitives), the object writer (proxied uploads), the URL signer (a key or IAM, as `credentials.py` chooses)
and the composed uploads (presigned multipart). Listing and deleting are here: they are short, and only the store
needs them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from app.downloads import content_disposition
from app.errors import PresignedDownloadUnsupported
from app.paths import TEMP_PREFIX, ArtifactPath, EntryPath
from app.settings import Settings
from app.storage import StoreConfigError
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
from app.storage.gcs.client import GCSClient, logger
from app.storage.gcs.config import parse_gs_uri
from app.storage.gcs.credentials import choose_signer
from app.storage.gcs.multipart import ComposedUploads
from app.storage.gcs.reader import MAX_READ_CHUNK, GCSReadHandle
from app.storage.gcs.signing import CannotSign, URLSigner
from app.storage.gcs.writer import ObjectWriter
from app.storage.walks import relative_key


class GCSStore:
    """Artifacts as objects under `gs://bucket/prefix/`."""

    def __init__(self, uri: str, settings: Settings) -> None:
        bucket, prefix = parse_gs_uri(uri)
        self.settings, self.config = settings, settings.gcs
        self.client = GCSClient(bucket, prefix, settings, self.config)
        try:
            signer, self._signing = choose_signer(self.client)
        except (OSError, ValueError) as exc:
            raise StoreConfigError(f"Cannot use the Google credentials ({type(exc).__name__}): {exc}") from exc
        # Signed URLs point where clients must reach the bucket: the configured base, else the API root.
        base_url = self.config.signed_url_base or self.client.api_root
        self.url_signer = URLSigner(signer, bucket, base_url) if signer is not None else None
        self.capabilities = Capabilities(
            multipart_upload=settings.enable_multipart and self.url_signer is not None,
            presigned_download=settings.enable_presigned_download and self.url_signer is not None,
            can_presign=self.url_signer is not None,
        )
        self._read_chunk = min(self.config.download_chunk_size or settings.download_chunk_size, MAX_READ_CHUNK)
        self._writer = ObjectWriter(self.client, self.config.upload_block)
        self._uploads = ComposedUploads(self.client, self.url_signer, settings)

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.start()
        client = self.client
        logger.info(
            "GCS store gs://%s/%s via %s; URL signing %s", client.bucket, client.prefix, client.api_root, self._signing
        )

    async def close(self) -> None:
        await self.client.close()

    async def check_ready(self) -> None:
        await self.client.check_ready()

    # read and write ------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        return _meta(await self.client.stat(path))

    async def open_read(self, path: EntryPath) -> GCSReadHandle:
        data = await self.client.stat(path)
        return GCSReadHandle(self.client, path, _meta(data), data.get("generation"), self._read_chunk)

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        await self._writer.write(path, chunks, options)  # the size is not needed: the last chunk tells GCS the total

    # list and delete -----------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix, infos = self.client.dir_prefix(path), []
        async for page in self.client.pages(prefix, "/"):
            for item in page.get("items", []):
                if base := _child(item["name"], prefix):
                    infos.append(FileInfo(base, False, int(item.get("size", 0))))
            for sub in page.get("prefixes", []):
                if base := _child(sub[:-1], prefix):
                    infos.append(FileInfo(base, True))
        infos.sort(key=lambda info: info.path)  # GCS orders whole names (files, then prefixes): not our order
        return infos

    async def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        prefix = self.client.dir_prefix(path)
        async for page in self.client.pages(prefix):
            for item in page.get("items", []):
                if (name := relative_key(item["name"], prefix)) is not None:
                    updated = item.get("updated")
                    modified = datetime.fromisoformat(updated).timestamp() if updated else None
                    yield WalkEntry(name, int(item.get("size", 0)), modified)

    async def delete(self, path: EntryPath) -> None:
        await self.client.delete_objects([self.client.object_name(path)])
        await self.client.delete_prefix(self.client.dir_prefix(path))

    # presigned multipart -------------------------------------------------------------------------------------------
    # The routes call these only when `capabilities` offers them (app/storage/base.py): then there is a signer. One
    # that cannot sign after all (IAM refusing) answers the 501s the MLflow client knows, as a store without one would.
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._uploads.create(path, num_parts)

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self._uploads.complete(path, upload_id, parts, options)

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        await self._uploads.abort(path, upload_id)

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        assert self.url_signer is not None
        data = await self.client.stat(path)
        query = {"response-content-disposition": content_disposition(path.basename)}
        if data.get("generation"):
            query["generation"] = str(data["generation"])  # every ranged fetch then reads the same version
        ttl = self.settings.presigned_download_ttl
        try:
            url = await self.url_signer.url("GET", self.client.object_name(path), ttl, query)
        except CannotSign as exc:  # the signer logged why; a client told to fall back reads through us
            raise PresignedDownloadUnsupported() from exc
        return PresignedUrl(url, {}, int(data.get("size", 0)))


def _child(name: str, prefix: str) -> str | None:
    """The basename of a listed key one level below `prefix`; None for the placeholder, strays and staging."""
    base = name[len(prefix) :] if name.startswith(prefix) else ""
    return base if base and "/" not in base and not base.startswith(TEMP_PREFIX) else None


def _meta(data: dict[str, Any]) -> ObjectMeta:
    """An object resource's metadata; the generation is the ETag, so a replaced object never matches."""
    updated, generation = data.get("updated"), data.get("generation")
    return ObjectMeta(
        sha256=(data.get("metadata") or {}).get("sha256"),
        size=int(data.get("size", 0)),
        etag=f'"{generation}"' if generation else None,
        last_modified=datetime.fromisoformat(updated).timestamp() if updated else None,
    )
