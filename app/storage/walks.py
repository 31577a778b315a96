"""What every backend's `walk` shares: which names below a walked directory are files to yield.

Object stores list keys flat (one paginated call, no delimiter), and a walk over a tree (local, SFTP, FTP) builds the
same relative names level by level; both keep only what `list` would show at each level.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from app.paths import TEMP_PREFIX
from app.storage.base import WalkEntry


def visible(name: str) -> bool:
    """A name read from a directory that a walk descends into or yields: not `.`/`..`, nor an upload in progress."""
    return name not in ("", ".", "..") and not name.startswith(TEMP_PREFIX)


def relative_key(key: str, prefix: str) -> str | None:
    """A flat-listed key as a path relative to the walked `prefix`, or None when it is no file to yield: a foreign
    key (the listing sanity check), the directory placeholder itself or a marker (`a/`), or anything in or below an
    in-progress upload (temp objects, GCS's multipart staging)."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    if not rest or not all(visible(segment) for segment in rest.split("/")):
        return None
    return rest


Level = tuple[list[WalkEntry], list[str]]  # one directory's files, and its subdirectories to descend into


async def walk_levels(read_level: Callable[[str], Awaitable[Level]]) -> AsyncIterator[WalkEntry]:
    """Depth first over a remote tree, one listing per directory (SFTP, FTP): `read_level(relative)` lists the
    directory at `relative` ("" the walked one), naming what it finds relative to the walked directory."""
    pending = [""]
    while pending:
        files, subdirs = await read_level(pending.pop())
        for entry in files:
            yield entry
        pending.extend(subdirs)
