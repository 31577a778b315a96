"""What the routes share: the app's store and settings, and the rules every request body obeys.

A body is read only after its route has checked path, permission and announced size (uvicorn sends `100 Continue`
only then), and it is bounded in size and in time whichever route reads it: PUT, part PUT or JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    IncompleteBody,
    InvalidParameter,
    IsADirectoryArtifact,
    PayloadTooLarge,
    UploadStalled,
)
from app.paths import EntryPath
from app.settings import Settings
from app.storage.base import ArtifactStore

EMPTY_JSON = b"{}"


def store_of(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def announced_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidParameter("Invalid Content-Length")
    return int(raw)


def refuse_announced(announced: int | None, limit: int | None) -> None:
    """413 before the body is read, when its Content-Length alone is over `limit`."""
    if announced is not None and limit is not None and announced > limit:
        raise PayloadTooLarge(f"Upload of {announced} bytes exceeds the limit of {limit} bytes")


async def counted_body(
    request: Request,
    announced: int | None,
    limit: int | None,
    idle_timeout: float,
    too_large: ArtifactProxyError | None = None,
) -> AsyncIterator[bytes]:
    """The request body, refused past `limit` (413, or `too_large` if given), past its Content-Length or short of
    it (400), and abandoned after `idle_timeout` seconds without a byte (408)."""
    received = 0
    body = request.stream()
    while True:
        # A client that stops sending without closing would otherwise hold a temp file or an open multipart
        # upload for ever.
        with anyio.move_on_after(idle_timeout) as idle:
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                break
        if idle.cancelled_caught:
            raise UploadStalled(f"No request body bytes for {idle_timeout:g} s; upload abandoned")
        received += len(chunk)
        if limit is not None and received > limit:
            raise too_large or PayloadTooLarge(f"Upload exceeds the limit of {limit} bytes")
        if announced is not None and received > announced:
            raise IncompleteBody("Request body is longer than its Content-Length")
        yield chunk
    if announced is not None and received != announced:
        raise IncompleteBody(f"Request body ended after {received} of {announced} bytes")


async def refuse_existing(store: ArtifactStore, path: EntryPath) -> None:
    """Refuse a create-only upload before its body is read; the backend's atomic condition still settles races."""
    try:
        await store.head(path)
    except (ArtifactNotFound, IsADirectoryArtifact):
        return
    raise AlreadyExists(path.canonical)
