"""Upload integrity: a SHA-256 computed while the body streams, checked against what the client expected.

The digest is verified inside the body iterator, after its last byte and before it reports the end of the stream.
Every backend commits only once the iterator is exhausted and aborts when it raises, so a mismatch stores nothing
and leaves the previous version intact, on every backend, without backend code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.datastructures import Headers

from app.errors import ArtifactProxyError, InvalidParameter

# Below this, hashing on the event loop is cheaper than a thread hop.
THREAD_HASH_MIN = 256 * 1024
_DIGEST_ITEM = re.compile(r"\s*([A-Za-z0-9-]+)\s*=\s*:?([A-Za-z0-9+/=]+):?\s*")


class DigestMismatch(ArtifactProxyError):
    error_code = "BAD_REQUEST"
    status_code = 400


def expected_digests(headers: Headers) -> dict[str, bytes]:
    """Digests the client announced: `Content-MD5`, `Digest: sha-256=...` or `Repr-Digest: sha-256=:...:`."""
    expected: dict[str, bytes] = {}
    try:
        if md5 := headers.get("content-md5"):
            expected["md5"] = base64.b64decode(md5.strip(), validate=True)
        for header in ("digest", "repr-digest", "content-digest"):
            for item in headers.get(header, "").split(","):
                match = _DIGEST_ITEM.fullmatch(item)
                if match and match.group(1).lower() in ("sha-256", "sha256"):
                    expected["sha256"] = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameter("Malformed Content-MD5 or Digest header") from exc
    if any(len(value) != {"md5": 16, "sha256": 32}[name] for name, value in expected.items()):
        raise InvalidParameter("Malformed Content-MD5 or Digest header")
    return expected


def repr_digest(sha256_hex: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


class DigestingStream:
    """Wraps a body stream: re-chunks it into blocks, hashes each block (in a worker thread, overlapping with the
    consumer's write of the previous block), and verifies the announced digests at the end."""

    def __init__(self, chunks: AsyncIterator[bytes], expected: dict[str, bytes], block_size: int) -> None:
        self._chunks = chunks
        self._expected = expected
        self._block_size = block_size
        self._hashers = {"sha256": hashlib.sha256()}
        if "md5" in expected:
            self._hashers["md5"] = hashlib.md5()
        self.sha256: str | None = None  # hex, once the stream has ended and verified

    def _update(self, block: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(block)

    async def _hash(self, block: bytes) -> None:
        if len(block) >= THREAD_HASH_MIN:
            await anyio.to_thread.run_sync(self._update, block)
        else:
            self._update(block)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending: asyncio.Task[None] | None = None
        parts: list[bytes] = []
        buffered = 0
        async for chunk in self._chunks:
            parts.append(chunk)
            buffered += len(chunk)
            if buffered < self._block_size:
                continue
            block = b"".join(parts)  # the only copy a body byte takes on its way to storage
            parts, buffered = [], 0
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(self._hash(block))
            yield block
        if pending is not None:
            await pending
        tail = b"".join(parts)
        await self._hash(tail)
        self._verify()
        if tail:
            yield tail

    def _verify(self) -> None:
        for name, expected in self._expected.items():
            actual = self._hashers[name].digest()
            if actual != expected:
                raise DigestMismatch(
                    f"Upload rejected: {name} of the received body is {base64.b64encode(actual).decode()}, "
                    f"but the client announced {base64.b64encode(expected).decode()}"
                )
        self.sha256 = self._hashers["sha256"].hexdigest()
