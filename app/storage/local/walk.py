"""The local backend's `walk`: every regular file below a directory, one directory (one thread hop) at a time.

Links are never followed, not even ones that stay inside the root: a walk cannot loop, cannot leave the root, and
never yields a file that authorization would have to resolve again (a link inside the root could lead into a prefix
the rules refuse). FIFOs, sockets and devices are no artifacts, and temp files are uploads in progress: all skipped.
Each directory is opened below the root descriptor (`resolve.Root`), so one renamed into a link mid-walk is refused.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator

from app.errors import PathOutsideRoot
from app.paths import ArtifactPath
from app.storage.base import WalkEntry
from app.storage.local.files import MISSING, LocalFiles
from app.storage.walks import visible

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _level(files: LocalFiles, directory: str, relative: str) -> tuple[list[WalkEntry], list[str]]:
    """The files of one directory (`directory` below the root, `relative` to the walked one) and its subdirectories;
    nothing for a directory that is gone, or has become a file or a link out of the root, since the walk began."""
    try:
        fd = files.dir.open(directory, _DIR_OPEN)
    except (*MISSING, PathOutsideRoot):
        return [], []
    found: list[WalkEntry] = []
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if not visible(entry.name) or entry.is_symlink():
                    continue
                name = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(WalkEntry(name, st.st_size, st.st_mtime))
                except FileNotFoundError:
                    continue  # removed while listed
    finally:
        os.close(fd)
    return found, subdirs


async def walk(files: LocalFiles, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
    base = path.canonical
    pending = [""]
    while pending:
        relative = pending.pop()
        directory = f"{base}/{relative}" if base and relative else base or relative
        level: tuple[list[WalkEntry], list[str]] = await files.run(_level, files, directory, relative)
        for entry in level[0]:
            yield entry
        pending.extend(level[1])
