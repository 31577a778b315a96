"""GET/HEAD/PUT/DELETE `artifacts/<path>` and the `artifacts?path=` listing.

These are the hot paths, so they are plain Starlette endpoints: no dependency resolution or response-model
validation per request, and at most one thread hop for a small file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.auth import Operation, authorize
from app.downloads import ByteRange, RangeNotSatisfiable, base_headers, if_range_matches, parse_range
from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    IncompleteBody,
    InvalidParameter,
    IsADirectoryArtifact,
    PayloadTooLarge,
    UploadStalled,
    error_response,
)
from app.integrity import DigestingStream, expected_digests, repr_digest
from app.paths import ArtifactPath, canonical_path, file_path
from app.schemas import list_json
from app.settings import Settings
from app.storage.base import ArtifactStore, ObjectMeta, ReadHandle, WriteOptions, supports_multipart_upload

logger = logging.getLogger("artifact_proxy.artifacts")

EMPTY_JSON = b"{}"
# Responses up to this size go out in one or two sends; only longer ones are worth a disconnect watcher task.
WATCH_DISCONNECT_ABOVE = 1024 * 1024


def store_of(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class ReadHandleResponse(Response):
    """Streams one byte range of an opened object, and always closes the handle (disconnects included)."""

    def __init__(self, handle: ReadHandle, byte_range: ByteRange, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.handle = handle
        self.byte_range = byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.byte_range.end - self.byte_range.start <= WATCH_DISCONNECT_ABOVE:
                await self._stream(send)
                return
            # uvicorn drops sends after a disconnect without telling us: watch for it, or a vanished client
            # would still have the whole object read from storage.
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                async def stop_on_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    logger.debug("client went away during download of %s", scope.get("path"))
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                group.start_soon(stop_on_disconnect)
        except OSError:
            logger.debug("client went away during download of %s", scope.get("path"))
        finally:
            with anyio.CancelScope(shield=True):
                await self.handle.aclose()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.handle.iter_range(self.byte_range.start, self.byte_range.end):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def download(request: Request) -> Response:
    path = canonical_path(request.path_params["path"])
    await authorize(request, Operation.READ, path)
    return await serve_download(request, path)


async def serve_download(request: Request, path: ArtifactPath) -> Response:
    handle = await store_of(request).open_read(path)
    try:
        status, headers, byte_range = _plan_download(request, path, handle.meta)
    except BaseException:
        await handle.aclose()
        raise
    if request.method == "HEAD" or status == 416:
        await handle.aclose()
        if status == 416:
            return error_response(416, "INVALID_PARAMETER_VALUE", "Requested range not satisfiable", headers)
        response = Response(status_code=status, headers=headers)
        response.body = b""
        return response
    return ReadHandleResponse(handle, byte_range, status, headers)


def _plan_download(request: Request, path: ArtifactPath, meta: ObjectMeta) -> tuple[int, dict[str, str], ByteRange]:
    """Status, headers and byte range for a GET/HEAD, honouring Range and If-Range."""
    headers = base_headers(path.basename, meta)
    status, byte_range = 200, ByteRange(0, meta.size)
    if if_range_matches(request.headers.get("if-range"), meta):
        try:
            requested = parse_range(request.headers.get("range"), meta.size)
        except RangeNotSatisfiable:
            headers["content-range"] = f"bytes */{meta.size}"
            return 416, headers, byte_range
        if requested is not None:
            status, byte_range = 206, requested
            headers["content-range"] = f"bytes {requested.start}-{requested.end - 1}/{meta.size}"
    headers["content-length"] = str(byte_range.end - byte_range.start)
    return status, headers, byte_range


async def upload(request: Request) -> Response:
    # Path, permission and size are checked before the first body read: uvicorn sends `100 Continue` only then, so
    # a refused client never sends its gigabytes.
    path = file_path(request.path_params["path"])
    await authorize(request, Operation.WRITE, path)
    settings = settings_of(request)
    store = store_of(request)
    announced = announced_length(request)
    limit, too_large = _size_limit(announced, settings, store)
    body = DigestingStream(
        counted_body(request, announced, limit, settings.upload_idle_timeout, too_large),
        expected_digests(request.headers),
        settings.upload_chunk_size,
    )
    create_only = settings.forbid_overwrite or request.headers.get("if-none-match", "").strip() == "*"
    if create_only:
        await refuse_existing(store, path)
    options = WriteOptions(create_only=create_only, digest=lambda: body.sha256)
    try:
        await store.write(path, aiter(body), announced, options)
    except ClientDisconnect:
        logger.info("client disconnected during upload of %s; nothing was stored", path.canonical)
        return error_response(400, "BAD_REQUEST", "Client disconnected before the upload completed")
    headers = {"repr-digest": repr_digest(body.sha256)} if body.sha256 else None
    return Response(EMPTY_JSON, media_type="application/json", headers=headers)


async def refuse_existing(store: ArtifactStore, path: ArtifactPath) -> None:
    """Refuse a create-only upload before its body is read; the backend's atomic condition still settles races."""
    try:
        handle = await store.open_read(path)
    except (ArtifactNotFound, IsADirectoryArtifact):
        return
    await handle.aclose()
    raise AlreadyExists(path.canonical)


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


