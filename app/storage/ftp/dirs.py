"""FTP's directory primitives for the shared `mkdir -p` (`remote_paths.make_dirs`), on a leased connection; used for
the root at startup and for an upload's parent directories."""

from __future__ import annotations

from contextlib import suppress

import aioftp

from app.storage.ftp.commands import FTPCommands
from app.storage.ftp.errors import refused
from app.storage.ftp.facts import kind_of
from app.storage.ftp.pool import Lease
from app.storage.remote_paths import Kind, Refusal, make_dirs


class FTPDirs:
    """`remote_paths.Directories` on one leased FTP connection."""

    def __init__(self, commands: FTPCommands, lease: Lease) -> None:
        self._commands, self._lease = commands, lease

    async def mkdir(self, directory: str) -> Refusal | None:
        try:
            await self._lease.client.command(f"MKD {directory}", "257")
        except aioftp.StatusCodeError as exc:
            if not refused(exc):
                raise
            return Refusal(exc, parent_missing=False)  # 550 means a missing parent or any other refusal
        return None

    async def mkdir_again(self, directory: str) -> None:
        with suppress(aioftp.StatusCodeError):
            await self._lease.client.command(f"MKD {directory}", "257")

    async def kind(self, directory: str) -> Kind:
        return kind_of(await self._commands.stat(self._lease, directory))


async def makedirs(commands: FTPCommands, lease: Lease, directory: str, where: str | None = None) -> None:
    """mkdir -p over FTP; `where` names the upload in errors."""
    await make_dirs(FTPDirs(commands, lease), directory, where)
