"""`cp`: what goes where (a file, or a tree with -r), then the transfers, `jobs` files at a time.

Names follow `aws s3 cp`: a destination ending in `/` (or, downloading, an existing local directory) receives the
source under its own name; otherwise the destination is the new name. With -r the source directory's contents go
into the destination directory. One file failing does not stop the others; every failure is in the summary.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from app.client.download import download_file
from app.client.listing import head_size, list_tree
from app.client.options import TransferOptions
from app.client.progress import Bars, Summary
from app.client.session import ClientError, Session
from app.client.upload import upload_file
from app.client.uris import Remote

T = TypeVar("T")


def local_files(root: Path) -> list[str]:
    """Files below `root`, as sorted POSIX paths relative to it (symlinks to files followed, to directories not)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            full = Path(directory, name)
            if full.is_file():
                found.append(full.relative_to(root).as_posix())
    return sorted(found)


async def upload(
    session: Session,
    source: Path,
    target: Remote,
    into: bool,
    recursive: bool,
    options: TransferOptions,
    bars: Bars,
    summary: Summary,
) -> None:
    if source.is_dir():
        if not recursive:
            raise ClientError(f"{source} is a directory (use -r to copy a tree)")
        pairs = [(source / rel, target.child(rel)) for rel in local_files(source)]
    elif source.is_file():
        pairs = [(source, target.child(source.name) if into or not target.path else target)]
    else:
        raise ClientError(f"{source}: no such file or directory")
    sizes = {local: local.stat().st_size for local, _ in pairs}
    bars.expect(sum(sizes.values()), len(pairs))

    async def one(local: Path, remote: Remote) -> None:
        sent = await upload_file(session, local, remote, options, bars)
        summary.bytes += sent  # not `+= await ...`: that reads the total before the await, losing concurrent adds

    await _run(pairs, lambda pair: one(*pair), lambda pair: str(pair[0]), options.jobs, bars, summary)


async def download(
    session: Session,
    source: Remote,
    destination: str,
    recursive: bool,
    options: TransferOptions,
    bars: Bars,
    summary: Summary,
) -> None:
    pairs: list[tuple[Remote, Path, int | None]]
    target = Path(destination)
    size = await head_size(session, source) if source.path else None
    if size is not None:
        into = target.is_dir() or destination.endswith(("/", os.sep))
        pairs = [(source, target / source.name if into else target, size)]
    elif not recursive:
        raise ClientError(f"{source} is a directory (use -r to copy a tree)")
    else:
        entries = await list_tree(session, source, None, options.jobs, options.server_recursive)
        if not entries:
            raise ClientError(f"{source}: nothing to download (an empty or missing directory)")
        pairs = [(source.child(e.path), target.joinpath(*e.path.split("/")), e.size) for e in entries]
    bars.expect(sum(p[2] or 0 for p in pairs), len(pairs))

    async def one(remote: Remote, local: Path, size: int | None) -> None:
        done = await download_file(session, remote, local, size, options, bars)
        summary.bytes += done.size
        if not done.verified:
            summary.not_verified.append(str(local))

    await _run(pairs, lambda pair: one(*pair), lambda pair: str(pair[0]), options.jobs, bars, summary)


async def _run(
    items: list[T],
    work: Callable[[T], Awaitable[None]],
    name: Callable[[T], str],
    jobs: int,
    bars: Bars,
    summary: Summary,
) -> None:
    slots = asyncio.Semaphore(jobs)

    async def guarded(item: T) -> None:
        async with slots:
            try:
                await work(item)
            except ClientError as exc:
                summary.fail(name(item), str(exc))
                return
            except OSError as exc:
                summary.fail(name(item), f"{exc.strerror or exc}: {exc.filename or name(item)}")
                return
            summary.files += 1
            bars.file_done()

    await asyncio.gather(*(guarded(item) for item in items))
