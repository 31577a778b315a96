"""Presigned multipart uploads to GCS, without the XML API.

Neither gcloud-aio nor fake-gcs-server has XML-API multipart, so each part is a staging object under the reserved
`.artifact.uploading.mpu/` segment, PUT by the client to a V4-signed URL and composed into the target at complete
(32 sources per compose call: larger uploads are composed in groups, then the groups). The composed object carries
its upload id, so a retried complete succeeds. Create-only completes compose with `ifGenerationMatch=0`, settled by
GCS; a refused complete (too large, or the target exists) deletes its staging objects. Abandoned uploads leave
staging objects behind: give the bucket a lifecycle rule on that prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    IsADirectoryArtifact,
    MultipartUploadUnsupported,
    PayloadTooLarge,
    ResourceNotFound,
)
from app.paths import TEMP_PREFIX, ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.base import DEFAULT_COMPLETE, CompletedPart, CompleteOptions, CreatedMultipartUpload, PartCredential
from app.storage.gcs.client import OCTET, GCSClient, bounded, logger
from app.storage.gcs.signing import CannotSign, URLSigner

COMPOSE_LIMIT = 32  # sources per compose call
STAGING_DIR = f"{TEMP_PREFIX}mpu"
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
PART_NAME = re.compile(r"/part-(\d{5})$")
MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
UPLOAD_ID_KEY = "artifact-proxy-upload-id"  # custom metadata on a composed object, so a retried complete succeeds


class ComposedUploads:
    """Multipart uploads of one bucket: parts as staging objects, composed into the target at complete."""

    def __init__(self, client: GCSClient, signer: URLSigner | None, settings: Settings) -> None:
        self._client, self._signer, self._settings = client, signer, settings  # no signer: no part URLs

    def _staging(self, path: EntryPath, upload_id: str) -> str:
        # Bound to the key as well as the id: completing an upload under another path finds nothing.
        key_hash = hashlib.sha256(path.canonical.encode()).hexdigest()[:32]
        return f"{self._client.dir_prefix(ArtifactPath(''))}{STAGING_DIR}/{upload_id}/{key_hash}/"

    async def create(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        assert self._signer is not None
        upload_id = secrets.token_hex(16)
        staging = self._staging(path, upload_id)
        names = [f"{staging}part-{i:05d}" for i in range(1, num_parts + 1)]
        try:
            urls = await self._signer.urls("PUT", names, self._settings.multipart_url_ttl)
        except CannotSign as exc:  # the signer logged why; the MLflow client falls back to a proxied PUT
            raise MultipartUploadUnsupported() from exc
        return CreatedMultipartUpload(upload_id, [PartCredential(url, i, {}) for i, url in enumerate(urls, 1)])

    async def complete(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        if not upload_id or not UPLOAD_ID.match(upload_id):
            raise ResourceNotFound(f"No such multipart upload for '{path.canonical}'")
        numbers = [part.part_number for part in parts]
        if not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise InvalidParameter("'parts' must list part numbers 1..N in order, without gaps")
        staging = self._staging(path, upload_id)
        staged: dict[int, dict[str, Any]] = {}
        async for page in self._client.pages(staging):
            for item in page.get("items", []):
                if match := PART_NAME.search(item["name"]):
                    staged[int(match.group(1))] = item
        if not staged:
            if await self._completed_by(path, upload_id):
                return  # a retried complete: the first one finished
            raise ResourceNotFound(f"No such multipart upload for '{path.canonical}'")
        _check_parts(parts, staged)
        try:
            options.check_size(sum(int(staged[n].get("size", 0)) for n in numbers))
            await self._compose_tree(path, [staged[n]["name"] for n in numbers], staging, upload_id, options)
        except AlreadyExists:
            if await self._completed_by(path, upload_id):  # a retry racing its own first attempt's cleanup
                return
            await self._discard(staging, upload_id)
            raise
        except PayloadTooLarge:
            await self._discard(staging, upload_id)
            raise
        await self._discard(staging, upload_id)

    async def _discard(self, staging: str, upload_id: str) -> None:
        try:
            await self._client.delete_prefix(staging)
        except ArtifactProxyError:
            logger.warning("could not remove the staging objects of upload %s", upload_id)

    async def _completed_by(self, path: EntryPath, upload_id: str) -> bool:
        try:
            data = await self._client.stat(path)
        except (ArtifactNotFound, IsADirectoryArtifact):
            return False
        return bool((data.get("metadata") or {}).get(UPLOAD_ID_KEY) == upload_id)

    async def _compose_tree(
        self, path: EntryPath, sources: list[str], staging: str, upload_id: str, options: CompleteOptions
    ) -> None:
        level = 0
        while len(sources) > COMPOSE_LIMIT:  # at most 32 sources per call: compose groups, then the groups
            level += 1
            groups = [sources[i : i + COMPOSE_LIMIT] for i in range(0, len(sources), COMPOSE_LIMIT)]
            names = [f"{staging}compose-{level}-{j:05d}" for j in range(len(groups))]
            await bounded(self._compose(n, g, {}) for n, g in zip(names, groups, strict=True))
            sources = names
        # ifGenerationMatch=0: the target may not exist yet, checked atomically by GCS as the object is written.
        condition = {"ifGenerationMatch": "0"} if options.create_only else {}
        await self._compose(
            self._client.object_name(path), sources, {UPLOAD_ID_KEY: upload_id}, condition, created=path
        )

    async def _compose(
        self,
        target: str,
        sources: list[str],
        metadata: dict[str, str],
        condition: dict[str, str] | None = None,
        created: ArtifactPath | None = None,
    ) -> None:
        body = {
            "sourceObjects": [{"name": source} for source in sources],
            "destination": {"contentType": OCTET, "metadata": metadata},
        }
        client = self._client
        with client.errors("composing an upload", created=created):
            resp = await client.send(
                "POST",
                f"{client.object_url(target)}/compose",
                (200,),
                params=condition or None,
                data=json.dumps(body),
                headers={"Content-Type": "application/json; charset=UTF-8"},
            )
            resp.release()

    async def abort(self, path: EntryPath, upload_id: str | None) -> None:
        if upload_id and UPLOAD_ID.match(upload_id):  # anything else names no upload: nothing to abort
            await self._client.delete_prefix(self._staging(path, upload_id))


def _check_parts(parts: Sequence[CompletedPart], staged: dict[int, dict[str, Any]]) -> None:
    missing = [part.part_number for part in parts if part.part_number not in staged]
    if missing:
        raise InvalidParameter(f"Multipart upload is missing parts {missing[:10]}: upload them before completing")
    for part in parts:
        # A part's XML-API ETag is its MD5: a mismatch means the part was replaced after the client sent it.
        match, md5 = MD5_ETAG.match(part.etag or ""), staged[part.part_number].get("md5Hash")
        if match and md5 and base64.b64decode(md5).hex() != match.group(1).lower():
            raise InvalidParameter(f"Part {part.part_number} changed after it was uploaded (ETag mismatch)")
