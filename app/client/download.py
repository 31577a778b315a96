"""Downloads that survive cut connections and end verified, or not at all.

Bytes go to `<file>.part` (the ETag they belong to in `<file>.part.etag`) and the file appears under its name only
when it is complete and its SHA-256 matches the server's `Repr-Digest`. A mismatch removes what was received. A cut
stream, in this run (a retry) or a later one (the `.part` left behind), continues with `Range: bytes=<have>-` and
`If-Range: <etag>`: if the artifact changed meanwhile the server answers 200 with the whole new version, and the
download starts over. The body is written and hashed about 1 MiB per thread hop (app/client/batches.py), and asked
for with `Accept-Encoding: identity` and taken undecoded: the digest is of the bytes the server stored.

Large files on servers that presign downloads come through the presigned URL instead, in `jobs` parallel ranges of
`part_size`, each range retried alone from where it stopped, but only when that URL is on another origin (a store:
S3, GCS, Azure), where the bytes then skip the server. A URL pointing back at the server itself (a local destination
signs its own) would bring parallel ranges from the same host, and a second read of the file to hash it: the
streamed GET is faster there, and resumes across runs (unless the server serves presigned URLs only).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from app.client.batches import batches
from app.client.digests import file_sha256, from_header
from app.client.options import TransferOptions
from app.client.progress import Bars
from app.client.session import (
    RETRIED_STATUSES,
    TRANSPORT_ERRORS,
    ClientError,
    Session,
    backoff,
    first_error,
    response_error,
    transport_message,
)
from app.client.uris import Remote

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# No gzip from the server or a proxy in between: the digest is of the stored bytes, and they are kept as they are.
_RAW = {"accept-encoding": "identity"}


@dataclass(frozen=True)
class Downloaded:
    size: int
    verified: bool  # False: the server sent no digest to check against


def part_paths(local: Path) -> tuple[Path, Path]:
    return local.with_name(local.name + ".part"), local.with_name(local.name + ".part.etag")


async def download_file(
    session: Session, remote: Remote, local: Path, size: int | None, options: TransferOptions, bars: Bars
) -> Downloaded:
    local.parent.mkdir(parents=True, exist_ok=True)
    info = await session.server_info()
    only = bool(info.get("artifacts_presigned_only"))  # the artifact route refuses GET: presigned it is, wherever
    large = bool(info.get("multipart_downloads_enabled")) and size is not None and size >= options.multipart_threshold
    if only or large:
        done = await _presigned(session, remote, local, options, bars, only)
        if done is not None:
            return done
    return await _streamed(session, remote, local, bars)


def _finish(remote: Remote, part: Path, local: Path, expected: str | None, actual: str) -> bool:
    """Rename into place if the digest matches (or none was given); blocking."""
    if expected is not None and expected != actual:
        part.unlink(missing_ok=True)
        part.with_name(part.name + ".etag").unlink(missing_ok=True)
        raise ClientError(
            f"{remote}: SHA-256 mismatch (the server says {expected}, the bytes received hash to {actual}); "
            f"nothing was kept at {local}"
        )
    os.replace(part, local)
    return expected is not None


def _resumable(part: Path, etag_file: Path) -> tuple[int, str | None]:
    try:
        return part.stat().st_size, etag_file.read_text().strip() or None
    except FileNotFoundError:
        return 0, None


async def _streamed(session: Session, remote: Remote, local: Path, bars: Bars) -> Downloaded:
    part, etag_file = part_paths(local)
    have, etag = _resumable(part, etag_file)
    if have and not etag:
        have = 0  # bytes of unknown provenance: If-Range has nothing to guard them with
    hasher = await asyncio.to_thread(file_sha256, part) if have else hashlib.sha256()
    bars.moved(have)
    url = remote.url()
    for attempt in range(session.retries + 1):
        headers = {"range": f"bytes={have}-", "if-range": etag} if have and etag else {}
        try:
            async with session.open("GET", url, {**_RAW, **headers}, auto_decompress=False) as response:
                if response.status == 416:  # asked from the very end: start over rather than guess
                    bars.moved(-have)
                    have, hasher = 0, hashlib.sha256()
                    part.unlink(missing_ok=True)
                    continue
                if response.status not in (200, 206):
                    failure = await response_error(response, f"download {remote}")
                    if response.status not in RETRIED_STATUSES:
                        raise failure
                    raise _Retry(failure)
                if response.status == 206 and not _starts_at(response.headers, have):
                    raise ClientError(f"download {remote}: the server sent a range that does not continue the file")
                if response.status == 200 and have:
                    bars.moved(-have)  # the artifact changed (or Range was ignored): the new version, whole
                    have, hasher = 0, hashlib.sha256()
                etag = response.headers.get("etag")
                expected = from_header(response.headers.get("repr-digest"))
                out = await asyncio.to_thread(_begin, part, etag_file, etag, truncate=have == 0)
                with out:
                    async for batch in batches(response.content):
                        await asyncio.to_thread(_write_hashed, out, batch, hasher)
                        received = sum(map(len, batch))
                        have += received
                        bars.moved(received)
            verified = await asyncio.to_thread(_finish, remote, part, local, expected, hasher.hexdigest())
            etag_file.unlink(missing_ok=True)
            return Downloaded(have, verified)
        except _Retry as retry:
            failure = retry.failure
        except TRANSPORT_ERRORS as exc:
            failure = ClientError(f"download {remote}: {transport_message(url, exc)} after {have} bytes")
        if attempt == session.retries:
            raise failure
        await asyncio.sleep(backoff(attempt))
    raise AssertionError("unreachable")


class _Retry(Exception):
    def __init__(self, failure: ClientError) -> None:
        self.failure = failure


def _starts_at(headers: Mapping[str, str], offset: int) -> bool:
    match = _CONTENT_RANGE.match(headers.get("content-range", ""))
    return match is not None and int(match.group(1)) == offset


def _begin(part: Path, etag_file: Path, etag: str | None, truncate: bool) -> BinaryIO:
    """Record the ETag the bytes belong to and open the `.part` for appending; blocking."""
    if etag and not etag.startswith("W/"):  # a weak ETag cannot guard a byte range
        etag_file.write_text(etag)
    else:
        etag_file.unlink(missing_ok=True)
    return open(part, "wb" if truncate else "ab")


def _write_hashed(out: BinaryIO, batch: list[bytes], hasher: Any) -> None:
    for block in batch:
        out.write(block)
        hasher.update(block)


async def _presigned(
    session: Session, remote: Remote, local: Path, options: TransferOptions, bars: Bars, required: bool
) -> Downloaded | None:
    """Ranged parallel download through the presigned URL; None (then the streamed GET) when the server cannot
    presign this file, or when the URL is the server's own and its artifact route is not closed (`required`)."""
    signed = await session.request(
        "GET", f"{remote.api}/presigned/{quote(remote.path, safe='/')}", what=f"download {remote}", ok=(200, 501)
    )
    if signed.status == 501:
        return None
    body = signed.json()
    url, extra = body["url"], dict(body.get("headers") or {})
    if session.is_server_origin(url) and not required:
        return None  # see the module docstring: from the server itself, the streamed GET is the faster one
    size = body.get("file_size")
    if size is None:
        return None  # no size to split by: the streamed GET, which also resumes
    size = int(size)
    # The digest comes from the artifact route: a store's presigned URL (S3, GCS) does not know ours. A server in
    # presigned-only mode refuses that HEAD (403): then the signed response may still say (a local destination's).
    head = await session.request("HEAD", remote.url(), what=f"download {remote}", ok=(200, 403))
    expected = from_header(head.headers.get("repr-digest"))
    part, etag_file = part_paths(local)
    etag_file.unlink(missing_ok=True)
    await asyncio.to_thread(_allocate, part, size)
    slots = asyncio.Semaphore(options.jobs)
    stated: list[str | None] = []

    async def fetch(start: int, end: int) -> None:
        async with slots:
            stated.append(await _fetch_range(session, remote, url, extra, part, start, end, bars))

    ranges = [(start, min(start + options.part_size, size) - 1) for start in range(0, size, options.part_size)]
    try:
        async with asyncio.TaskGroup() as group:
            for start, end in ranges:
                group.create_task(fetch(start, end))
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None
    expected = expected or next((digest for digest in stated if digest), None)
    actual = (await asyncio.to_thread(file_sha256, part)).hexdigest()
    verified = await asyncio.to_thread(_finish, remote, part, local, expected, actual)
    return Downloaded(size, verified)


