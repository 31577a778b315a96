"""Transport and HTTP failures of Google Cloud Storage mapped onto the service's error hierarchy: one table for every
operation of the GCS backend, whether it went through gcloud-aio or a raw request."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import aiohttp

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)
from app.paths import ArtifactPath

logger = logging.getLogger("artifact_proxy.storage.gcs")


@contextlib.contextmanager
def storage_errors(
    bucket: str,
    what: str,
    path: ArtifactPath | None = None,
    missing_ok: bool = False,
    created: ArtifactPath | None = None,
) -> Iterator[None]:
    """Map transport and HTTP failures to service errors. A 404 names `path`, or is ignored with `missing_ok`;
    a 412 on a write to `created` means a create-only write found the object there."""
    try:
        yield
    except aiohttp.ClientResponseError as exc:
        if exc.status == 412 and created is not None:
            raise AlreadyExists(created.canonical) from exc
        if exc.status == 404 and "bucket does not exist" not in exc.message.lower():
            if missing_ok:
                return
            if path is not None:
                raise ArtifactNotFound(path.canonical) from exc
        raise http_error(bucket, exc.status, exc.message[:500], what) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        logger.warning("GCS timed out while %s", what)
        raise StorageTimeout(f"Google Cloud Storage did not answer in time while {what}") from exc
    except aiohttp.ClientError as exc:
        logger.warning("GCS unreachable while %s: %s", what, type(exc).__name__)
        raise StorageUnavailable(f"Google Cloud Storage is unreachable ({type(exc).__name__})") from exc


def http_error(bucket: str, status: int, detail: str, what: str) -> ArtifactProxyError:
    logger.warning("GCS answered %s while %s: %s", status, what, detail)
    if status in (401, 403):
        return StorageMisconfigured(
            f"Google Cloud Storage refused access to bucket '{bucket}' (HTTP {status}): check the "
            "credentials (GOOGLE_APPLICATION_CREDENTIALS) and that they may read and write objects there"
        )
    if status == 404:
        return StorageMisconfigured(f"Google Cloud Storage bucket '{bucket}' does not exist or is not visible")
    if status == 408:
        return StorageTimeout(f"Google Cloud Storage timed out while {what}")
    if status == 429 or status >= 500:
        return StorageUnavailable(f"Google Cloud Storage is unavailable or throttling (HTTP {status})")
    return ArtifactProxyError(f"Google Cloud Storage rejected a request while {what} (HTTP {status})")
