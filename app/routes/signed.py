"""The targets of self-signed URLs (local destination): multipart part PUTs and presigned downloads.

The signature is the authorization: it names the upload id and part number, or the canonical artifact path, and
expires. A tampered or expired URL is 403. Part bodies obey the rules of any upload body (size limit, Content-Length,
idle timeout), and both routes write an audit line whose user is `signed-url`: the URL's signature is the principal.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from app.deps import EMPTY_JSON, announced_length, counted_body, refuse_announced, settings_of, store_of
from app.errors import IsADirectoryArtifact, ResourceNotFound, error_response
from app.metrics import AUDIT_KEY
from app.paths import canonical_path, entry_path
from app.routes.artifacts import serve_download
from app.signing import DOWNLOAD_ROUTE, PART_ROUTE
from app.storage.base import SelfSignedTransfers, signs_own_urls

logger = logging.getLogger("artifact_proxy.signed")

SIGNED_URL_USER = "signed-url"  # the audit log's user for requests authorized by their URL's signature


def _signing_store(request: Request) -> SelfSignedTransfers:
    store = store_of(request)
    if not signs_own_urls(store) or not isinstance(store, SelfSignedTransfers):
        raise ResourceNotFound("This destination does not issue self-signed URLs")
    return store


async def upload_part(request: Request) -> Response:
    store = _signing_store(request)
    # The part number stays text until the signature has vouched for it: int() of a forged 5,000-digit number fails.
    upload_id, part = request.path_params["upload_id"], request.path_params["part"]
    # A refused URL is audited too, with what it claimed; the path and part number only once it is vouched for.
    audit: dict[str, Any] = {"op": "write", "path": None, "user": SIGNED_URL_USER, "upload_id": upload_id}
    request.scope[AUDIT_KEY] = audit
    assert store.signer is not None
    store.signer.verify("part", (upload_id, part), request.query_params.get("expires"), request.query_params.get("sig"))
    audit["part_number"] = part_number = int(part)
    audit["path"] = (await store.upload_target(upload_id)).canonical
    settings = settings_of(request)
    announced = announced_length(request)
    refuse_announced(announced, settings.max_upload_size)  # before the body is read (and 100 Continue sent)
    body = counted_body(request, announced, settings.max_upload_size, settings.upload_idle_timeout)
    try:
        etag = await store.write_part(upload_id, part_number, body)
    except ClientDisconnect:
        logger.info("client disconnected during part %d of upload %s; the part was not stored", part_number, upload_id)
        return error_response(400, "BAD_REQUEST", "Client disconnected before the part upload completed")
    return Response(EMPTY_JSON, media_type="application/json", headers={"etag": etag})


async def signed_download(request: Request) -> Response:
    store = _signing_store(request)
    path = canonical_path(request.path_params["path"])
    request.scope[AUDIT_KEY] = {"op": "read", "path": path.canonical, "user": SIGNED_URL_USER}
    assert store.signer is not None
    store.signer.verify(
        "download", (path.canonical,), request.query_params.get("expires"), request.query_params.get("sig")
    )
    return await serve_download(request, entry_path(path, IsADirectoryArtifact(path.canonical)))


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/{PART_ROUTE}/{{upload_id}}/{{part}}", upload_part, methods=["PUT"]),
        Route(f"{prefix}/{DOWNLOAD_ROUTE}/{{path:anypath}}", signed_download, methods=["GET", "HEAD"]),
    ]
