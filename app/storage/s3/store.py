"""`S3Store`: artifacts as objects under `s3://bucket/prefix`, served through aiobotocore.

The store is composed of three parts, each in its own module: the `S3Client` (the shared aiobotocore clients, keys,
error mapping, HEAD), the `S3Uploader` (a stream as a server-side multipart upload) and the `S3Presigner` (presigned
multipart uploads and downloads). The store itself reads, writes, lists and deletes, and hands the capabilities of
`MultipartUploads` and `PresignedDownloads` to the presigner.

One aiobotocore client per process, opened in `start()`, so its connection pool is shared by every request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from botocore import exceptions as bce

from app.paths import TEMP_PREFIX, ArtifactPath, EntryPath
from app.settings import Settings
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
from app.storage.chunks import prepend
from app.storage.s3.client import DIGEST_TAG, S3Client
from app.storage.s3.errors import map_error
from app.storage.s3.presign import S3Presigner, presign_blocker
from app.storage.s3.read import S3ReadHandle
from app.storage.s3.upload import S3Uploader, first_part, part_size_for
from app.storage.walks import relative_key

logger = logging.getLogger("artifact_proxy.storage.s3")

DELETE_BATCH = 1000  # the DeleteObjects limit


class S3Store:
    """Artifacts as objects under `s3://bucket/prefix`."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.settings, self.config = settings, settings.s3
        blocker = presign_blocker(self.config.upload_extra_args)
        self.capabilities = Capabilities(
            multipart_upload=settings.enable_multipart and blocker is None,
            presigned_download=settings.enable_presigned_download and blocker is None,
            can_presign=blocker is None,
            presign_blocker=blocker,
        )
        self.client = S3Client(uri, settings, self.config)
        self._uploader = S3Uploader(self.client, self.config)
        self._presigner = S3Presigner(self.client, settings)

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.start()
        if self.capabilities.presign_blocker:
            # Clients only see "Presigned artifact transfers are unavailable."; the operator needs the reason.
            logger.warning("presigned multipart uploads and downloads are off: %s", self.capabilities.presign_blocker)

    async def close(self) -> None:
        await self.client.close()

    async def check_ready(self) -> None:
        await self.client.check_ready()

    # read ----------------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        return await self.client.head(path)

    async def open_read(self, path: EntryPath) -> S3ReadHandle:
        return S3ReadHandle(self.client, path, await self.client.head(path), self.settings.download_chunk_size)

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        part_size = part_size_for(size, self.config.part_size)
        head, ended = await first_part(chunks, part_size)
        condition = {"IfNoneMatch": "*"} if options.create_only else {}  # atomic create-only, settled by S3
        if ended:
            client = self.client
            args = {**client.upload_args(path), **condition}
            if digest := options.digest():
                args["Metadata"] = {**args.get("Metadata", {}), DIGEST_TAG: digest}
            body = b"".join(head)  # no copy when the body came as one chunk
            del head
            with client.errors("PutObject", path):
                await client.sdk.put_object(Bucket=client.bucket, Key=client.key(path), Body=body, **args)
            return
        etag = await self._uploader.upload(path, prepend(head, chunks), part_size, condition)
        if digest := options.digest():
            await self._uploader.tag_digest(path, digest, etag)

    # list ----------------------------------------------------------------------------------------------------------
    async def _pages(self, path: ArtifactPath, prefix: str, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        client = self.client
        args: dict[str, Any] = {"Bucket": client.bucket, "Prefix": prefix, "MaxKeys": self.config.list_page_size}
        if delimiter:
            args["Delimiter"] = "/"
        while True:
            with client.errors("ListObjectsV2", path):
                page = await client.sdk.list_objects_v2(**args)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix = self.client.dir_prefix(path)
        infos: list[FileInfo] = []
        async for page in self._pages(path, prefix, delimiter=True):
            for obj in page.get("Contents", []):
                name = _child_name(obj["Key"], prefix)
                if name is not None:  # skips the placeholder key equal to the prefix, and foreign keys
                    infos.append(FileInfo(name, False, int(obj.get("Size", 0))))
            for common in page.get("CommonPrefixes", []):
                name = _child_name(common["Prefix"].removesuffix("/"), prefix)
                if name is not None:
                    infos.append(FileInfo(name, True))
        infos.sort(key=lambda info: info.path)
        return infos

    async def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        prefix = self.client.dir_prefix(path)
        async for page in self._pages(path, prefix, delimiter=False):
            for obj in page.get("Contents", []):
                if (name := relative_key(obj["Key"], prefix)) is not None:
                    modified = obj.get("LastModified")
                    yield WalkEntry(name, int(obj.get("Size", 0)), modified.timestamp() if modified else None)

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: EntryPath) -> None:
        key, prefix = self.client.key(path), self.client.dir_prefix(path)
        batch: list[str] = []
        markers: set[str] = set()
        async for page in self._pages(path, prefix, delimiter=False):
            keys = [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].startswith(prefix)]
            markers.update(marker for k in keys for marker in _parent_markers(k, prefix))
            batch += keys
            while len(batch) >= DELETE_BATCH:
                await self._delete_keys(path, batch[:DELETE_BATCH])
                del batch[:DELETE_BATCH]
        # Then the directory markers, deepest first, and the exact key. Consoles create markers; filer-backed stores
        # (SeaweedFS) keep a directory entry per level that lingers in listings unless its marker is deleted.
        batch += [*sorted(markers, key=lambda m: -m.count("/")), prefix, key]
        for start in range(0, len(batch), DELETE_BATCH):
            await self._delete_keys(path, batch[start : start + DELETE_BATCH])

    async def _delete_keys(self, path: ArtifactPath, keys: Sequence[str]) -> None:
        client = self.client
        objects = [{"Key": key} for key in dict.fromkeys(keys)]
        with client.errors("DeleteObjects", path):
            response = await client.sdk.delete_objects(Bucket=client.bucket, Delete={"Objects": objects, "Quiet": True})
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            error = bce.ClientError(
                {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "DeleteObjects"
            )
            raise map_error(error, "DeleteObjects", f"s3://{client.bucket}/{first.get('Key')}", None)

    # presigned multipart and downloads: the presigner's ------------------------------------------------------------
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._presigner.create_multipart_upload(path, num_parts)

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self._presigner.complete_multipart_upload(path, upload_id, parts, options)

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        await self._presigner.abort_multipart_upload(path, upload_id)

    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        return await self._presigner.presign_download(path)


def _parent_markers(key: str, prefix: str) -> list[str]:
    """`pre/a/b/c` under `pre/` -> [`pre/a/`, `pre/a/b/`]: the directory levels a key implies below the prefix."""
    parts = key[len(prefix) :].split("/")[:-1]
    return [prefix + "/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def _child_name(key: str, prefix: str) -> str | None:
    """The basename of a listed key or common prefix under `prefix`, or None when it must not be listed."""
    if not key.startswith(prefix):
        return None
    name = key[len(prefix) :]
    if not name or "/" in name or name.startswith(TEMP_PREFIX):
        return None
    return name
