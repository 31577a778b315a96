"""What the SFTP and FTP backends do alike with a directory tree on a remote server, written once: the root a URI
names, artifact paths under it, temp names beside a target and their cleanup, which listed names are shown,
`mkdir -p`, and what refuses to be replaced by a publish.

Each backend supplies only its protocol's primitives (`Directories`, a `Kind` for a path); the rules are here.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import anyio

from app.errors import AlreadyExists, ArtifactProxyError, InvalidParameter
from app.paths import TEMP_PREFIX, ArtifactPath
from app.storage.base import FileInfo

SELF_OR_PARENT = (".", "..")  # listed by some servers; never artifacts, and a recursive delete would loop on them
_NEEDS_NO_MAKING = ("", ".", "/")  # the login directory, the filesystem root


# names ---------------------------------------------------------------------------------------------------------------
def root_of(url_path: str) -> str:
    """The root directory named by a destination URI's percent-decoded path: as in curl, `/~/dir` is relative to the
    login directory and any other path is absolute; "." is the login directory itself."""
    path = url_path
    root = "." if path in ("", "/~", "/~/") else path[3:].rstrip("/") if path.startswith("/~/") else path.rstrip("/")
    return root or "/"


def remote_path(root: str, path: ArtifactPath) -> str:
    """Where `path` lives on the server. Never a bare relative name: `LIST -x` would be read as options by some FTP
    servers; `./-x` is a path."""
    return posixpath.join(root, path.canonical) if path.canonical else root


def temp_beside(target: str) -> str:
    """A fresh temp name in the target's directory, so the rename into place stays on one filesystem; listings hide
    it (`listable`)."""
    return posixpath.join(posixpath.dirname(target), f"{TEMP_PREFIX}{secrets.token_hex(16)}")


def listable(name: str) -> bool:
    """Whether a name read from a directory is an artifact to list: not `.` or `..`, nor an upload in progress."""
    return name not in SELF_OR_PARENT and not name.startswith(TEMP_PREFIX)


def by_name(infos: Iterable[FileInfo | None]) -> list[FileInfo]:
    """A listing: the entries that are files or directories (None for the rest), sorted by name."""
    return sorted((info for info in infos if info is not None), key=lambda info: info.path)


# uploads -------------------------------------------------------------------------------------------------------------
@asynccontextmanager
async def discard_on_failure(discard: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run `discard` when the block fails, shielded: a client that went away must not leave a temp file behind."""
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await discard()
        raise


async def best_effort(step: Awaitable[object], timeout: float) -> None:
    """Clean-up that may fail or hang without harm: a leftover temp file stays hidden from listings."""
    with suppress(Exception):
        await asyncio.wait_for(step, timeout)


class Kind(Enum):
    """What is at a remote path, as far as writing there is concerned."""

    DIR = "dir"
    OTHER = "other"  # a file, a link, a device
    MISSING = "missing"


def publish_refusal(kind: Kind, where: str, create_only: bool) -> ArtifactProxyError | None:
    """Why an upload cannot take the place of what is at its target (named `where`), or None: a directory is never
    replaced, and nothing at all is by a create-only upload. Returned, for the caller to raise from its context."""
    if kind is Kind.DIR:
        return InvalidParameter(f"Cannot write '{where}': it is a directory")
    if create_only and kind is not Kind.MISSING:
        return AlreadyExists(where)
    return None


# mkdir -p ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Refusal:
    """A directory the server did not make: `error` is raised should it turn out missing even once its parents
    exist; `parent_missing` when the server said that is why (SFTP does; FTP's 550 means that or any refusal)."""

    error: BaseException
    parent_missing: bool


class Directories(Protocol):
    """One connection's directory primitives, for `make_dirs`."""

    async def mkdir(self, directory: str) -> Refusal | None:
        """Make one directory: None once made, else the refusal; an error that is no refusal is raised."""
        ...

    async def mkdir_again(self, directory: str) -> None:
        """Make it again once its parents exist, ignoring a refusal: a concurrent upload may have made it first."""
        ...

    async def kind(self, directory: str) -> Kind:
        """What is there now; only a backend that tells a missing path from a refused one answers MISSING."""
        ...


async def make_dirs(dirs: Directories, directory: str, where: str | None = None) -> None:
    """mkdir -p, from the deepest existing directory down: one request per level when nothing is in the way.

    `where` names the upload in the error raised when a parent path is a file."""
    if directory in _NEEDS_NO_MAKING:
        return
    refusal = await dirs.mkdir(directory)
    if refusal is None:
        return
    kind = Kind.MISSING if refusal.parent_missing else await dirs.kind(directory)
    if kind is Kind.MISSING:  # its parent is missing too: make that first
        await make_dirs(dirs, posixpath.dirname(directory), where)
        await dirs.mkdir_again(directory)
        kind = await dirs.kind(directory)
    if kind is Kind.MISSING:
        raise refusal.error
    if kind is not Kind.DIR:
        raise InvalidParameter(f"Cannot write '{where or directory}': a parent path is a file")
