"""Block ids and block lists for Azure block blobs: one id scheme for the blocks proxied uploads stage and for the
parts clients PUT to presigned URLs, and the check that a completed part list names them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobBlock

from app.errors import InvalidParameter
from app.storage.base import CompletedPart

MAX_BLOCKS = 50_000  # Azure's limit of committed blocks per blob
# Azure refuses Put Block when the blob already has uncommitted blocks whose ids differ in length (Azurite too), so
# every id we ever stage on any blob is 18 characters: presigned parts and proxied uploads may meet on one blob.
PART_ID = "mlflow_block_{:05d}"
PROXY_ID = "w{token}{index:05d}"  # token: 12 hex digits, random per upload so concurrent PUTs never share blocks


def encoded_id(block_id: str) -> str:
    return base64.b64encode(block_id.encode()).decode()


def part_block_id(part_number: int) -> str:
    if not 1 <= part_number <= MAX_BLOCKS:
        raise InvalidParameter(f"Invalid part_number {part_number}: Azure allows parts 1..{MAX_BLOCKS}")
    return PART_ID.format(part_number)


def block_list(block_ids: list[str]) -> list[BlobBlock]:
    return [BlobBlock(block_id) for block_id in block_ids]  # state "latest": uncommitted, else committed


def expected_block_ids(parts: Sequence[CompletedPart]) -> list[str]:
    """Block ids in part order, derived from part numbers; each part's URL must carry exactly its own id."""
    if not parts:
        raise InvalidParameter("Missing value for required parameter 'parts'")
    ordered = sorted(parts, key=lambda part: part.part_number)
    block_ids: list[str] = []
    for part in ordered:
        expected = part_block_id(part.part_number)
        if block_ids and block_ids[-1] == expected:
            raise InvalidParameter(f"Duplicate part_number {part.part_number}")
        carried = parse_qs(urlsplit(part.url or "").query).get("blockid", [])
        if carried != [encoded_id(expected)]:
            raise InvalidParameter(f"Part {part.part_number}: its url does not carry the block id of that part")
        block_ids.append(expected)
    return block_ids