def _pwrite_upto(fd: int, batch: list[bytes], at: int, stop: int) -> int:
    """Write `batch` at offset `at`, nothing at or past `stop` (a server may send more than the range); the bytes
    written. Blocking."""
    written = 0
    for block in batch:
        view = memoryview(block)[: max(0, stop - at - written)]
        while view:
            n = os.pwrite(fd, view, at + written)
            written += n
            view = view[n:]
    return written


def _allocate(part: Path, size: int) -> None:
    with open(part, "wb") as f:
        f.truncate(size)


async def _fetch_range(
    session: Session, remote: Remote, url: str, extra: dict[str, str], part: Path, start: int, end: int, bars: Bars
) -> str | None:
    """Write bytes start..end (inclusive) of the presigned URL into `part`; the Repr-Digest the response states."""
    at = start
    for attempt in range(session.retries + 1):
        wanted = {"range": f"bytes={at}-{end}"}
        try:
            async with session.open("GET", url, {**_RAW, **extra, **wanted}, auto_decompress=False) as response:
                whole = response.status == 200 and at == 0
                if response.status != 206 and not whole:
                    failure = await response_error(response, f"download {remote}")
                    if response.status not in RETRIED_STATUSES:
                        raise failure
                    raise _Retry(failure)
                if response.status == 206 and not _starts_at(response.headers, at):
                    raise ClientError(f"download {remote}: the presigned URL answered a different range")
                fd = await asyncio.to_thread(os.open, part, os.O_WRONLY)
                try:
                    async with aclosing(batches(response.content)) as body:
                        async for batch in body:
                            written = await asyncio.to_thread(_pwrite_upto, fd, batch, at, end + 1)
                            at += written
                            bars.moved(written)
                            if at > end:
                                break
                finally:
                    os.close(fd)
                if at <= end:
                    raise ClientError(f"download {remote}: the presigned URL ended the range early")
                return from_header(response.headers.get("repr-digest"))
        except _Retry as retry:
            failure = retry.failure
        except TRANSPORT_ERRORS as exc:
            failure = ClientError(f"download {remote}: {transport_message(url, exc)}")
        if attempt == session.retries:
            raise failure
        await asyncio.sleep(backoff(attempt))
    raise AssertionError("unreachable")
