"""One exception hierarchy, mapped to MLflow's error JSON in one place.

Every failure the service reports, including unknown routes, wrong methods and unexpected faults, leaves through
`error_response` so clients always see `{"error_code": ..., "message": ...}`. Client mistakes are 4xx: the MLflow
client retries 5xx seven times with backoff, so a 500 for a bad path costs minutes and repeated uploads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.logs import printable

logger = logging.getLogger("artifact_proxy.errors")

# The MLflow client falls back to a single PUT only when the error message starts with this exact text.
MULTIPART_UPLOAD_UNSUPPORTED = "Multipart upload is not supported for the current artifact repository"
MULTIPART_DOWNLOAD_UNSUPPORTED = "Multipart download is not supported for the current artifact repository"
# MLflow 3.18's whole message where a configuration rules presigning out (an S3 SSE-C key). Ours follows the constant
# above instead of replacing it: 3.18 clients fall back on any 501, 3.17 ones only on that prefix.
PRESIGNING_UNAVAILABLE = "Presigned artifact transfers are unavailable."


class ArtifactProxyError(Exception):
    """Base of every error the service answers with; subclasses fix the MLflow error code and HTTP status, and
    `fields` adds keys to the JSON beside the two every client reads (MLflow 3.18 flags presigned-only refusals)."""

    error_code = "INTERNAL_ERROR"
    status_code = 500
    fields: ClassVar[Mapping[str, object]] = {}

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidParameter(ArtifactProxyError):
    error_code = "INVALID_PARAMETER_VALUE"
    status_code = 400


class InvalidPath(InvalidParameter):
    def __init__(self, message: str = "Invalid path") -> None:
        super().__init__(message)


class PathOutsideRoot(InvalidPath):
    def __init__(self) -> None:
        super().__init__("Invalid path: resolved path is outside the artifact directory")


class IsADirectoryArtifact(InvalidParameter):
    def __init__(self, path: str) -> None:
        super().__init__(f"Artifact path refers to a directory, not a file: '{path}'")


class ArtifactNotFound(ArtifactProxyError):
    error_code = "RESOURCE_DOES_NOT_EXIST"
    status_code = 404

    def __init__(self, path: str) -> None:
        super().__init__(f"No such artifact: '{path}'")


class ResourceNotFound(ArtifactProxyError):
    error_code = "RESOURCE_DOES_NOT_EXIST"
    status_code = 404


class PermissionDenied(ArtifactProxyError):
    error_code = "PERMISSION_DENIED"
    status_code = 403


class PresignedOnly(PermissionDenied):
    """A proxied transfer refused because this server wants the bytes to go straight to storage: MLflow 3.18's
    shape, whose `artifacts_presigned_only` tells its UI to reload the server settings."""

    fields = {"artifacts_presigned_only": True}


class AlreadyExists(ArtifactProxyError):
    error_code = "ALREADY_EXISTS"
    status_code = 409

    def __init__(self, path: str) -> None:
        super().__init__(f"Artifact path already exists: '{path}'")


class PayloadTooLarge(ArtifactProxyError):
    # BAD_REQUEST, not RESOURCE_EXHAUSTED: the latter maps to 429, which the client retries.
    error_code = "BAD_REQUEST"
    status_code = 413


class UploadStalled(ArtifactProxyError):
    """The client stopped sending its body; 408 tells it (and the MLflow client's retry) to send it again."""

    error_code = "DEADLINE_EXCEEDED"
    status_code = 408


class IncompleteBody(ArtifactProxyError):
    error_code = "BAD_REQUEST"
    status_code = 400


class MultipartUploadUnsupported(ArtifactProxyError):
    """`blocked`: the destination could presign but its configuration rules it out (the operator's log says why)."""

    error_code = "NOT_IMPLEMENTED"
    status_code = 501

    def __init__(self, blocked: bool = False) -> None:
        super().__init__(
            f"{MULTIPART_UPLOAD_UNSUPPORTED}. {PRESIGNING_UNAVAILABLE}" if blocked else MULTIPART_UPLOAD_UNSUPPORTED
        )


class PresignedDownloadUnsupported(ArtifactProxyError):
    error_code = "NOT_IMPLEMENTED"
    status_code = 501

    def __init__(self, blocked: bool = False) -> None:
        super().__init__(
            f"{MULTIPART_DOWNLOAD_UNSUPPORTED}. {PRESIGNING_UNAVAILABLE}" if blocked else MULTIPART_DOWNLOAD_UNSUPPORTED
        )


class StorageUnavailable(ArtifactProxyError):
    """The store is down, throttling or unreachable: transient, so 503 with Retry-After invites a retry."""

    error_code = "TEMPORARILY_UNAVAILABLE"
    status_code = 503

    def __init__(self, message: str = "The artifact store is temporarily unavailable", retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(ArtifactProxyError):
    """The destination is full or over quota: final for this upload, so 507, which the MLflow client does not retry
    (it retries 408, 429, 500 and 502-504 seven times with backoff)."""

    error_code = "RESOURCE_EXHAUSTED"
    status_code = 507


class StorageTimeout(ArtifactProxyError):
    error_code = "DEADLINE_EXCEEDED"
    status_code = 504


class StorageMisconfigured(ArtifactProxyError):
    """The store refused our credentials or the bucket is wrong: an operator must act; details go to the log."""

    error_code = "INTERNAL_ERROR"
    status_code = 502


def error_response(
    status_code: int,
    error_code: str,
    message: str,
    headers: dict[str, str] | None = None,
    fields: Mapping[str, object] | None = None,
) -> Response:
    body = {"error_code": error_code, "message": message, **(fields or {})}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def handle_proxy_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ArtifactProxyError)
    return error_response(exc.status_code, exc.error_code, exc.message, exc.headers, exc.fields)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(404, "ENDPOINT_NOT_FOUND", f"No route for {request.method} {request.url.path!r}")
    if exc.status_code == 405:
        headers = dict(exc.headers or {})
        return error_response(405, "BAD_REQUEST", f"Method {request.method} is not allowed here", headers)
    return error_response(exc.status_code, "BAD_REQUEST", str(exc.detail))


# The handlers the app installs, and `app.edge` uses for the routes it serves itself: one table, so both answer alike.
ExceptionHandler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]
EXCEPTION_HANDLERS: dict[int | type[Exception], ExceptionHandler] = {
    ArtifactProxyError: handle_proxy_error,
    StarletteHTTPException: handle_http_exception,
}


def handler_for(exc: Exception) -> ExceptionHandler | None:
    """The handler `EXCEPTION_HANDLERS` has for `exc`'s class or its nearest base, as Starlette looks it up."""
    for cls in type(exc).__mro__:
        if cls in EXCEPTION_HANDLERS:
            return EXCEPTION_HANDLERS[cls]
    return None


async def answer_unexpected(scope: Scope, receive: Receive, send: Send, response_started: bool) -> None:
    """The last resort for an error no handler knows, called from inside the `except` that caught it: one log line
    with its traceback, and a 500 in MLflow's shape if no response has started. Nothing is re-raised, so the server
    does not log the same error a second time."""
    logger.exception("unhandled error on %s %s", scope.get("method"), printable(str(scope.get("path"))))
    if not response_started:
        await error_response(500, "INTERNAL_ERROR", "Internal server error")(scope, receive, send)
