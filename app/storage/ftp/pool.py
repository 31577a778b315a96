"""The FTP backend's pool of logged-in control connections.

FTP runs one command at a time per connection, so each operation leases a connection of its own. A connection whose
state is unknown (a transfer cut short, a timeout) is closed, never reused; an idle one is probed with NOOP before
reuse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aioftp

from app.errors import ArtifactProxyError, StorageUnavailable

PROBE_AFTER = 5.0  # seconds idle after which a pooled connection is checked with NOOP before reuse


@dataclass(slots=True)
class Lease:
    """A pooled connection lent to one operation; `reusable` is false while a transfer's outcome is unread."""

    client: aioftp.Client
    reusable: bool = True


class FTPPool:
    def __init__(self, connect: Callable[[], Awaitable[aioftp.Client]], size: int, wait: float) -> None:
        self._connect, self._size, self._wait = connect, size, wait
        self._idle: list[tuple[aioftp.Client, float]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise StorageUnavailable(f"All {self._size} connections to the FTP server are busy") from exc
        try:
            lease = Lease(await self._checkout())
            try:
                yield lease
            except (aioftp.StatusCodeError, ArtifactProxyError):
                raise  # a whole reply was read: the connection is as sound as the transfer flag says
            except BaseException:
                lease.reusable = False
                raise
            finally:
                self._checkin(lease)
        finally:
            self._slots.release()

    async def _checkout(self) -> aioftp.Client:
        while self._idle:
            client, since = self._idle.pop()
            if time.monotonic() - since < PROBE_AFTER:
                return client
            try:  # servers drop idle sessions: find out now, before a body is consumed
                async with asyncio.timeout(5):
                    await client.command("NOOP", "2xx")
                return client
            except (aioftp.AIOFTPException, OSError, TimeoutError):
                client.close()
        return await self._connect()

    def _checkin(self, lease: Lease) -> None:
        if lease.reusable and not self._closed:
            self._idle.append((lease.client, time.monotonic()))
        else:
            lease.client.close()

    def close(self, final: bool = False) -> None:
        """Close the idle connections; leased ones close as their operations end once `final` is set."""
        self._closed = self._closed or final
        for client, _ in self._idle:
            client.close()
        self._idle.clear()
