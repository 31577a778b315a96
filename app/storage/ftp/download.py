"""Downloads for the FTP backend: RETR, with a REST offset for ranges, on a connection leased for the transfer.

RETR opens by name, so each range checks at its end that the file is still the version `open_read` saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from app.errors import ArtifactNotFound, IsADirectoryArtifact, StorageUnavailable
from app.storage.base import ObjectMeta
from app.storage.ftp.commands import FTPCommands, open_transfer
from app.storage.ftp.connection import FTPConnection
from app.storage.ftp.errors import ftp_errors
from app.storage.ftp.facts import object_meta
from app.storage.ftp.pool import Lease

MIN_YIELD = 64 * 1024  # download pieces are gathered to at least this size: fewer, larger ASGI sends


class FTPReadHandle:
    def __init__(self, downloads: FTPDownloads, remote: str, meta: ObjectMeta, where: str) -> None:
        self.meta = meta
        self._downloads, self._remote, self._where = downloads, remote, where
        self._streams: list[AsyncGenerator[bytes, None]] = []

    def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        stream = self._downloads.stream_range(self._remote, self._where, start, end, self.meta)
        self._streams.append(stream)  # closed in aclose, so the pooled connection comes back at once
        return stream

    async def aclose(self) -> None:
        for stream in self._streams:
            await stream.aclose()
        self._streams.clear()


class FTPDownloads:
    def __init__(self, connection: FTPConnection, commands: FTPCommands, chunk_size: int) -> None:
        self._connection, self._commands, self._chunk_size = connection, commands, chunk_size

    async def open(self, remote: str, where: str) -> FTPReadHandle:
        """A handle on the regular file `remote` (named `where` in errors), its metadata read now."""

        async def op(lease: Lease) -> FTPReadHandle:
            info = await self._commands.stat(lease, remote)
            if info is not None and info.get("type") == "dir":
                raise IsADirectoryArtifact(where)
            if info is None or info.get("type") != "file":
                raise ArtifactNotFound(where)
            return FTPReadHandle(self, remote, object_meta(info), where)

        return await self._connection.run("opening", where, op)

    async def stream_range(
        self, remote: str, where: str, start: int, end: int, expected: ObjectMeta
    ) -> AsyncGenerator[bytes, None]:
        if end <= start:
            return
        chunk_size = self._chunk_size
        floor = min(MIN_YIELD, chunk_size)
        with ftp_errors("reading", where):
            async with self._connection.lease() as lease:
                stream = await open_transfer(lease, f"RETR {remote}", offset=start)
                remaining, block = end - start, bytearray()
                try:
                    while remaining > 0:
                        data = await stream.read(min(chunk_size - len(block), remaining))
                        if not data:  # the file shrank underneath us: stop rather than spin
                            break
                        remaining, block = remaining - len(data), block + data
                        if len(block) >= floor and remaining > 0:
                            yield bytes(block)
                            block = bytearray()
                    # Read to the end, the file's: a byte more means RETR opened a longer version. The check below
                    # cannot see it when the version that was opened came back since (same size, same second, a
                    # reused inode: MLST's facts are equal).
                    longer = remaining == 0 and end == expected.size and bool(await stream.read(1))
                finally:
                    stream.close()
                # Closing early makes the server abort the transfer (426); either answer leaves a clean session.
                async with asyncio.timeout(5):
                    await lease.client.command(None, ("2xx", "4xx"), "1xx")
                # RETR opens by name, so an overwrite since open_read would send the new bytes under the old
                # version's size: the last block goes out only once the file is still the version that was opened.
                info = await self._commands.stat(lease, remote)
                lease.reusable = True
        if remaining or longer or info is None or object_meta(info).etag != expected.etag:
            raise StorageUnavailable("The artifact changed while it was being read; retry")
        if block:
            yield bytes(block)
