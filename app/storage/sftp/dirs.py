"""SFTP's directory primitives for the shared `mkdir -p` (`remote_paths.make_dirs`), and what is at a publish's
target; used for the root at connect time and for an upload's parent directories."""

from __future__ import annotations

from contextlib import suppress

import asyncssh

from app.storage.remote_paths import Kind, Refusal, make_dirs
from app.storage.sftp.errors import MISSING

# What mkdir answers when the directory is there already, or cannot be made: SFTP v3 has no code that tells which.
_NOT_MADE = (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists)


class SFTPDirs:
    """`remote_paths.Directories` on one SFTP client."""

    def __init__(self, sftp: asyncssh.SFTPClient) -> None:
        self._sftp = sftp

    async def mkdir(self, directory: str) -> Refusal | None:
        try:
            await self._sftp.mkdir(directory)
        except MISSING as exc:  # SFTP names the missing parent
            return Refusal(exc, parent_missing=True)
        except _NOT_MADE as exc:
            return Refusal(exc, parent_missing=False)
        return None

    async def mkdir_again(self, directory: str) -> None:
        with suppress(*_NOT_MADE):
            await self._sftp.mkdir(directory)

    async def kind(self, directory: str) -> Kind:
        # isdir cannot tell a file from a missing or unreadable path; whatever it is, nothing more can be made there.
        return Kind.DIR if await self._sftp.isdir(directory) else Kind.OTHER


async def makedirs(sftp: asyncssh.SFTPClient, directory: str, where: str | None = None) -> None:
    """mkdir -p over SFTP; `where` names the upload in errors."""
    await make_dirs(SFTPDirs(sftp), directory, where)


async def target_kind(sftp: asyncssh.SFTPClient, target: str, create_only: bool) -> Kind:
    """What is at a target a publish failed on: whether a file is there is asked only for create-only publishes,
    the only ones it refuses (for the others the answer is MISSING)."""
    if await sftp.isdir(target):
        return Kind.DIR
    return Kind.OTHER if create_only and await sftp.exists(target) else Kind.MISSING
