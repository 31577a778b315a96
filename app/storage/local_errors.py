"""Filesystem errors that mean "no such path can exist here", mapped to a client error for the local backend."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, TypeVar

from app.errors import InvalidPath

T = TypeVar("T")

# A name past the filesystem's limits, or a symlink loop: the client's path is the problem, so 400, never 500
# (which the MLflow client would retry for minutes).
UNUSABLE_PATH = frozenset({errno.ENAMETOOLONG, errno.ELOOP})


def fs_call(function: Callable[..., T], *args: Any) -> T:
    """Run a filesystem step in the calling (worker) thread, mapping unusable-path errors to InvalidPath."""
    try:
        return function(*args)
    except OSError as exc:
        if exc.errno in UNUSABLE_PATH:
            raise InvalidPath() from exc
        raise
