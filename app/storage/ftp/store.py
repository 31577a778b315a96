"""FTPStore: artifacts as files under a directory on an FTP server, `ftp://[user[:password]@]host[:port]/path`, and
`ftps://` for explicit TLS (AUTH TLS), on aioftp.

- aioftp rather than a thread-wrapped ftplib: native asyncio, so a transfer costs no thread hop per chunk, and it
  does explicit TLS with the session reused on data connections (which vsftpd and others demand, `tls`). Its
  `list`, `stat` fallback and `get_stream` leak the data socket when the server refuses the command, so transfers
  are opened by our own code instead (`commands`).
- FTP runs one command at a time per connection: a small pool of logged-in connections per process (`pool`,
  `connection`), passive mode only; idempotent operations are retried once on a fresh connection.
- Uploads STOR a temp file and RNFR/RNTO it into place (`upload`); downloads RETR with a REST offset for ranges
  (`download`). MLSD/MLST when the server has them, LIST otherwise. Multipart and presigned URLs do not exist here:
  the routes answer 501.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from urllib.parse import urlsplit

from app.errors import StorageMisconfigured, StorageTimeout, StorageUnavailable
from app.paths import ArtifactPath, EntryPath
from app.settings import Settings
from app.storage.base import DEFAULT_WRITE, Capabilities, FileInfo, ObjectMeta, WalkEntry, WriteOptions
from app.storage.ftp.commands import FTPCommands
from app.storage.ftp.config import parse_ftp_uri
from app.storage.ftp.connection import FTPConnection
from app.storage.ftp.dirs import makedirs
from app.storage.ftp.download import FTPDownloads, FTPReadHandle
from app.storage.ftp.errors import suppress_refused
from app.storage.ftp.facts import file_info
from app.storage.ftp.pool import Lease
from app.storage.ftp.upload import FTPUploads
from app.storage.remote_paths import by_name, remote_path
from app.storage.walks import Level, visible, walk_levels

logger = logging.getLogger("artifact_proxy.storage.ftp")


class FTPStore:
    """Artifacts as files under a directory on an FTP server."""

    capabilities = Capabilities()  # FTP cannot presign: multipart and presigned downloads answer 501

    def __init__(self, uri: str, settings: Settings) -> None:
        self.settings, config = settings, settings.ftp
        self.target = parse_ftp_uri(uri, config)
        self.root = self.target.root
        self._connection = FTPConnection(self.target, config, settings.storage_timeout)
        self._commands = FTPCommands(self.root)
        self._downloads = FTPDownloads(self._connection, self._commands, settings.download_chunk_size)
        self._uploads = FTPUploads(self._connection, self._commands)
        if urlsplit(uri).password:
            logger.warning(
                "the ftp:// destination carries a password: ARTIFACT_PROXY_FTP_PASSWORD keeps it out of the "
                "URI, which ends up in logs and process listings"
            )

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._connection.run(
                "creating the root", self.root, lambda lease: makedirs(self._commands, lease, self.root)
            )
        except (StorageUnavailable, StorageTimeout) as exc:
            # Serve anyway: requests answer 503 until the server is back.
            logger.warning("FTP server %s not reachable at startup (%s); will retry on use", self.target.host, exc)

    async def close(self) -> None:
        self._connection.close()

    async def check_ready(self) -> None:
        async def op(lease: Lease) -> None:
            await lease.client.command("NOOP", "2xx")
            if await self._commands.stat(lease, self.root) is None:
                raise StorageMisconfigured(f"The FTP destination directory {self.root!r} does not exist")

        await self._connection.run("checking the root", self.root, op)

    # read and write ------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        return (await self.open_read(path)).meta  # opening is a single MLST: nothing is held open

    async def open_read(self, path: EntryPath) -> FTPReadHandle:
        return await self._downloads.open(remote_path(self.root, path), path.canonical)

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        await self._uploads.write(remote_path(self.root, path), path.canonical, chunks, options.create_only)

    # list ----------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        remote = remote_path(self.root, path)

        async def op(lease: Lease) -> list[FileInfo]:
            return by_name(file_info(name, info) for name, info in await self._commands.entries(lease, remote) or [])

        return await self._connection.run("listing", path.canonical, op)

    async def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        """One MLSD (or LIST) per directory; links and devices are not files here (`facts.file_info`)."""
        base = remote_path(self.root, path)

        async def level(lease: Lease, relative: str) -> Level:
            found: list[WalkEntry] = []
            subdirs: list[str] = []
            for name, info in (
                await self._commands.entries(lease, posixpath.join(base, relative) if relative else base) or []
            ):
                item = file_info(name, info)
                if item is None or not visible(name):
                    continue
                child = f"{relative}/{name}" if relative else name
                if item.is_dir:
                    subdirs.append(child)
                else:
                    found.append(WalkEntry(child, item.file_size or 0))
            return found, subdirs

        async def read_level(relative: str) -> Level:
            return await self._connection.run("listing", path.canonical, partial(level, relative=relative))

        async for entry in walk_levels(read_level):
            yield entry

    # delete --------------------------------------------------------------------------------------------------------
    async def delete(self, path: EntryPath) -> None:
        remote = remote_path(self.root, path)

        async def op(lease: Lease) -> None:
            info = await self._commands.stat(lease, remote)
            if info is None:
                return
            if info.get("type") == "dir":
                await self._rmtree(lease, remote)
            else:
                await _remove_file(lease, remote)

        await self._connection.run("deleting", path.canonical, op)

    async def _rmtree(self, lease: Lease, directory: str) -> None:
        for name, info in await self._commands.entries(lease, directory) or []:
            child = posixpath.join(directory, name)
            if info.get("type") == "dir":
                await self._rmtree(lease, child)
            else:
                await _remove_file(lease, child)
        with suppress_refused():  # removed concurrently
            await lease.client.remove_directory(directory)


async def _remove_file(lease: Lease, remote: str) -> None:
    with suppress_refused():  # removed concurrently
        await lease.client.remove_file(remote)
