"""Re-chunk an async byte stream into fixed-size blocks, so memory stays bounded by one block per transfer."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def rechunk(chunks: AsyncIterator[bytes], block_size: int) -> AsyncIterator[bytes]:
    """Yield blocks of exactly `block_size` bytes, except a final shorter (possibly empty-stream: none) block."""
    buffer = bytearray()
    async for chunk in chunks:
        if not chunk:
            continue
        buffer += chunk
        while len(buffer) >= block_size:
            yield bytes(buffer[:block_size])
            del buffer[:block_size]
    if buffer:
        yield bytes(buffer)


async def first_block(chunks: AsyncIterator[bytes], block_size: int) -> tuple[bytes, bool]:
    """Read up to `block_size` bytes; return them and whether the stream ended within them.

    Lets a backend choose a single small PUT for small bodies and a chunked upload for large ones without knowing
    the length in advance (chunked request bodies carry none).
    """
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= block_size:
            return bytes(buffer), False
    return bytes(buffer), True


async def prepend(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the already-read `head` chunks, then the rest of the stream. Chunks are popped as they go, so the
    caller's list does not keep them alive beside whatever consumes them."""
    while head:
        yield head.pop(0)
    async for chunk in rest:
        yield chunk
