"""Uploads for the SFTP backend: stream to a temp file beside the target, then rename it into place.

posix-rename replaces atomically; create-only uploads hard-link (which fails if the target exists) or fall back to
the standard SFTP rename, which never replaces. A failed or abandoned upload removes its temp file.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

import asyncssh

from app.settings import Settings
from app.storage.chunks import rechunk
from app.storage.remote_paths import best_effort, discard_on_failure, publish_refusal, temp_beside
from app.storage.sftp.connection import SFTPConnection
from app.storage.sftp.dirs import makedirs, target_kind
from app.storage.sftp.errors import MISSING

logger = logging.getLogger("artifact_proxy.storage.sftp")


class SFTPUploads:
    def __init__(self, connection: SFTPConnection, settings: Settings) -> None:
        self._connection, self._settings = connection, settings

    async def write(self, target: str, where: str, chunks: AsyncIterator[bytes], create_only: bool) -> None:
        """Store `chunks` at `target` (named `where` in errors), all or nothing."""
        run, io = self._connection.run, self._connection.io
        temp = temp_beside(target)
        sftp, file = await run("creating", where, lambda sftp: self._open_temp(sftp, temp, where))
        async with discard_on_failure(partial(self._discard, file, temp)):
            await self._pump(sftp, file, chunks, where)
            if self._settings.fsync_uploads:
                await io("syncing", where, sftp, partial(_fsync, file))
            await io("closing", where, sftp, file.close)
            # Not retried: a rename that happened before the connection dropped must not be redone.
            publish = partial(self._publish, temp=temp, target=target, where=where, create_only=create_only)
            await run("publishing", where, publish, retry=False)

    async def _open_temp(
        self, sftp: asyncssh.SFTPClient, temp: str, where: str
    ) -> tuple[asyncssh.SFTPClient, asyncssh.SFTPClientFile]:
        try:
            return sftp, await sftp.open(temp, "xb")
        except MISSING:
            await makedirs(sftp, posixpath.dirname(temp), where)
            return sftp, await sftp.open(temp, "xb")

    async def _pump(
        self, sftp: asyncssh.SFTPClient, file: asyncssh.SFTPClientFile, chunks: AsyncIterator[bytes], where: str
    ) -> None:
        """Write the stream in blocks, sending one block while the next is received: at most two in memory."""
        offset, pending = 0, None
        try:
            async for block in rechunk(chunks, self._settings.upload_chunk_size):
                if pending is not None:
                    await pending
                # The coroutine is made inside the task: a task cancelled before it runs leaves none unawaited.
                write = partial(file.write, block, offset)
                pending = asyncio.ensure_future(self._connection.io("writing", where, sftp, write))
                offset += len(block)
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with suppress(BaseException):
                    await pending

    async def _publish(self, sftp: asyncssh.SFTPClient, temp: str, target: str, where: str, create_only: bool) -> None:
        try:
            if create_only:
                await _create(sftp, temp, target)
            else:
                await _replace(sftp, temp, target)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPFileIsADirectory):
            refusal = publish_refusal(await target_kind(sftp, target, create_only), where, create_only)
            if refusal is not None:
                raise refusal from None
            raise

    async def _discard(self, file: asyncssh.SFTPClientFile, temp: str) -> None:
        await best_effort(file.close(), 5)
        await best_effort(self._connection.run("discarding", temp, lambda sftp: sftp.remove(temp)), 10)


async def _create(sftp: asyncssh.SFTPClient, temp: str, target: str) -> None:
    try:
        await sftp.link(temp, target)  # a hard link fails if the target exists: atomic create-only
    except asyncssh.SFTPOpUnsupported:
        await sftp.rename(temp, target)  # the standard SFTP rename never replaces an existing file
        return
    with suppress(asyncssh.SFTPError):
        await sftp.remove(temp)


async def _replace(sftp: asyncssh.SFTPClient, temp: str, target: str) -> None:
    try:
        await sftp.posix_rename(temp, target)
    except asyncssh.SFTPOpUnsupported:
        # A server without posix-rename: readers may briefly see no file, never a partial one.
        logger.debug("sftp server lacks posix-rename; replacing %r in two steps", target)
        with suppress(*MISSING):
            await sftp.remove(target)
        await sftp.rename(temp, target)


async def _fsync(file: asyncssh.SFTPClientFile) -> None:
    with suppress(asyncssh.SFTPOpUnsupported):  # fsync@openssh.com is an extension: without it, the server decides
        await file.fsync()
