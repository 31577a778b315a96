"""`mpu/create|complete|abort/<dir>` and `presigned/<path>`: the service signs, the bytes bypass it.

Every route validates its URL path first (400 on attacks, whatever the backend), then answers 501 with the exact
constant the MLflow client's fallback looks for when the destination cannot presign.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.auth import Operation, authenticate, authorize
from app.deps import EMPTY_JSON, announced_length, counted_body, refuse_existing, settings_of, store_of
from app.errors import (
    InvalidParameter,
    IsADirectoryArtifact,
    MultipartUploadUnsupported,
    PayloadTooLarge,
    PresignedDownloadUnsupported,
)
from app.paths import EntryPath, canonical_path, entry_path, multipart_target
from app.schemas import (
    MAX_PARTS,
    AbortMultipartRequest,
    CompleteMultipartRequest,
    CreateMultipartRequest,
    created_upload_json,
)
from app.signing import trusted_base_url
from app.storage.base import (
    ArtifactStore,
    CompletedPart,
    CompleteOptions,
    MultipartUploads,
    PresignedDownloads,
    signs_own_urls,
    supports_multipart_upload,
    supports_presigned_download,
)

logger = logging.getLogger("artifact_proxy.multipart")

# Request bodies: create and abort are a path and a few fields; complete lists every part with its ETag and URL
# (presigned URLs run to a kilobyte or two).
SMALL_BODY_LIMIT = 64 * 1024
COMPLETE_BODY_LIMIT = 1024 * 1024 + 2048 * MAX_PARTS
PARSE_INLINE_BELOW = 64 * 1024
# JSON may escape a lone surrogate ("\udc80"): it parses, but no store client, log or answer can encode it. Only a
# body with such an escape (pairs included: emoji) is checked in full.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
M = TypeVar("M", bound=BaseModel)


_unsigned_warning_given: list[bool] = []  # once per worker: a warning per request would drown the log


def _url_base(request: Request, store: ArtifactStore) -> str | None:
    """What the store's transfer URLs are relative to: nothing for storage that presigns absolute URLs; for a store
    that signs its own, this service's API root as clients reach it (app.signing.trusted_base_url). None when there
    is no trustworthy address to put in them: then the store does not offer them, and clients fall back to proxied
    transfers."""
    if not signs_own_urls(store):
        return ""
    base = trusted_base_url(request)
    if base is None:
        if not _unsigned_warning_given:
            _unsigned_warning_given.append(True)
            logger.warning(
                "multipart and presigned downloads are off for clients whose Host is not checked (this one sent "
                "%r): set ARTIFACT_PROXY_PUBLIC_URL, or MLFLOW_SERVER_ALLOWED_HOSTS, to the address clients use",
                request.headers.get("host"),
            )
        return None
    return f"{base}{settings_of(request).api_prefixes[0]}/"


def _multipart_store(request: Request) -> tuple[MultipartUploads, str]:
    store = store_of(request)
    base = _url_base(request, store) if supports_multipart_upload(store) else None
    if base is None:
        raise MultipartUploadUnsupported(blocked=store.capabilities.presign_blocker is not None)
    assert isinstance(store, MultipartUploads)
    return store, base


async def _body(request: Request, model: type[M], limit: int) -> M:
    """The JSON body as `model`: read only once the client is authenticated, bounded in size and in time, and parsed
    off the event loop when large (a 10,000-part complete is megabytes)."""
    await authenticate(request)
    settings = request.app.state.settings
    announced = announced_length(request)
    if announced is not None and announced > limit:
        raise PayloadTooLarge(f"Request body of {announced} bytes exceeds the limit of {limit} bytes")
    raw = b"".join([chunk async for chunk in counted_body(request, announced, limit, settings.upload_idle_timeout)])
    if len(raw) > PARSE_INLINE_BELOW:
        return await anyio.to_thread.run_sync(_parse, raw, model)
    return _parse(raw, model)


def _parse(raw: bytes, model: type[M]) -> M:
    try:
        data: Any = json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack allows
        data = None
    if not isinstance(data, dict):
        raise InvalidParameter("Missing value for required parameter 'path'")
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(data):
        raise InvalidParameter("Invalid request body: a string holds a lone surrogate, which is no character")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameter(f"Invalid request body: {exc.errors()[0]['msg']}") from exc


def _encodable(data: object) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _num_parts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameter(f"Invalid value {json.dumps(value)} for parameter 'num_parts' supplied")
    try:
        parts = int(value)
    except ValueError as exc:
        raise InvalidParameter(f"Invalid value \"{value}\" for parameter 'num_parts' supplied") from exc
    if not 1 <= parts <= MAX_PARTS:
        raise InvalidParameter(
            f"Invalid value {parts} for parameter 'num_parts': must be between 1 and {MAX_PARTS}; "
            "raise MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE to upload this file in fewer parts"
        )
    return parts


async def _target(request: Request, body_path: str | None) -> EntryPath:
    target = multipart_target(request.path_params.get("path", ""), body_path)
    await authorize(request, Operation.WRITE, target)
    return target


async def create_upload(request: Request) -> Response:
    canonical_path(request.path_params.get("path", ""))
    store, base = _multipart_store(request)
    body = await _body(request, CreateMultipartRequest, SMALL_BODY_LIMIT)
    target = await _target(request, body.path)
    if body.num_parts is None:
        raise InvalidParameter("Missing value for required parameter 'num_parts'")
    num_parts = _num_parts(body.num_parts)
    if settings_of(request).forbid_overwrite:
        # Early, before the client sends its parts; complete settles it (atomically where the backend can).
        await refuse_existing(store_of(request), target)
    created = await store.create_multipart_upload(target, num_parts)
    return JSONResponse(created_upload_json(created, base))


async def complete_upload(request: Request) -> Response:
    canonical_path(request.path_params.get("path", ""))
    store, _ = _multipart_store(request)
    body = await _body(request, CompleteMultipartRequest, COMPLETE_BODY_LIMIT)
    target = await _target(request, body.path)
    if not body.parts:
        raise InvalidParameter("Missing value for required parameter 'parts'")
    parts = sorted(
        (CompletedPart(part.part_number, part.etag, part.url) for part in body.parts), key=lambda p: p.part_number
    )
    settings = settings_of(request)
    options = CompleteOptions(create_only=settings.forbid_overwrite, max_size=settings.max_upload_size)
    await store.complete_multipart_upload(target, body.upload_id, parts, options)
    return Response(EMPTY_JSON, media_type="application/json")


async def abort_upload(request: Request) -> Response:
    canonical_path(request.path_params.get("path", ""))
    store, _ = _multipart_store(request)
    body = await _body(request, AbortMultipartRequest, SMALL_BODY_LIMIT)
    target = await _target(request, body.path)
    await store.abort_multipart_upload(target, body.upload_id)
    return Response(EMPTY_JSON, media_type="application/json")


async def presigned_download(request: Request) -> Response:
    path = canonical_path(request.path_params.get("path", ""))
    await authorize(request, Operation.READ, path)
    store = store_of(request)
    base = _url_base(request, store) if supports_presigned_download(store) else None
    if base is None:
        raise PresignedDownloadUnsupported(blocked=store.capabilities.presign_blocker is not None)
    assert isinstance(store, PresignedDownloads)
    signed = await store.presign_download(entry_path(path, IsADirectoryArtifact(path.canonical)))
    body: dict[str, object] = {"url": base + signed.url, "headers": signed.headers}
    if signed.file_size is not None:
        body["file_size"] = signed.file_size
    return JSONResponse(body)


def routes(prefix: str) -> list[Route]:
    table = [
        ("mpu/create", create_upload, "POST"),
        ("mpu/complete", complete_upload, "POST"),
        ("mpu/abort", abort_upload, "POST"),
        ("presigned", presigned_download, "GET"),
    ]
    result: list[Route] = []
    for name, endpoint, method in table:
        result.append(Route(f"{prefix}/{name}", endpoint, methods=[method]))
        result.append(Route(f"{prefix}/{name}/{{path:anypath}}", endpoint, methods=[method]))
    return result
