"""Listings: one level, or a whole tree, from servers that list recursively and from servers that cannot.

This service answers `GET artifacts?path=<dir>&recursive=true[&glob=...]` with every file below `<dir>` (files only,
paths relative to `<dir>`). MLflow's server, and older versions of this one, ignore both parameters and answer with
one level: basenames, directories as `is_dir: true` entries. Telling the two apart:

- an `is_dir` entry means the server listed one level: walk the directories it named, one listing each, `jobs` at a
  time (the first answer already is the top level, so it is not asked for again);
- no `is_dir` entry means the answer holds every file below `<dir>` whichever kind of server sent it: a recursive
  listing has no directories by definition, and a one-level listing without directories is the whole tree.

So the answer is right without knowing which server answered. A server may also ignore `glob`, so the pattern is
applied here too, with the server's own matcher (`app.globs`: `*` within a segment, `**` across them): filtering what
the server already filtered changes nothing, and a walk of MLflow's server selects what ours would.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.client.session import ClientError, NotFound, Session
from app.client.uris import ARTIFACTS_ROOT, Remote, join
from app.errors import InvalidParameter
from app.globs import Glob, parse_glob


@dataclass(frozen=True, order=True)
class Entry:
    path: str  # relative to the listed directory
    is_dir: bool = False
    size: int | None = None


def matches(path: str, pattern: str | None) -> bool:
    """`glob=` as the server matches it, on the path relative to the listed directory."""
    return pattern is None or _compiled(pattern).matches(path)


@lru_cache(maxsize=8)
def _compiled(pattern: str) -> Glob:
    try:
        glob = parse_glob(pattern)
    except InvalidParameter as exc:
        raise ClientError(f"--glob {pattern!r}: {exc.message}") from None
    assert glob is not None  # only an absent pattern parses to None
    return glob


def lists_whole_tree(files: list[dict[str, Any]]) -> bool:
    """Whether a `recursive=true` answer is the whole tree (see the module docstring for why this suffices)."""
    return not any(entry.get("is_dir") for entry in files)


async def list_level(session: Session, remote: Remote, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = await session.request(
        "GET", f"{remote.server}{ARTIFACTS_ROOT}", params={"path": remote.path, **(extra or {})}, what=f"list {remote}"
    )
    try:
        body = response.json()
        files = body.get("files", []) if isinstance(body, dict) else None
    except ValueError:
        files = None
    if not isinstance(files, list) or not all(isinstance(entry, dict) and "path" in entry for entry in files):
        raise ClientError(f"list {remote}: the server's answer is not an artifact listing")
    return files


def _entry(relative: str, raw: dict[str, Any]) -> Entry:
    size = raw.get("file_size")
    return Entry(relative, bool(raw.get("is_dir")), int(size) if size is not None else None)


async def list_tree(
    session: Session, remote: Remote, pattern: str | None, jobs: int, server_recursive: bool = True
) -> list[Entry]:
    """Every file below `remote` (relative paths, sorted), matching `pattern`."""
    if server_recursive:
        extra = {"recursive": "true", **({"glob": pattern} if pattern else {})}
        files = await list_level(session, remote, extra)
        if lists_whole_tree(files):
            found = [_entry(raw["path"].strip("/"), raw) for raw in files]
            return sorted(entry for entry in found if matches(entry.path, pattern))
    else:
        files = await list_level(session, remote)
    found = await _walk(session, remote, files, jobs)
    return sorted(entry for entry in found if matches(entry.path, pattern))


async def _walk(session: Session, remote: Remote, top: list[dict[str, Any]], jobs: int) -> list[Entry]:
    found: list[Entry] = []
    requests = asyncio.Semaphore(jobs)  # held for the request only, so nested walks cannot starve each other

    async def visit(relative: str, files: list[dict[str, Any]]) -> None:
        below: list[Entry] = []
        for raw in files:
            child = join(relative, posixpath.basename(str(raw["path"]).rstrip("/")))
            entry = _entry(child, raw)
            (below if entry.is_dir else found).append(entry)
        async with asyncio.TaskGroup() as group:
            for directory in below:
                group.create_task(descend(directory.path))

    async def descend(relative: str) -> None:
        async with requests:
            files = await list_level(session, remote.child(relative))
        await visit(relative, files)

    await visit("", top)
    return found


async def list_one_level(session: Session, remote: Remote, pattern: str | None) -> list[Entry]:
    files = await list_level(session, remote)
    entries = [_entry(posixpath.basename(str(raw["path"]).rstrip("/")), raw) for raw in files]
    return sorted(entry for entry in entries if matches(entry.path, pattern))


async def head_size(session: Session, remote: Remote) -> int | None:
    """The size of the file at `remote`; None when it is a directory (400); NotFound when nothing is there."""
    try:
        response = await session.request("HEAD", remote.url(), what=str(remote), ok=(200, 400))
    except NotFound:
        raise NotFound(f"{remote}: not found (404)") from None
    if response.status == 400:
        return None
    return int(response.headers.get("content-length", 0))
