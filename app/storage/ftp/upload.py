"""Uploads for the FTP backend: STOR a temp file beside the target, then RNFR/RNTO it into place.

FTP has no atomic create-only rename: create-only uploads check for the target just before the rename (a concurrent
writer can win that race). A failed or abandoned upload removes its temp file.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import NoReturn

import aioftp
import anyio
from aioftp.client import DataConnectionThrottleStreamIO

from app.errors import AlreadyExists, InvalidParameter
from app.paths import TEMP_PREFIX
from app.storage.ftp.commands import FTPCommands, open_transfer
from app.storage.ftp.connection import FTPConnection
from app.storage.ftp.errors import ftp_errors, refused
from app.storage.ftp.pool import Lease

logger = logging.getLogger("artifact_proxy.storage.ftp")


class FTPUploads:
    def __init__(self, connection: FTPConnection, commands: FTPCommands) -> None:
        self._connection, self._commands = connection, commands

    async def write(self, target: str, where: str, chunks: AsyncIterator[bytes], create_only: bool) -> None:
        """Store `chunks` at `target` (named `where` in errors), all or nothing."""
        temp = posixpath.join(posixpath.dirname(target), f"{TEMP_PREFIX}{secrets.token_hex(16)}")
        try:
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
        except BaseException:
            with anyio.CancelScope(shield=True):  # a client that went away must not leave a temp file behind
                await self._discard(temp)
            raise

    async def _open_upload(self, lease: Lease, temp: str, where: str) -> DataConnectionThrottleStreamIO:
        try:
            return await open_transfer(lease, f"STOR {temp}")
        except aioftp.StatusCodeError as exc:
            if not refused(exc):
                raise
        await self._commands.makedirs(lease, posixpath.dirname(temp), where)
        return await open_transfer(lease, f"STOR {temp}")

    async def _publish(self, lease: Lease, temp: str, target: str, where: str, create_only: bool) -> None:
        client, stat = lease.client, self._commands.stat
        if create_only and (info := await stat(lease, target)) is not None:
            if info.get("type") == "dir":
                raise InvalidParameter(f"Cannot write '{where}': it is a directory")
            raise AlreadyExists(where)  # not atomic: FTP cannot rename only-if-absent
        try:
            await client.rename(temp, target)
            return
        except aioftp.StatusCodeError:
            info = await stat(lease, target)
            if info is not None and info.get("type") == "dir":
                raise InvalidParameter(f"Cannot write '{where}': it is a directory") from None
            if info is None or create_only:
                raise
        # Some servers (IIS) refuse to rename onto an existing file: remove it first; readers briefly see no file.
        logger.debug("ftp server refused to replace %r by rename; replacing in two steps", target)
        await client.remove_file(target)
        await client.rename(temp, target)

    async def _discard(self, temp: str) -> None:
        async def op(lease: Lease) -> None:
            with suppress(aioftp.StatusCodeError):  # never created, or already renamed
                await lease.client.remove_file(temp)

        with suppress(Exception):  # best effort: a leftover temp file stays hidden from listings
            await asyncio.wait_for(self._connection.run("discarding", temp, op), 10)


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
