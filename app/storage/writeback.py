"""Start disk writeback of a file range early (Linux `sync_file_range`), so a final fsync has little left to wait for.

Large uploads are fsynced before they become visible. Without this, the whole body sits dirty in the page cache and
the fsync at the end writes it all while the client waits; with it, the disk works while the network still
delivers. Elsewhere (or if the call is unavailable) it is a no-op, and the fsync alone keeps the guarantee.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait for it


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load()


def start(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # best effort: errors only lose the head start
