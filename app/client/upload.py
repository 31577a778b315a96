"""Uploads: a streamed PUT, or presigned multipart for large files when the server offers it.

The PUT hashes what it sends and compares it with the `Repr-Digest` the server answers with, so a file that changed
on disk or in transit is an error, not a silent copy. Multipart (`mpu/create`, part PUTs to the URLs it gives,
`mpu/complete`) sends `jobs` parts at a time, each part streamed from its offset and retried alone with backoff; an
upload that fails for good is aborted (`mpu/abort`) so the store drops its staging. A server without multipart
(501 on create, or server-info saying so) gets a PUT.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.client.digests import CHUNK, from_header
from app.client.options import TransferOptions
from app.client.progress import Bars
from app.client.session import (
    RETRIED_STATUSES,
    TRANSPORT_ERRORS,
    ClientError,
    Reply,
    Session,
    backoff,
    first_error,
    status_error,
    transport_message,
)
from app.client.uris import Remote


async def upload_file(session: Session, local: Path, remote: Remote, options: TransferOptions, bars: Bars) -> int:
    """Upload one file; the number of bytes sent."""
    size = local.stat().st_size
    info = await session.server_info()
    wanted = bool(info.get("multipart_uploads_enabled")) and size >= options.multipart_threshold
    if (wanted or info.get("artifacts_presigned_only")) and await _multipart(
        session, local, remote, size, options, bars
    ):
        return size
    await _put(session, local, remote, size, bars)
    return size


def _file_body(local: Path, offset: int, length: int, hasher: Any, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        with open(local, "rb") as f:
            f.seek(offset)
            remaining = length
            while remaining > 0:
                block = await asyncio.to_thread(_read_hashed, f, min(CHUNK, remaining), hasher)
                if not block:
                    raise ClientError(f"{local} shrank while it was being uploaded")
                remaining -= len(block)
                sent(len(block))
                yield block

    return body()


def _read_hashed(f: Any, size: int, hasher: Any) -> bytes:
    block: bytes = f.read(size)
    if hasher is not None:
        hasher.update(block)
    return block


async def _send(
    session: Session,
    method: str,
    url: str,
    local: Path,
    offset: int,
    length: int,
    headers: dict[str, str],
    bars: Bars,
    what: str,
    hasher_factory: Callable[[], Any] = lambda: None,
) -> tuple[Reply, Any]:
    """Send a byte range of `local` as a request body, retrying transient failures by sending it again."""
    for attempt in range(session.retries + 1):
        moved = 0
        hasher = hasher_factory()

        def sent(n: int) -> None:
            nonlocal moved
            moved += n
            bars.moved(n)

        body = _file_body(local, offset, length, hasher, sent)
        try:
            # The length up front (no chunked encoding: S3 and GCS refuse it on presigned PUTs), and no
            # Content-Type of aiohttp's choosing: a store may have signed the headers the server handed out, no more.
            async with session.open(
                method,
                url,
                {**headers, "content-length": str(length)},
                data=body,
                skip_auto_headers=("content-type",),
            ) as response:
                reply = Reply(response.status, response.headers, await response.read())
        except TRANSPORT_ERRORS as exc:
            failure: ClientError = ClientError(transport_message(url, exc))
        else:
            if reply.status == 200:
                return reply, hasher
            failure = status_error(reply.status, reply.body, what)
            if reply.status not in RETRIED_STATUSES:
                raise failure
        bars.moved(-moved)
        if attempt == session.retries:
            raise failure
        await asyncio.sleep(backoff(attempt))
    raise AssertionError("unreachable")


async def _put(session: Session, local: Path, remote: Remote, size: int, bars: Bars) -> None:
    response, hasher = await _send(
        session, "PUT", remote.url(), local, 0, size, {}, bars, f"upload {remote}", hashlib.sha256
    )
    stored = from_header(response.headers.get("repr-digest"))
    if stored is not None and stored != hasher.hexdigest():
        raise ClientError(
            f"upload {remote}: the server stored SHA-256 {stored}, but the bytes sent hash to {hasher.hexdigest()}"
        )


async def _multipart(
    session: Session, local: Path, remote: Remote, size: int, options: TransferOptions, bars: Bars
) -> bool:
    """Upload through presigned parts; False when the server turns out to have no multipart (then PUT)."""
    num_parts = max(1, -(-size // options.part_size))
    base = f"{remote.api}/mpu/%s/{quote(remote.parent, safe='/')}"
    created = await session.request(
        "POST",
        base % "create",
        json={"path": remote.name, "num_parts": num_parts},
        what=f"start multipart upload of {remote}",
        ok=(200, 501),
    )
    if created.status == 501:
        return False
    body = created.json()
    upload_id = body.get("upload_id")
    credentials: list[dict[str, Any]] = sorted(body.get("credentials", []), key=lambda c: int(c["part_number"]))
    if len(credentials) != num_parts:
        raise ClientError(
            f"start multipart upload of {remote}: asked for {num_parts} part URLs, got {len(credentials)}"
        )
    identity: dict[str, Any] = {"path": remote.name, **({"upload_id": upload_id} if upload_id is not None else {})}
    slots = asyncio.Semaphore(options.jobs)

    async def send_part(credential: dict[str, Any]) -> dict[str, Any]:
        number = int(credential["part_number"])
        offset = (number - 1) * options.part_size
        length = max(0, min(options.part_size, size - offset))
        async with slots:
            response, _ = await _send(
                session,
                "PUT",
                credential["url"],
                local,
                offset,
                length,
                dict(credential.get("headers") or {}),
                bars,
                f"upload part {number} of {remote}",
            )
        return {"part_number": number, "etag": response.headers.get("etag", ""), "url": credential["url"]}

    try:
        async with asyncio.TaskGroup() as group:  # one part failing for good cancels the rest
            sending = [group.create_task(send_part(c)) for c in credentials]
        parts = [task.result() for task in sending]
        await session.request(
            "POST", base % "complete", json={**identity, "parts": parts}, what=f"complete upload of {remote}"
        )
    except BaseException as exc:
        # Shielded: a Ctrl-C must not leave the staging behind either.
        await asyncio.shield(_abort(session, base % "abort", identity))
        raise first_error(exc) from None
    return True


async def _abort(session: Session, url: str, identity: dict[str, Any]) -> None:
    try:
        await session.request("POST", url, json=identity, what="abort multipart upload")
    except ClientError:
        pass  # the upload's own failure is what the user needs to hear; the store expires what is left
