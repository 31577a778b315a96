"""Local directory backend (the embedded default, and NFS mounts).

Every filesystem step of an operation runs in one thread hop. Paths are opened below a descriptor of the root
(`resolve.Root`): containment is checked on what was opened, and the descriptor that was checked is the one read, so
a concurrent rename can never turn an existing artifact into a 404 or redirect a write. The steps themselves are
`files.LocalFiles`, shared with the presigned transfers (`presigning`); crash leftovers are swept (`sweep`).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from app.errors import PathOutsideRoot, StorageUnavailable
from app.paths import TEMP_PREFIX, ArtifactPath, EntryPath
from app.settings import Settings
from app.signing import UrlSigner
from app.storage.base import (
    DEFAULT_COMPLETE,
    DEFAULT_WRITE,
    Capabilities,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PresignedUrl,
    WalkEntry,
    WriteOptions,
)
from app.storage.local.files import MISSING, LocalFiles, TempFile, write_all
from app.storage.local.presigning import LocalPresigning
from app.storage.local.reading import LocalReadHandle, head_of, open_cached, open_for_read
from app.storage.local.resolve import PATH_FLAGS
from app.storage.local.sweep import sweep
from app.storage.local.walk import walk

logger = logging.getLogger("artifact_proxy.storage.local")


def local_root(uri: str) -> Path:
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        return Path(unquote(parts.path))
    return Path(uri)


class LocalStore:
    """Artifacts as files under a root directory."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.root = local_root(uri).expanduser().absolute()
        self.settings = settings
        self.files = LocalFiles(self.root, settings)
        self._sweeper: asyncio.Task[None] | None = None
        # Presigning needs a secret shared by every worker; without one the capability is off (501, server-info).
        self.signer = UrlSigner(settings.signing_secret) if settings.signing_secret else None
        self.capabilities = Capabilities(
            multipart_upload=self.signer is not None and settings.enable_multipart,
            presigned_download=self.signer is not None and settings.enable_presigned_download,
            signs_own_urls=self.signer is not None,
            can_presign=self.signer is not None,
            presign_blocker=None if self.signer else "it signs URLs only with ARTIFACT_PROXY_SIGNING_SECRET set",
        )
        self._presigning = LocalPresigning(self.files, self.signer)

    # lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.files.open_root)
        # Sweeping walks the tree: in the background, so a large destination does not delay startup.
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="artifact-proxy-sweeper")

    def sweep_once(self, now: float) -> None:
        """Remove crash leftovers as of `now` (tests pass their own clock)."""
        sweep(self.files.real_root, now, self.settings.stale_upload_age, 2 * self.settings.multipart_url_ttl)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep_once, time.time())
            except Exception:  # a sweep must never end the loop, whatever the filesystem does
                logger.exception("sweeping %s failed", self.files.real_root)
            if self.settings.sweep_interval <= 0:
                return
            await asyncio.sleep(self.settings.sweep_interval)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await anyio.to_thread.run_sync(self.files.close)  # waits for the steps under way, off the loop

    async def check_ready(self) -> None:
        problem, free = await anyio.to_thread.run_sync(self.files.readiness)
        if problem:
            raise StorageUnavailable(f"The artifact directory {self.root} {problem}")
        if free < self.settings.min_free_bytes:
            raise StorageUnavailable(
                f"The artifact directory {self.root} has {free} bytes free, under ARTIFACT_PROXY_MIN_FREE_BYTES "
                f"({self.settings.min_free_bytes})"
            )

    async def resolved(self, path: ArtifactPath, follow_last: bool) -> ArtifactPath:
        """The path an operation on `path` really touches, links followed (the last one only when the operation
        follows it: reads do, writes and deletes replace or remove the link itself). Authorization checks this too,
        so a link cannot lead into a prefix the rules refuse."""
        files = self.files
        # Metadata the kernel holds, on a disk filesystem: no thread hop (as `open_cached`).
        where: str | None = (
            files.run_here(files.dir.where, path.canonical, follow_last)
            if files.reads_on_loop
            else await files.run(files.dir.where, path.canonical, follow_last)
        )
        return path if where is None or where == path.canonical else ArtifactPath(where)

    # read ---------------------------------------------------------------------------------------------------------
    async def head(self, path: EntryPath) -> ObjectMeta:
        meta: ObjectMeta = await self.files.run(head_of, self.files, path)
        return meta

    async def open_read(self, path: EntryPath) -> LocalReadHandle:
        if self.files.reads_on_loop and (cached := open_cached(self.files, path)) is not None:
            return cached
        handle: LocalReadHandle = await self.files.run(open_for_read, self.files, path)
        return handle

    # write --------------------------------------------------------------------------------------------------------
    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        files = self.files
        if size is not None and self.settings.min_free_bytes:
            await files.run(files.check_space, size)  # before the first body byte is read (and 100 Continue sent)
        iterator = aiter(chunks)
        head = bytearray()
        async for chunk in iterator:  # buffer the first block: a small body costs a single thread hop
            head += chunk
            if len(head) >= self.settings.upload_chunk_size:
                break
        else:
            await files.run(files.write_small, path, bytes(head), options)
            return
        temp: TempFile = await files.run(files.open_temp, path)
        try:
            await files.run(write_all, temp.fd, bytes(head))
            await files.stream_to_fd(temp.fd, iterator, offset=len(head))
        except BaseException:
            await files.run(temp.discard)  # shielded: a cancelled upload still removes its temp file
            raise
        # commit owns the temp file from here: it publishes it, or discards it on failure.
        await files.run(files.commit, temp, b"", options)

    # presigning (`presigning`) -------------------------------------------------------------------
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._presigning.create_multipart_upload(path, num_parts)

    async def upload_target(self, upload_id: str) -> ArtifactPath:
        return await self._presigning.upload_target(upload_id)

    async def write_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        return await self._presigning.write_part(upload_id, part_number, chunks)

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: builtins.list[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self._presigning.complete_multipart_upload(path, upload_id, parts, options)

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        await self._presigning.abort_multipart_upload(path, upload_id)

    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        return await self._presigning.presign_download(path)

    # list ---------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> builtins.list[FileInfo]:
        infos: builtins.list[FileInfo] = await self.files.run(self._list, path)
        return infos

    def _list(self, path: ArtifactPath) -> builtins.list[FileInfo]:
        try:
            fd = self.files.dir.open(path.canonical, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except MISSING:
            return []
        infos: builtins.list[FileInfo] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        continue
                    info = self._entry_info(path, entry)
                    if info is not None:
                        infos.append(info)
        finally:
            os.close(fd)
        infos.sort(key=lambda info: info.path)
        return infos

    def _entry_info(self, parent: ArtifactPath, entry: os.DirEntry[str]) -> FileInfo | None:
        """A listed entry; links are listed as what they point to, and only if that stays inside the root. FIFOs,
        sockets and devices are not artifacts: never listed."""
        try:
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    return FileInfo(entry.name, True)
                if entry.is_file(follow_symlinks=False):
                    return FileInfo(entry.name, False, entry.stat(follow_symlinks=False).st_size)
                return None
            relative = f"{parent.canonical}/{entry.name}" if parent.canonical else entry.name
            fd = self.files.dir.open(relative, PATH_FLAGS)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except (PathOutsideRoot, OSError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return FileInfo(entry.name, True)
        return FileInfo(entry.name, False, st.st_size) if stat.S_ISREG(st.st_mode) else None

    def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        return walk(self.files, path)

    # delete -------------------------------------------------------------------------------------------------------
    async def delete(self, path: EntryPath) -> None:
        await self.files.run(self._delete, path)

    def _delete(self, path: ArtifactPath) -> None:
        """Remove the named entry itself: a link is unlinked, never followed into what it points to."""
        try:
            dir_fd = self.files.dir.open_parent(path.canonical, create=False)
        except MISSING:
            return
        try:
            mode = os.lstat(path.basename, dir_fd=dir_fd).st_mode
            if stat.S_ISLNK(mode):
                self._refuse_link_out_of_root(path)
            if stat.S_ISDIR(mode):
                shutil.rmtree(path.basename, onerror=_ignore_missing, dir_fd=dir_fd)
            else:
                os.unlink(path.basename, dir_fd=dir_fd)
        except MISSING:
            return
        finally:
            os.close(dir_fd)

    def _refuse_link_out_of_root(self, path: ArtifactPath) -> None:
        """Deleting a link removes only the link; one that leaves the root is refused, as every verb refuses it."""
        try:
            os.close(self.files.dir.open(path.canonical, PATH_FLAGS))
        except MISSING:
            pass  # a dangling link inside the root: removing it is fine


def _ignore_missing(_function: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):  # a concurrent delete got there first: fine
        raise exc_info[1]
