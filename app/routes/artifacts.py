"""GET/HEAD/PUT/DELETE `artifacts/<path>` and the `artifacts?path=` listing (`?archive=`, `recursive=` and `glob=`
are `routes/archives.py`).

These are the hot paths, so they are plain Starlette endpoints: no dependency resolution or response-model
validation per request, and at most one thread hop for a small file.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.auth import Operation, authorize
from app.deps import (
    EMPTY_JSON,
    announced_length,
    counted_body,
    refuse_announced,
    refuse_existing,
    settings_of,
    store_of,
)
from app.downloads import ReadHandleResponse, plan_download
from app.errors import ArtifactProxyError, InvalidParameter, IsADirectoryArtifact, error_response
from app.integrity import DigestingStream, expected_digests, repr_digest
from app.paths import EntryPath, canonical_path, entry_path, file_path
from app.policy import presigned_only_above, refuse_proxied
from app.routes.archives import flag, glob_of, recursive_listing, serve_archive
from app.schemas import list_json
from app.settings import Settings
from app.storage.base import ArtifactStore, WriteOptions, supports_multipart_upload

logger = logging.getLogger("artifact_proxy.artifacts")


async def download(request: Request) -> Response:
    path = canonical_path(request.path_params["path"])
    await authorize(request, Operation.READ, path)
    refuse_proxied(settings_of(request), upload=False)
    if "archive" in request.query_params:
        return await serve_archive(request, path)
    return await serve_download(request, entry_path(path, IsADirectoryArtifact(path.canonical)))


async def serve_download(request: Request, path: EntryPath) -> Response:
    if request.method == "HEAD":
        status, headers, _ = plan_download(request.headers, path, await store_of(request).head(path))
        if status == 416:
            return _range_not_satisfiable(headers)
        response = Response(status_code=status, headers=headers)
        response.body = b""  # the headers of the GET, Content-Length included, and no body
        return response
    handle = await store_of(request).open_read(path)
    try:
        status, headers, byte_range = plan_download(request.headers, path, handle.meta)
    except BaseException:
        await handle.aclose()
        raise
    if status == 416:
        await handle.aclose()
        return _range_not_satisfiable(headers)
    return ReadHandleResponse(handle, byte_range, status, headers)


def _range_not_satisfiable(headers: dict[str, str]) -> Response:
    # The body is MLflow's error JSON: the artifact's Content-Type and Content-Disposition would describe another.
    kept = {name: headers[name] for name in ("content-range", "accept-ranges")}
    return error_response(416, "INVALID_PARAMETER_VALUE", "Requested range not satisfiable", kept)


async def upload(request: Request) -> Response:
    # Path, permission and size are checked before the first body read: uvicorn sends `100 Continue` only then, so
    # a refused client never sends its gigabytes.
    path = file_path(request.path_params["path"])
    await authorize(request, Operation.WRITE, path)
    settings = settings_of(request)
    refuse_proxied(settings, upload=True)
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


def _size_limit(
    announced: int | None, settings: Settings, store: ArtifactStore
) -> tuple[int | None, ArtifactProxyError | None]:
    """Refuse a proxied PUT by its Content-Length; else the most bytes its body may bring, and what is raised past
    them. A chunked body announces nothing, so the presigned-only size rule is enforced while it streams too."""
    refuse_announced(announced, settings.max_upload_size)
    limit, multipart_above = settings.max_upload_size, settings.presigned_only_min_size
    if multipart_above is None or not supports_multipart_upload(store):
        return limit, None
    refusal = presigned_only_above(multipart_above)
    if announced is not None and announced > multipart_above:
        raise refusal
    if limit is not None and limit <= multipart_above:
        return limit, None
    return multipart_above, refusal


async def list_artifacts(request: Request) -> Response:
    values = request.query_params.getlist("path")
    path = canonical_path(values[0] if values else "")
    await authorize(request, Operation.READ, path)
    if flag(request, "recursive"):
        return await recursive_listing(request, path)
    glob = glob_of(request)
    infos = await store_of(request).list(path)
    if glob is not None:
        infos = [info for info in infos if glob.matches(info.path)]
    return JSONResponse(list_json(infos))


async def delete(request: Request) -> Response:
    refusal = InvalidParameter("Refusing to delete the artifact root: give a path below it")
    path = entry_path(canonical_path(request.path_params["path"]), refusal)
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
