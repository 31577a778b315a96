"""`mkdir -p` over SFTP, for the root at connect time and for an upload's parent directories."""

from __future__ import annotations

import posixpath
from contextlib import suppress

import asyncssh

from app.errors import InvalidParameter
from app.storage.sftp.errors import MISSING


async def makedirs(sftp: asyncssh.SFTPClient, directory: str, where: str | None = None) -> None:
    """mkdir -p, from the deepest existing directory down: one request per missing level."""
    if directory in ("", ".", "/"):
        return
    try:
        await sftp.mkdir(directory)
        return
    except MISSING:
        await makedirs(sftp, posixpath.dirname(directory), where)
        with suppress(asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):  # a concurrent upload made it
            await sftp.mkdir(directory)
    except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
        pass  # it exists (or cannot be made): checked below
    if not await sftp.isdir(directory):
        raise InvalidParameter(f"Cannot write '{where or directory}': a parent path is a file")
