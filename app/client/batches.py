"""A response body as batches of about 1 MiB, so writing (and hashing) it costs one thread hop per batch.

aiohttp hands over whatever the socket delivered (64-256 KiB at a time on loopback); a hop for each of those costs
more than the write. Batches are lists, not joined: the writer writes and hashes each piece, no copy.

A body cut short keeps every byte that did arrive: aiohttp raises the cut ahead of bytes still in its buffer
(`StreamReader.readchunk` checks for an exception before it looks at the buffer), and on a fast link the bytes and
the close arrive together, so without the drain below a resumed download would start from further back than it
needs to, by as much as a whole buffer, or from zero.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator

import aiohttp

from app.client.session import TRANSPORT_ERRORS

BATCH = 1 << 20


async def batches(content: aiohttp.StreamReader, size: int = BATCH) -> AsyncGenerator[list[bytes]]:
    """The body in lists of at least `size` bytes (the last one smaller). A body cut short first yields what did
    arrive, then raises: those bytes are written, and a resumed download starts right after them."""
    pending: list[bytes] = []
    pending_size = 0
    try:
        # iter_chunks, not iter_any: readany joins what is buffered into one new bytes (a copy of every byte),
        # readchunk hands over the buffered pieces as they are.
        async for chunk, _ in content.iter_chunks():
            if not chunk:
                continue  # the end of an HTTP chunk (chunked transfer encoding)
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= size:
                yield pending
                pending, pending_size = [], 0
    except TRANSPORT_ERRORS:
        pending += _left_in_buffer(content)
        if pending:
            yield pending
        raise
    if pending:
        yield pending


def _left_in_buffer(content: aiohttp.StreamReader) -> list[bytes]:
    """The bytes aiohttp received but no longer hands over once the stream failed. Its private state (aiohttp is
    pinned in constraints.txt, and the resume test fails if this finds nothing): read defensively, so an aiohttp
    without it only costs the bytes."""
    buffered = getattr(content, "_buffer", None)
    if not isinstance(buffered, collections.deque) or not all(isinstance(c, bytes) for c in buffered):
        return []
    chunks = list(buffered)
    offset = getattr(content, "_buffer_offset", 0)
    if chunks and isinstance(offset, int) and offset:
        chunks[0] = chunks[0][offset:]  # the part of the first chunk already read (chunked encoding's splits)
    buffered.clear()
    return chunks
