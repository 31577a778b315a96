"""SHA-256 as the server states it (`Repr-Digest: sha-256=:<base64>:`, RFC 9530) and as a local file hashes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):")


def from_header(value: str | None) -> str | None:
    """The hex SHA-256 a `Repr-Digest` header states, or None when it states none (other algorithms, no header)."""
    match = _SHA256.search(value or "")
    if not match:
        return None
    try:
        raw = base64.b64decode(match.group(1), validate=True)
    except binascii.Error:
        return None
    return raw.hex() if len(raw) == 32 else None


def file_sha256(path: Path, hasher: hashlib._Hash | None = None, limit: int | None = None) -> hashlib._Hash:
    """Hash a file (or its first `limit` bytes) into `hasher`. Blocking: call it in a thread."""
    hasher = hasher or hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                break
            hasher.update(block)
            if remaining is not None:
                remaining -= len(block)
    return hasher
