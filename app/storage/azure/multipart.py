"""Presigned multipart on Azure: each part is a Put Block URL carrying a blob SAS and the block id of its part number,
and completing commits the block ids derived from the part numbers (never ids a client sent). Azure keeps no upload
object, so there is no upload id and nothing to abort.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import BlobClient

from app.errors import AlreadyExists, InvalidParameter, MultipartUploadUnsupported, ResourceNotFound
from app.paths import EntryPath
from app.settings import Settings
from app.storage.azure.blocks import MAX_BLOCKS, block_list, encoded_id, expected_block_ids, part_block_id
from app.storage.azure.client import AzureClient
from app.storage.azure.errors import error_code, storage_errors
from app.storage.azure.sas import SasSigner
from app.storage.base import DEFAULT_COMPLETE, CompletedPart, CompleteOptions, CreatedMultipartUpload, PartCredential

logger = logging.getLogger("artifact_proxy.storage.azure")


class BlockListUploads:
    """Multipart uploads of one container as staged blocks, committed as a block list at complete."""

    def __init__(self, client: AzureClient, signer: SasSigner, settings: Settings) -> None:
        self._client, self._signer, self._settings = client, signer, settings

    async def create(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        if not 1 <= num_parts <= MAX_BLOCKS:
            raise InvalidParameter(f"Invalid value {num_parts} for parameter 'num_parts': Azure allows 1..{MAX_BLOCKS}")
        ttl = self._settings.multipart_url_ttl
        sas = await self._signer.sign(path, "w", ttl, MultipartUploadUnsupported)
        url = self._client.blob(path).url
        credentials = [
            PartCredential(f"{url}?comp=block&blockid={quote(encoded_id(part_block_id(n)), safe='')}&{sas}", n)
            for n in range(1, num_parts + 1)
        ]
        return CreatedMultipartUpload(upload_id=None, credentials=credentials)

    async def complete(
        self, path: EntryPath, parts: Sequence[CompletedPart], options: CompleteOptions = DEFAULT_COMPLETE
    ) -> None:
        block_ids = expected_block_ids(parts)
        blob = self._client.blob(path)
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
