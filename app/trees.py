"""The files below a directory, as one request may serve them: the recursive listing and archives build on this.

A store's `walk` yields what it holds; here each file is held to what a GET of it meets, before anything is sent:
- its path must be one the path validator gives back unchanged (a name it refuses or rewrites, a control character
  or a backslash from a local or SFTP directory, is no artifact the API could serve: it is left out);
- `glob=` narrows the set (app/globs.py);
- every file left must be readable by the caller (`auth.read_filter`): if one is not, the whole request is refused
  (403), so an archive or listing is always everything asked for, never silently less;
- at most `ARTIFACT_PROXY_ARCHIVE_MAX_FILES` files, and for archives `ARTIFACT_PROXY_ARCHIVE_MAX_BYTES`: 400 past
  either, told before the first byte, and the walk stops there rather than paging on through the prefix.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass

from starlette.requests import Request

from app.auth import read_filter
from app.deps import settings_of, store_of
from app.errors import ArtifactProxyError, InvalidParameter, PermissionDenied
from app.globs import Glob
from app.paths import ArtifactPath, EntryPath, canonical_path
from app.storage.base import WalkEntry


@dataclass(frozen=True, slots=True)
class Tree:
    directory: ArtifactPath
    files: list[WalkEntry]  # sorted by path, relative to `directory`

    def path_of(self, entry: WalkEntry) -> EntryPath:
        base = self.directory.canonical
        return EntryPath(f"{base}/{entry.path}" if base else entry.path)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


def _addressable(directory: ArtifactPath, relative: str) -> ArtifactPath | None:
    full = f"{directory.canonical}/{relative}" if directory.canonical else relative
    try:
        path = canonical_path(full)
    except ArtifactProxyError:
        return None
    return path if path.canonical == full else None


async def collect(request: Request, directory: ArtifactPath, glob: Glob | None, archive: bool) -> Tree:
    """The files below `directory` (already authorized for READ), checked as the module docstring says."""
    settings = settings_of(request)
    max_files = settings.archive_max_files
    may_read = read_filter(request)
    files: list[WalkEntry] = []
    async with aclosing(store_of(request).walk(directory)) as walk:
        async for entry in walk:
            path = _addressable(directory, entry.path)
            if path is None or (glob is not None and not glob.matches(entry.path)):
                continue
            if not may_read(path):
                raise PermissionDenied(f"'{path.canonical}' below '{directory.canonical or '/'}' may not be read")
            files.append(entry)
            if len(files) > max_files:
                raise InvalidParameter(
                    f"More than {max_files} files below '{directory.canonical or '/'}' "
                    "(ARTIFACT_PROXY_ARCHIVE_MAX_FILES): narrow it with a deeper path or glob="
                )
    files.sort(key=lambda entry: entry.path)
    tree = Tree(directory, files)
    if archive and tree.total_bytes > settings.archive_max_bytes:
        raise InvalidParameter(
            f"The files below '{directory.canonical or '/'}' add up to {tree.total_bytes} bytes, more than "
            f"{settings.archive_max_bytes} (ARTIFACT_PROXY_ARCHIVE_MAX_BYTES): narrow it with a deeper path or glob="
        )
    return tree
