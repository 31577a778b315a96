"""Downloads for the SFTP backend: a file opened once, then read at offsets in bounded chunks, so one response never
mixes two versions of an object that is replaced while it is being sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial
from typing import cast

import asyncssh
from asyncssh.constants import FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_REGULAR

from app.errors import ArtifactNotFound, IsADirectoryArtifact
from app.storage.base import ObjectMeta
from app.storage.sftp.connection import SFTPConnection
from app.storage.sftp.errors import MISSING


def object_meta(attrs: asyncssh.SFTPAttrs) -> ObjectMeta:
    size, mtime = attrs.size or 0, attrs.mtime or 0
    return ObjectMeta(size=size, etag=f'"{mtime:x}-{size:x}"', last_modified=float(mtime) if mtime else None)


class SFTPReadHandle:
    def __init__(
        self,
        connection: SFTPConnection,
        chunk_size: int,
        sftp: asyncssh.SFTPClient,
        file: asyncssh.SFTPClientFile,
        meta: ObjectMeta,
        where: str,
    ) -> None:
        self.meta = meta
        self._connection, self._chunk_size = connection, chunk_size
        self._sftp, self._file, self._where = sftp, file, where

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        while offset < end:
            read = partial(self._read, min(self._chunk_size, end - offset), offset)
            chunk = await self._connection.io("reading", self._where, self._sftp, read)
            if not chunk:  # truncated underneath us: stop rather than spin
                return
            offset += len(chunk)
            yield chunk

    async def _read(self, size: int, offset: int) -> bytes:
        return cast(bytes, await self._file.read(size, offset))  # opened "rb": always bytes

    async def aclose(self) -> None:
        with suppress(asyncssh.Error, OSError):
            await self._file.close()


async def open_download(connection: SFTPConnection, chunk_size: int, remote: str, where: str) -> SFTPReadHandle:
    """Open the regular file `remote` (named `where` in errors) for reading in pieces of at most `chunk_size`."""

    async def op(sftp: asyncssh.SFTPClient) -> SFTPReadHandle:
        try:
            file = await sftp.open(remote, "rb")
        except MISSING as exc:
            raise ArtifactNotFound(where) from exc
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileIsADirectory, asyncssh.SFTPPermissionDenied):
            # Some servers refuse to open a directory: tell a directory apart from a real refusal.
            if await sftp.isdir(remote):
                raise IsADirectoryArtifact(where) from None
            raise
        try:
            attrs = await file.stat()
            if attrs.type == FILEXFER_TYPE_DIRECTORY:
                raise IsADirectoryArtifact(where)
            if attrs.type != FILEXFER_TYPE_REGULAR:
                raise ArtifactNotFound(where)
        except BaseException:
            with suppress(Exception):
                await file.close()
            raise
        return SFTPReadHandle(connection, chunk_size, sftp, file, object_meta(attrs), where)

    return await connection.run("opening", where, op)


async def stat_file(connection: SFTPConnection, remote: str, where: str) -> ObjectMeta:
    """The metadata of the regular file `remote`, without opening it (links followed, as `open` follows them)."""

    async def op(sftp: asyncssh.SFTPClient) -> ObjectMeta:
        try:
            attrs = await sftp.stat(remote)
        except MISSING as exc:
            raise ArtifactNotFound(where) from exc
        if attrs.type == FILEXFER_TYPE_DIRECTORY:
            raise IsADirectoryArtifact(where)
        if attrs.type != FILEXFER_TYPE_REGULAR:
            raise ArtifactNotFound(where)
        return object_meta(attrs)

    return await connection.run("opening", where, op)
