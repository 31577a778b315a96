"""Request bodies and read-backs for the backend tests, which drive a store directly (no HTTP in between)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect

from app.paths import canonical_path
from app.storage.base import ArtifactStore


async def stream(
    data: bytes, chunk: int = 64 * 1024, fail_after: int | None = None, hang: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """An upload body in `chunk`-sized pieces; after `fail_after` bytes it fails as a vanished client does, or,
    given `hang`, sets the event and stalls."""
    for start in range(0, len(data), chunk):
        if fail_after is not None and start >= fail_after:
            if hang is None:
                raise ClientDisconnect()
            hang.set()
            await asyncio.Event().wait()
        yield data[start : start + chunk]


async def read_all(store: ArtifactStore, raw: str, start: int = 0, end: int | None = None) -> bytes:
    """The bytes [start, end) of an artifact, read through the store's own handle."""
    handle = await store.open_read(canonical_path(raw))
    try:
        return b"".join([c async for c in handle.iter_range(start, handle.meta.size if end is None else end)])
    finally:
        await handle.aclose()
