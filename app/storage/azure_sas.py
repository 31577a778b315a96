"""SAS URLs for AzureBlobStore (`app.storage.azure`): presigned multipart as Put Block URLs carrying a blob SAS, and
read-only SAS URLs for presigned downloads. A SAS is signed with the account key when there is one, otherwise with a
user delegation key obtained through the token credential (and cached until it nears expiry).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobClient

from app.downloads import content_disposition
from app.errors import (
    AlreadyExists,
    InvalidParameter,
    MultipartUploadUnsupported,
    PresignedDownloadUnsupported,
    ResourceNotFound,
)
from app.paths import ArtifactPath
from app.storage.azure_blocks import MAX_BLOCKS, block_list, encoded_id, expected_block_ids, part_block_id
from app.storage.azure_client import AzureClient, logger
from app.storage.azure_errors import error_code, storage_errors
from app.storage.base import (
    DEFAULT_COMPLETE,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    PartCredential,
    PresignedUrl,
)


class AzureSigning(AzureClient):
    """The MultipartUploads and PresignedDownloads capabilities of AzureBlobStore."""

    # signing -------------------------------------------------------------------------------------------------------
    def _now(self) -> datetime:
        """The signing clock (tests move it to get an already-expired SAS without waiting)."""
        return datetime.now(UTC)

    async def _sas(self, path: ArtifactPath, perm: str, ttl: int, unsupported: type[Exception], **extra: str) -> str:
        now = self._now()
        start, expiry = now - timedelta(minutes=5), now + timedelta(seconds=ttl)  # start earlier: clock skew
        common: dict[str, Any] = {"permission": BlobSasPermissions.from_string(perm), "start": start, "expiry": expiry}
        common.update(extra)
        args = (self._client().account_name or self.account, self.container_name, self._name(path))
        if self._account_key:
            return generate_blob_sas(*args, account_key=self._account_key, **common)
        with storage_errors("sign", path.canonical):
            try:
                key = await self._delegation_key(now, expiry)
            except HttpResponseError as exc:
                # The identity may read and write blobs yet lack the right to get a user delegation key.
                if error_code(exc) == "AuthorizationPermissionMismatch":
                    raise unsupported() from exc
                raise
        return generate_blob_sas(*args, user_delegation_key=key, **common)

    async def _delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        if self._delegation is not None and self._delegation[1] >= expiry:
            return self._delegation[0]
        key_expiry = min(expiry + timedelta(hours=12), now + timedelta(days=7))  # Azure's cap is 7 days
        assert self._service is not None
        key = await self._service.get_user_delegation_key(now - timedelta(minutes=5), key_expiry)
        self._delegation = (key, key_expiry)
        return key

    # multipart -----------------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        if not self.multipart_enabled:
            raise MultipartUploadUnsupported()
        if not 1 <= num_parts <= MAX_BLOCKS:
            raise InvalidParameter(f"Invalid value {num_parts} for parameter 'num_parts': Azure allows 1..{MAX_BLOCKS}")
        ttl = self.settings.multipart_url_ttl
        sas = await self._sas(path, "w", ttl, MultipartUploadUnsupported)
        url = self._blob(path).url
        credentials = [
            PartCredential(f"{url}?comp=block&blockid={quote(encoded_id(part_block_id(n)), safe='')}&{sas}", n)
            for n in range(1, num_parts + 1)
        ]
        return CreatedMultipartUpload(upload_id=None, credentials=credentials)

    async def complete_multipart_upload(
        self,
        path: ArtifactPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        block_ids = expected_block_ids(parts)
        blob = self._blob(path)
        # If-None-Match: * on the commit, the only step that makes the blob visible: atomic create-only.
        condition: dict[str, Any] = {"match_condition": MatchConditions.IfMissing} if options.create_only else {}
        with storage_errors("complete", path.canonical):
            if options.max_size is not None:
                options.check_size(await _staged_size(blob, block_ids))
            try:
                await blob.commit_block_list(block_list(block_ids), **condition)
            except HttpResponseError as exc:
                if options.create_only and _lost_create_only(exc):
                    if await _committed_from(blob, block_ids):
                        return  # a retried complete whose first attempt committed these very blocks
                    raise AlreadyExists(path.canonical) from exc
                if error_code(exc) != "InvalidBlockList":
                    raise
                if not await blob.exists():
                    raise ResourceNotFound(f"No upload in progress for '{path.canonical}'") from exc
                # A retried complete whose first attempt committed: the blocks are gone, the artifact is there.
                logger.info("complete of %r: no staged blocks but the blob exists; done already", path.canonical)

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        # Uncommitted blocks are invisible, and Azure has no call to drop them: they go with the blob's next commit,
        # or after 7 days. A refused complete (too large, or create-only against an existing blob) leaves them too.
        return None

    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        if not self.presigned_download_enabled:
            raise PresignedDownloadUnsupported()
        meta = await self._meta(path)
        ttl, disposition = self.settings.presigned_download_ttl, content_disposition(path.basename)
        sas = await self._sas(path, "r", ttl, PresignedDownloadUnsupported, content_disposition=disposition)
        return PresignedUrl(url=f"{self._blob(path).url}?{sas}", headers={}, file_size=meta.size)


def _lost_create_only(exc: HttpResponseError) -> bool:
    """Whether a create-only commit was refused because the blob exists (409 or 412, as the service words it)."""
    return isinstance(exc, ResourceExistsError) or error_code(exc) in ("BlobAlreadyExists", "ConditionNotMet")


async def _staged_size(blob: BlobClient, block_ids: list[str]) -> int:
    """Bytes staged under these block ids: the parts went straight to Azure, which alone knows their sizes."""
    try:
        _, staged = await blob.get_block_list("uncommitted")
    except ResourceNotFoundError:
        return 0  # nothing staged, no blob: the commit reports the missing upload
    wanted = set(block_ids)
    return sum(block.size for block in staged if block.id in wanted)


async def _committed_from(blob: BlobClient, block_ids: list[str]) -> bool:
    """Whether the blob is exactly these blocks, committed, none of them still staged: a refused commit leaves its
    blocks staged, a successful one consumed them."""
    committed, staged = await blob.get_block_list("all")
    return [block.id for block in committed] == block_ids and not {block.id for block in staged} & set(block_ids)
