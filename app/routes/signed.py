"""The targets of self-signed URLs (local destination): multipart part PUTs and presigned downloads.

The signature is the authorization: it names the upload id and part number, or the canonical artifact path, and
expires. A tampered or expired URL is 403.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import ResourceNotFound
from app.paths import canonical_path
from app.routes.artifacts import EMPTY_JSON, serve_download, store_of
from app.signing import UrlSigner
from app.storage.local_multipart import DOWNLOAD_ROUTE, PART_ROUTE


class SelfSigningStore(Protocol):
    signer: UrlSigner | None

    async def write_part(self, upload_id: str, part_number: int, chunks: object) -> str: ...


def _signing_store(request: Request) -> SelfSigningStore:
    store = store_of(request)
    if getattr(store, "signer", None) is None or not hasattr(store, "write_part"):
        raise ResourceNotFound("This destination does not issue self-signed URLs")
    return store  # type: ignore[return-value]


async def upload_part(request: Request) -> Response:
    store = _signing_store(request)
    # The part number stays text until the signature has vouched for it: int() of a forged 5,000-digit number fails.
    upload_id, part = request.path_params["upload_id"], request.path_params["part"]
    assert store.signer is not None
    store.signer.verify("part", (upload_id, part), request.query_params.get("expires"), request.query_params.get("sig"))
    etag = await store.write_part(upload_id, int(part), request.stream())
    return Response(EMPTY_JSON, media_type="application/json", headers={"etag": etag})


async def signed_download(request: Request) -> Response:
    store = _signing_store(request)
    path = canonical_path(request.path_params["path"])
    assert store.signer is not None
    store.signer.verify(
        "download", (path.canonical,), request.query_params.get("expires"), request.query_params.get("sig")
    )
    return await serve_download(request, path)


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/{PART_ROUTE}/{{upload_id}}/{{part}}", upload_part, methods=["PUT"]),
        Route(f"{prefix}/{DOWNLOAD_ROUTE}/{{path:anypath}}", signed_download, methods=["GET", "HEAD"]),
    ]
