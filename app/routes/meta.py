"""`server-info` (the MLflow client's capability probe), `/health` (liveness) and `/ready` (the store answers)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app.deps import settings_of, store_of
from app.errors import ArtifactProxyError, error_response
from app.schemas import ServerInfo
from app.settings import Settings
from app.signing import trusted_base_url
from app.storage.base import ArtifactStore, signs_own_urls, supports_multipart_upload, supports_presigned_download

logger = logging.getLogger("artifact_proxy.ready")
_last_reason: dict[str, str] = {}  # per worker: log a reason when it changes, not at every probe


def server_info_payload(store: ArtifactStore, settings: Settings, can_sign: bool = True) -> ServerInfo:
    # Answered from configuration, never from a storage round trip: clients probe it with a 3 s timeout, and 3.18
    # clients before their first transfer of any size.
    # `can_sign`: a store whose URLs point back at us offers them only when we know an address to put in them.
    usable = can_sign or not signs_own_urls(store)
    presigning = store.capabilities.can_presign and usable
    return ServerInfo(
        multipart_uploads_enabled=supports_multipart_upload(store) and usable,
        multipart_downloads_enabled=supports_presigned_download(store) and usable,
        skill_content_max_size=settings.skill_content_max_size,
        # 3.18 ties these to whether presigning is possible at all (no SSE-C key), not to the operator's switches.
        presigned_upload_run_id_supported=presigning,
        presigned_upload_model_id_supported=presigning,
        model_artifact_presigned_downloads_supported=presigning,
        tracking_auth=settings.server_info_tracking_auth,
        artifacts_presigned_only=settings.artifacts_presigned_only,
    )


async def server_info(request: Request) -> Response:
    payload = server_info_payload(store_of(request), settings_of(request), trusted_base_url(request) is not None)
    return JSONResponse(payload.model_dump())


async def health(_: Request) -> Response:
    return PlainTextResponse("OK")


async def ready(request: Request) -> Response:
    try:
        await store_of(request).check_ready()
    except ArtifactProxyError as exc:
        # Anyone may probe, so the answer names no path, bucket or host; the operator's log has the reason.
        if exc.message != _last_reason.get("message"):
            _last_reason["message"] = exc.message
            logger.warning("not ready: %s", exc.message)
        return error_response(
            exc.status_code,
            exc.error_code,
            "Not ready: the artifact store is unavailable (see the server log)",
            exc.headers,
        )
    if _last_reason.pop("message", None) is not None:
        logger.info("ready again")
    return PlainTextResponse("OK")


def routes(settings: Settings) -> list[Route]:
    prefix = settings.static_prefix
    result = [Route(path, server_info, methods=["GET"]) for path in settings.server_info_paths]
    result.append(Route(f"{prefix}/health", health, methods=["GET", "HEAD"]))
    result.append(Route(f"{prefix}/ready", ready, methods=["GET", "HEAD"]))
    if prefix:
        # Probes from orchestrators rarely know the prefix: liveness also answers at the bare path.
        result.append(Route("/health", health, methods=["GET", "HEAD"]))
        result.append(Route("/ready", ready, methods=["GET", "HEAD"]))
    return result
