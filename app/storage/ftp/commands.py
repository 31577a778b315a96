"""FTP commands on a leased connection, for the FTP backend: passive data transfers, facts about paths (MLST/MLSD
when the server has them, LIST otherwise) and directory listings.

aioftp's `list`, `stat` fallback and `get_stream` leak the data socket when the server refuses the command, so
transfers are opened here instead.
"""

from __future__ import annotations

import posixpath

import aioftp
from aioftp.client import DataConnectionThrottleStreamIO

from app.storage.ftp.errors import refused, reply_code, unsupported
from app.storage.ftp.facts import Info
from app.storage.ftp.pool import Lease
from app.storage.remote_paths import SELF_OR_PARENT

SELF_OR_UP = ("cdir", "pdir")


async def open_transfer(lease: Lease, command: str, offset: int = 0) -> DataConnectionThrottleStreamIO:
    """Send `command` (RETR, STOR, LIST, ...) over a new passive data connection, from `offset` when it is not 0."""
    client = lease.client
    reader, writer = await client.get_passive_connection("I")
    try:
        if offset:
            await client.command(f"REST {offset}", "350")
        await client.command(command, "1xx")
    except BaseException:
        writer.close()  # aioftp's own get_stream leaks this socket when the command is refused
        raise
    lease.reusable = False  # until the transfer's final reply is read
    return DataConnectionThrottleStreamIO(client, reader, writer, {"_": client.throttle}, timeout=client.socket_timeout)


class FTPCommands:
    """The protocol steps the store's operations are made of, for a server whose features are learnt once."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._mlsx: bool | None = None  # whether the server has MLSD/MLST (RFC 3659); learnt on first use

    async def has_mlsx(self, lease: Lease) -> bool:
        """Whether the server has MLST/MLSD (RFC 3659): exact facts, and no parsing of `ls` output."""
        if self._mlsx is None:
            try:
                await lease.client.command(f"MLST {self._root}", "2xx")
                self._mlsx = True
            except aioftp.StatusCodeError as exc:
                self._mlsx = not unsupported(exc)
        return self._mlsx

    async def stat(self, lease: Lease, remote: str) -> Info | None:
        """Facts about one path, or None when it does not exist."""
        if remote in ("/", "."):
            return {"type": "dir"}
        if await self.has_mlsx(lease):
            try:
                _, reply = await lease.client.command(f"MLST {remote}", "2xx")
            except aioftp.StatusCodeError as exc:
                if refused(exc):
                    return None
                raise
            return lease.client.parse_mlsx_line(reply[1].lstrip())[1]
        parent, name = posixpath.split(remote)
        for entry, info in await self._list_lines(lease, parent or ".") or []:
            if entry == name:
                return info
        return None

    async def entries(self, lease: Lease, remote: str) -> list[tuple[str, Info]] | None:
        """A directory's entries, temp files included, or None if `remote` is missing or not a directory."""
        if not await self.has_mlsx(lease):
            # LIST lists a file as itself and may answer a missing path with nothing: check it is a directory.
            info = await self.stat(lease, remote)
            if info is None or info.get("type") != "dir":
                return None
        return await self._list_lines(lease, remote)

    async def _list_lines(self, lease: Lease, remote: str) -> list[tuple[str, Info]] | None:
        mlsd = await self.has_mlsx(lease)
        parse = lease.client.parse_mlsx_line if mlsd else lease.client.parse_list_line
        try:
            stream = await open_transfer(lease, f"{'MLSD' if mlsd else 'LIST'} {remote}")
        except aioftp.StatusCodeError as exc:
            if refused(exc) or reply_code(exc) == "501":  # missing, or not a directory
                return None
            raise
        lines = [line async for line in stream.iter_by_line()]
        await stream.finish()
        lease.reusable = True
        entries = [parse(line.rstrip(b"\r\n")) for line in lines if line.strip()]
        named = [(posixpath.basename(str(name)), info) for name, info in entries]
        # `.`, `..` (LIST) and the cdir/pdir entries (MLSD) would make a recursive delete loop forever.
        return [
            (name, info) for name, info in named if name not in SELF_OR_PARENT and info.get("type") not in SELF_OR_UP
        ]
