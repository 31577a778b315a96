"""S3 and S3-compatible backend (aiobotocore): streamed puts via server-side multipart, ranged gets, presigning.

One aiobotocore client per process, opened in `start()`, so its connection pool is shared by every request. A second
client exists only when presigned URLs must name a different (public) endpoint than the one the server uses: SigV4
signs the Host, so a URL signed for an internal endpoint fails for clients outside.

Settings, clients, keys and shared primitives live in `client`, error mapping in `errors`, streamed multipart uploads
in `upload`, presigned multipart and downloads in `presign`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from botocore import exceptions as bce

from app.errors import InvalidParameter
from app.paths import TEMP_PREFIX, ArtifactPath
from app.storage.base import DEFAULT_WRITE, FileInfo, ObjectMeta, WriteOptions
from app.storage.chunks import prepend
from app.storage.s3.client import DIGEST_TAG, S3Client
from app.storage.s3.errors import map_error
from app.storage.s3.presign import S3Presign
from app.storage.s3.upload import MAX_PARTS, S3Upload, _first_part, part_size_for

DELETE_BATCH = 1000  # the DeleteObjects limit


class S3ReadHandle:
    def __init__(self, store: S3Store, path: ArtifactPath, key: str, meta: ObjectMeta) -> None:
        self.meta = meta
        self._store, self._path, self._key = store, path, key

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            return
        store, chunk_size = self._store, self._store.settings.download_chunk_size
        args: dict[str, Any] = {"Bucket": store.bucket, "Key": self._key, "Range": f"bytes={start}-{end - 1}"}
        if self.meta.etag:  # never splice a concurrent overwrite into a response sized for the old version
            args["IfMatch"] = self.meta.etag
        with store.errors("GetObject", self._path):
            response = await store.client.get_object(**args)
        body = response["Body"]
        try:
            while True:
                with store.errors("GetObject", self._path):
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


class S3Store(S3Presign, S3Upload, S3Client):
    """Artifacts as objects under `s3://bucket/prefix`."""

    def _max_parts(self) -> int:
        return MAX_PARTS  # this module's name, read per upload: a test lowers `app.storage.s3.store.MAX_PARTS`

    # read ----------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> S3ReadHandle:
        return S3ReadHandle(self, path, self._key(path), await self._head(path))

    # write ---------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        part_size = part_size_for(size, self.config.part_size)
        head, ended = await _first_part(chunks, part_size)
        condition = {"IfNoneMatch": "*"} if options.create_only else {}  # atomic create-only, settled by S3
        if ended:
            args = {**self.config.upload_extra_args, **condition}
            if digest := options.digest():
                args["Metadata"] = {**args.get("Metadata", {}), DIGEST_TAG: digest}
            body = b"".join(head)  # no copy when the body came as one chunk
            del head
            with self.errors("PutObject", path):
                await self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=body, **args)
            return
        etag = await self._write_multipart(path, prepend(head, chunks), part_size, condition)
        if digest := options.digest():
            await self._tag_digest(path, digest, etag)

    # list ----------------------------------------------------------------------------------------------------------
    async def _pages(self, path: ArtifactPath, prefix: str, delimiter: bool) -> AsyncIterator[dict[str, Any]]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.config.list_page_size}
        if delimiter:
            args["Delimiter"] = "/"
        while True:
            with self.errors("ListObjectsV2", path):
                page = await self.client.list_objects_v2(**args)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        prefix = self._dir_prefix(path)
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

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        key, prefix = self._key(path), self._dir_prefix(path)
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
        objects = [{"Key": key} for key in dict.fromkeys(keys)]
        with self.errors("DeleteObjects", path):
            response = await self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            error = bce.ClientError(
                {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "DeleteObjects"
            )
            raise map_error(error, "DeleteObjects", f"s3://{self.bucket}/{first.get('Key')}", None)


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
