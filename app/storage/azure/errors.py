"""Azure SDK errors mapped onto the service's error hierarchy: one table for every operation of the Azure backend."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidPath,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)

logger = logging.getLogger("artifact_proxy.storage.azure")

BAD_NAME_CODES = {"InvalidResourceName", "InvalidUri", "OutOfRangeInput"}


def error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)  # a StorageErrorCode enum, or a plain string from the headers
    return str(getattr(code, "value", code) or "")


def map_error(exc: AzureError, op: str, where: str) -> ArtifactProxyError:
    """Translate an SDK error into the service's hierarchy; details go to the log, never credentials."""
    code = error_code(exc)
    status = getattr(exc, "status_code", None)
    logger.warning("azure %s %r failed: %s status=%s code=%s", op, where, type(exc).__name__, status, code or "-")
    if op == "write" and (code in ("BlobAlreadyExists", "ConditionNotMet") or isinstance(exc, ResourceExistsError)):
        return AlreadyExists(where)  # a create-only write found the blob already there
    if code == "ContainerNotFound":
        return StorageMisconfigured("The Azure container in the artifacts destination does not exist; create it")
    if isinstance(exc, ResourceNotFoundError):
        return ArtifactNotFound(where)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return StorageMisconfigured(
            "Azure Blob Storage refused the proxy's credentials: check AZURE_STORAGE_CONNECTION_STRING, "
            "AZURE_STORAGE_ACCESS_KEY or the identity's role on the container (Storage Blob Data Contributor)"
        )
    if isinstance(exc, ServiceResponseTimeoutError):
        return StorageTimeout("Azure Blob Storage did not answer in time")
    if isinstance(exc, ResourceModifiedError):
        return StorageUnavailable("The artifact changed while it was being read; retry")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StorageUnavailable("Azure Blob Storage is unreachable")
    if code == "ServerBusy" or (status is not None and (status >= 500 or status == 429)):
        return StorageUnavailable("Azure Blob Storage is busy or unavailable")
    if code == "InvalidBlockList":  # a concurrent upload's commit discarded our staged blocks: a retry will do
        return StorageUnavailable("A concurrent upload of the same artifact replaced this one; retry")
    if code in BAD_NAME_CODES:
        return InvalidPath()
    logger.error("unexpected azure error during %s %r: %s", op, where, exc)
    return ArtifactProxyError(f"Azure Blob Storage error during {op}")


@contextmanager
def storage_errors(op: str, where: str) -> Iterator[None]:
    try:
        yield
    except AzureError as exc:
        raise map_error(exc, op, where) from exc
