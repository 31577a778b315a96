"""Filesystem errors of the local backend, mapped once to what the client and the operator need to know.

- A name past the filesystem's limits or a symlink loop: the client's path is the problem, so 400, never 500 (which
  the MLflow client would retry for minutes).
- A full disk or an exhausted quota: 507, final, so the client stops at once instead of retrying a doomed upload.
- Permission or read-only errors: the operator's problem (ownership, mode, mount options), so 503 with a message
  that says which, counted as a store error in /metrics.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from app.errors import InsufficientStorage, InvalidPath, StorageUnavailable

T = TypeVar("T")
logger = logging.getLogger("artifact_proxy.storage.local")

UNUSABLE_PATH = frozenset({errno.ENAMETOOLONG, errno.ELOOP})
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
REFUSED = frozenset({errno.EACCES, errno.EPERM})


def map_os_error(exc: OSError, root: str) -> Exception:
    """The ArtifactProxyError an OSError stands for, or the OSError itself when it is unexpected (a 500)."""
    if exc.errno in UNUSABLE_PATH:
        return InvalidPath()
    if exc.errno in NO_SPACE:
        what = "quota" if exc.errno == errno.EDQUOT else "filesystem"
        logger.warning("the artifact %s is full under %s: %s", what, root, exc)
        return InsufficientStorage(
            f"Not enough space to store the artifact: the destination's {what} is full ({os.strerror(exc.errno)})"
        )
    if exc.errno in REFUSED:
        logger.error("permission denied in the artifact directory %s: %s (running as uid %d)", root, exc, os.getuid())
        return StorageUnavailable(
            f"The artifact directory refuses access ({os.strerror(exc.errno)}): the operator must fix the ownership "
            f"or mode of {root} for the service's user (uid {os.getuid()})",
            retry_after=30,
        )
    if exc.errno == errno.EROFS:
        logger.error("the artifact directory %s is on a read-only filesystem: %s", root, exc)
        return StorageUnavailable(
            f"The artifact directory {root} is on a read-only filesystem: the operator must mount it writable",
            retry_after=30,
        )
    return exc


class FsCalls:
    """Runs a filesystem step in the calling (worker) thread and maps its OSErrors (`map_os_error`)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return function(*args)
        except OSError as exc:
            mapped = map_os_error(exc, self.root)
            if mapped is exc:
                raise
            raise mapped from exc