def _size_limit(announced: int | None, settings: Settings, store: ArtifactStore) -> tuple[int | None, str | None]:
    """Refuse a proxied PUT by its Content-Length; else the most bytes its body may bring, and what the 413 says
    past them. A chunked body announces nothing, so the presigned-only rule is enforced while it streams too."""
    refuse_announced(announced, settings.max_upload_size)
    limit, multipart_above = settings.max_upload_size, settings.presigned_only_min_size
    if multipart_above is None or not supports_multipart_upload(store):
        return limit, None
    use_multipart = (
        f"Uploads over {multipart_above} bytes must use multipart upload: set MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true"
    )
    if announced is not None and announced > multipart_above:
        raise PayloadTooLarge(use_multipart)
    if limit is not None and limit <= multipart_above:
        return limit, None
    return multipart_above, use_multipart


async def counted_body(
    request: Request, announced: int | None, limit: int | None, idle_timeout: float, too_large: str | None = None
) -> AsyncIterator[bytes]:
    """The request body, refused past `limit` (413, saying `too_large` if given), past its Content-Length or short
    of it (400), and abandoned after `idle_timeout` seconds without a byte (408)."""
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
            raise PayloadTooLarge(too_large or f"Upload exceeds the limit of {limit} bytes")
        if announced is not None and received > announced:
            raise IncompleteBody("Request body is longer than its Content-Length")
        yield chunk
    if announced is not None and received != announced:
        raise IncompleteBody(f"Request body ended after {received} of {announced} bytes")


async def list_artifacts(request: Request) -> Response:
    values = request.query_params.getlist("path")
    path = canonical_path(values[0] if values else "")
    await authorize(request, Operation.READ, path)
    infos = await store_of(request).list(path)
    return JSONResponse(list_json(infos))


async def delete(request: Request) -> Response:
    path = canonical_path(request.path_params["path"])
    if path.is_root:
        raise InvalidParameter("Refusing to delete the artifact root: give a path below it")
    await authorize(request, Operation.DELETE, path)
    await store_of(request).delete(path)
    return Response(EMPTY_JSON, media_type="application/json")


async def artifact(request: Request) -> Response:
    """One route per path, dispatching on the method, so a 405 lists every allowed method."""
    method = request.method
    if method == "PUT":
        return await upload(request)
    if method == "DELETE":
        return await delete(request)
    return await download(request)


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/artifacts", list_artifacts, methods=["GET"]),
        Route(f"{prefix}/artifacts/{{path:anypath}}", artifact, methods=["GET", "HEAD", "PUT", "DELETE"]),
    ]
