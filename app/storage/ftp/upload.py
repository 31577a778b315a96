"""Uploads for the FTP backend: STOR a temp file beside the target, then RNFR/RNTO it into place.

FTP has no atomic create-only rename: create-only uploads check for the target just before the rename (a concurrent
writer can win that race). A failed or abandoned upload removes its temp file.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial
from typing import NoReturn

import aioftp
from aioftp.client import DataConnectionThrottleStreamIO

from app.storage.ftp.commands import FTPCommands, open_transfer
from app.storage.ftp.connection import FTPConnection
from app.storage.ftp.dirs import makedirs
from app.storage.ftp.errors import ftp_errors, refused
from app.storage.ftp.facts import kind_of
from app.storage.ftp.pool import Lease
from app.storage.remote_paths import Kind, best_effort, discard_on_failure, publish_refusal, temp_beside

logger = logging.getLogger("artifact_proxy.storage.ftp")


class FTPUploads:
    def __init__(self, connection: FTPConnection, commands: FTPCommands) -> None:
        self._connection, self._commands = connection, commands

    async def write(self, target: str, where: str, chunks: AsyncIterator[bytes], create_only: bool) -> None:
        """Store `chunks` at `target` (named `where` in errors), all or nothing."""
        temp = temp_beside(target)
        async with discard_on_failure(partial(self._discard, temp)):
            with ftp_errors("writing", where):
                async with self._connection.lease() as lease:
                    stream = await self._open_upload(lease, temp, where)
                    try:
                        async for chunk in chunks:
                            await stream.write(chunk)
                    except (OSError, RuntimeError) as exc:  # asyncio's RuntimeError: the transport is closed
                        await _raise_servers_reason(stream, exc)
                    except BaseException:
                        stream.close()
                        raise
                    await stream.finish()  # the server's 226: every byte is stored
                    lease.reusable = True
                    await self._publish(lease, temp, target, where, create_only)

    async def _open_upload(self, lease: Lease, temp: str, where: str) -> DataConnectionThrottleStreamIO:
        try:
            return await open_transfer(lease, f"STOR {temp}")
        except aioftp.StatusCodeError as exc:
            if not refused(exc):
                raise
        await makedirs(self._commands, lease, posixpath.dirname(temp), where)
        return await open_transfer(lease, f"STOR {temp}")

    async def _publish(self, lease: Lease, temp: str, target: str, where: str, create_only: bool) -> None:
        client, stat = lease.client, self._commands.stat
        if create_only:  # not atomic: FTP cannot rename only-if-absent
            refusal = publish_refusal(kind_of(await stat(lease, target)), where, create_only)
            if refusal is not None:
                raise refusal
        try:
            await client.rename(temp, target)
            return
        except aioftp.StatusCodeError:
            kind = kind_of(await stat(lease, target))
            refusal = publish_refusal(kind, where, create_only=False)  # a directory, whatever the options
            if refusal is not None:
                raise refusal from None
            if kind is Kind.MISSING or create_only:
                raise
        # Some servers (IIS) refuse to rename onto an existing file: remove it first; readers briefly see no file.
        logger.debug("ftp server refused to replace %r by rename; replacing in two steps", target)
        await client.remove_file(target)
        await client.rename(temp, target)

    async def _discard(self, temp: str) -> None:
        async def op(lease: Lease) -> None:
            with suppress(aioftp.StatusCodeError):  # never created, or already renamed
                await lease.client.remove_file(temp)

        await best_effort(self._connection.run("discarding", temp, op), 10)


async def _raise_servers_reason(stream: DataConnectionThrottleStreamIO, exc: BaseException) -> NoReturn:
    """The server closed the data connection mid-upload: its control reply says why (a full disk is a 426, 451,
    452 or 552 naming the reason), so raise that reply rather than the bare connection error."""
    try:
        await asyncio.wait_for(stream.finish(), 10)
    except aioftp.StatusCodeError as reply:
        raise reply from exc
    except Exception:
        stream.close()
    raise ConnectionResetError(f"the FTP server closed the data connection: {exc}") from exc
