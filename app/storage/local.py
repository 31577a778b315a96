"""Local directory backend (the embedded default, and NFS mounts).

Every filesystem step of an operation runs in one thread hop (`anyio.to_thread.run_sync`). Paths are opened below a
descriptor of the root (`local_resolve.Root`): containment is checked on what was opened, and the descriptor that was
checked is the one read, so a concurrent rename can never turn an existing artifact into a 404 or redirect a write.

Uploads are written to an anonymous temporary file (`O_TMPFILE`, or `.artifact.uploading.<random>` where the
filesystem has none) in the target's directory, locked for their whole life (`local_sweep`), fsynced, and then linked
or renamed into place, so readers see the old version or the complete new one and a crash leaves nothing visible.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    InsufficientStorage,
    InvalidParameter,
    IsADirectoryArtifact,
    PathOutsideRoot,
    StorageMisconfigured,
    StorageUnavailable,
)
from app.metrics import DESTINATION_FREE_BYTES
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.signing import UrlSigner
from app.storage import writeback
from app.storage.base import (
    DEFAULT_COMPLETE,
    DEFAULT_WRITE,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PresignedUrl,
    WriteOptions,
)
from app.storage.local_errors import FsCalls
from app.storage.local_multipart import LocalPresigning
from app.storage.local_resolve import PATH_FLAGS, READ_FLAGS, Root
from app.storage.local_sweep import lock_new_file, sweep

logger = logging.getLogger("artifact_proxy.storage.local")

# Files up to this size are read in the same thread hop that opens them: one hop per small GET.
PREFETCH_LIMIT = 256 * 1024
# The upload's SHA-256, kept with the file itself (an extended attribute), so it moves and dies with it.
DIGEST_XATTR = "user.artifact_proxy.sha256"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MISSING = (FileNotFoundError, NotADirectoryError)
# Opening these is refused by the kernel for sockets and device nodes without a driver: not an artifact either way.
_NOT_OPENABLE = frozenset({errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


def local_root(uri: str) -> Path:
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        return Path(unquote(parts.path))
    return Path(uri)


class LocalReadHandle:
    def __init__(self, fd: int, meta: ObjectMeta, prefetched: bytes | None, chunk_size: int) -> None:
        self.meta = meta
        self._fd = fd
        self._prefetched = prefetched
        self._chunk_size = chunk_size

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        if self._prefetched is not None:
            if end > start:
                yield self._prefetched[start:end]
            return
        offset = start
        while offset < end:
            chunk = await anyio.to_thread.run_sync(os.pread, self._fd, min(self._chunk_size, end - offset), offset)
            if not chunk:  # truncated underneath us: stop rather than spin
                return
            offset += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


@dataclass
class TempFile:
    """An upload being written in its target's directory: anonymous (`name` None) until it is published."""

    fd: int
    dir_fd: int
    name: str | None
    target: str  # basename in dir_fd
    relative: str  # the artifact path, for messages

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def discard(self) -> None:
        self.close()
        if self.name is not None:
            _unlink_quietly(self.name, self.dir_fd)

    def publish(self, create_only: bool) -> None:
        """Give the finished file its name: atomically replace, or atomically create (a link fails if taken)."""
        if self.name is None and create_only:
            try:
                os.link(f"/proc/self/fd/{self.fd}", self.target, dst_dir_fd=self.dir_fd)
            except FileExistsError as exc:
                raise AlreadyExists(self.relative) from exc
            return
        if self.name is None:
            # Named only now, while still locked: a sweeper never sees it unlocked unless we die right here.
            self.name = f"{TEMP_PREFIX}{secrets.token_hex(16)}"
            os.link(f"/proc/self/fd/{self.fd}", self.name, dst_dir_fd=self.dir_fd)
        if not create_only:
            os.replace(self.name, self.target, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            return
        try:
            os.link(self.name, self.target, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileExistsError as exc:
            raise AlreadyExists(self.relative) from exc
        _unlink_quietly(self.name, self.dir_fd)


def _meta_from_stat(st: os.stat_result, sha256: str | None = None) -> ObjectMeta:
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    return ObjectMeta(size=st.st_size, etag=etag, last_modified=st.st_mtime, sha256=sha256)


class LocalStore:
    """Artifacts as files under a root directory."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.root = local_root(uri).expanduser().absolute()
        self.settings = settings
        self._real_root = ""
        self._dir: Root | None = None
        self._fs = FsCalls(str(self.root))
        self._tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._sweeper: asyncio.Task[None] | None = None
        # Presigning needs a secret shared by every worker; without one the capability is off (501, server-info).
        self.signer = UrlSigner(settings.signing_secret) if settings.signing_secret else None
        self.multipart_enabled = self.signer is not None and settings.enable_multipart
        self.presigned_download_enabled = self.signer is not None and settings.enable_presigned_download
        self._presigning = LocalPresigning(self)

    # lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._prepare_root)
        # Sweeping walks the tree: in the background, so a large destination does not delay startup.
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="artifact-proxy-sweeper")

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageMisconfigured(f"The artifact directory {self.root} cannot be created: {exc.strerror}") from exc
        self._real_root = os.path.realpath(self.root)
        self._dir = Root(self._real_root)
        self._fs = FsCalls(self._real_root)

    def sweep_once(self, now: float) -> None:
        """Remove crash leftovers as of `now` (tests pass their own clock)."""
        sweep(self._real_root, now, self.settings.stale_upload_age, 2 * self.settings.multipart_url_ttl)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep_once, time.time())
            except Exception:  # a sweep must never end the loop, whatever the filesystem does
                logger.exception("sweeping %s failed", self._real_root)
            if self.settings.sweep_interval <= 0:
                return
            await asyncio.sleep(self.settings.sweep_interval)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._dir is not None:
            self._dir.close()

    async def check_ready(self) -> None:
        problem, free = await anyio.to_thread.run_sync(self._readiness)
        if problem:
            raise StorageUnavailable(f"The artifact directory {self.root} {problem}")
        if free < self.settings.min_free_bytes:
            raise StorageUnavailable(
                f"The artifact directory {self.root} has {free} bytes free, under ARTIFACT_PROXY_MIN_FREE_BYTES "
                f"({self.settings.min_free_bytes})"
            )

    def _readiness(self) -> tuple[str | None, int]:
        """What is wrong with the root (None: nothing), and its free bytes."""
        try:
            named, held = os.stat(self._real_root), os.fstat(self.dir.fd)
        except OSError as exc:
            return f"is gone ({exc.strerror})", 0
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            return "was removed or replaced while the service was running: restart it", 0
        if not os.access(self._real_root, os.W_OK | os.X_OK):
            return "is not writable", 0
        return None, self._free_bytes()

    def _free_bytes(self) -> int:
        st = os.statvfs(self._real_root)
        free = st.f_bavail * st.f_frsize
        DESTINATION_FREE_BYTES.set(free)
        return free

    def _check_space(self, size: int) -> None:
        free = self._free_bytes()
        if free - size < self.settings.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough space to store the artifact: {size} bytes would leave {max(free - size, 0)} free, "
                f"under the destination's floor of {self.settings.min_free_bytes} bytes"
            )

    @property
    def dir(self) -> Root:
        assert self._dir is not None, "LocalStore.start() was not called"
        return self._dir

    def run(self, function: Any, *args: Any) -> Any:
        """The filesystem step `function(*args)` in a worker thread, its errors mapped (`local_errors`)."""
        return anyio.to_thread.run_sync(self._fs, function, *args)

    async def resolved(self, path: ArtifactPath, follow_last: bool) -> ArtifactPath:
        """The path an operation on `path` really touches, links followed (the last one only when the operation
        follows it: reads do, writes and deletes replace or remove the link itself). Authorization checks this too,
        so a link cannot lead into a prefix the rules refuse."""
        where: str | None = await self.run(self.dir.where, path.canonical, follow_last)
        return path if where is None or where == path.canonical else ArtifactPath(where)

    # read ---------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> LocalReadHandle:
        handle: LocalReadHandle = await self.run(self._open_read, path)
        return handle

    def _open_read(self, path: ArtifactPath) -> LocalReadHandle:
        try:
            fd = self.dir.open(path.canonical, READ_FLAGS)
        except _MISSING as exc:
            raise ArtifactNotFound(path.canonical) from exc
        except OSError as exc:
            if exc.errno in _NOT_OPENABLE:
                raise ArtifactNotFound(path.canonical) from exc
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryArtifact(path.canonical)
            if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: never an artifact, never read
                raise ArtifactNotFound(path.canonical)
            prefetched = os.pread(fd, st.st_size, 0) if st.st_size <= PREFETCH_LIMIT else None
            meta = _meta_from_stat(st, _read_digest(fd, path))
        except BaseException:
            os.close(fd)
            raise
        return LocalReadHandle(fd, meta, prefetched, self.settings.download_chunk_size)

    def is_file(self, path: ArtifactPath) -> bool:
        try:
            fd = self.dir.open(path.canonical, PATH_FLAGS)
        except (*_MISSING, PathOutsideRoot):
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    # write --------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        if size is not None and self.settings.min_free_bytes:
            await self.run(self._check_space, size)  # before the first body byte is read (and 100 Continue sent)
        iterator = aiter(chunks)
        head = bytearray()
        async for chunk in iterator:  # buffer the first block: a small body costs a single thread hop
            head += chunk
            if len(head) >= self.settings.upload_chunk_size:
                break
        else:
            await self.run(self._write_small, path, bytes(head), options)
            return
        temp: TempFile = await self.run(self.open_temp, path)
        try:
            await self.run(_write_all, temp.fd, bytes(head))
            await self.stream_to_fd(temp.fd, iterator, offset=len(head))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(temp.discard)
            raise
        # commit owns the temp file from here: it publishes it, or discards it on failure.
        await self.run(self.commit, temp, b"", options)

    async def stream_to_fd(self, fd: int, chunks: AsyncIterator[bytes], offset: int = 0) -> None:
        """Write a byte stream to `fd`, one thread hop per `upload_chunk_size` bytes (blocks that size or larger
        are written as they are, without another copy). With fsync on, writeback starts as each block lands, so
        the final fsync finds little left to do."""
        block = self.settings.upload_chunk_size
        start_writeback = self.settings.fsync_uploads
        parts: list[bytes] = []
        buffered = 0
        async for chunk in chunks:
            parts.append(chunk)
            buffered += len(chunk)
            if buffered >= block:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                parts, buffered = [], 0
                await self.run(_write_at_end, fd, data, offset, start_writeback)
                offset += len(data)
        if parts:
            await self.run(_write_at_end, fd, b"".join(parts), offset, start_writeback)

    def check_target(self, path: ArtifactPath, dir_fd: int | None = None, create_parents: bool = False) -> None:
        """Refuse (400) a write onto a directory or a link that leaves the root, before any byte is written."""
        if dir_fd is None:
            try:
                dir_fd = self.dir.open_parent(path.canonical, create=create_parents)
            except FileNotFoundError:
                return  # parents are created on write
            except (FileExistsError, NotADirectoryError) as exc:
                raise self._parent_is_a_file(path) from exc
            try:
                self.check_target(path, dir_fd)
            finally:
                os.close(dir_fd)
            return
        try:
            mode = os.lstat(path.basename, dir_fd=dir_fd).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            # Replacing the link itself would be allowed, but reads through it are refused when it leaves the root,
            # so writes are too.
            fd = self.dir.open(path.canonical, PATH_FLAGS)
            try:
                mode = os.fstat(fd).st_mode
            finally:
                os.close(fd)
        if stat.S_ISDIR(mode):
            raise InvalidParameter(f"Cannot write '{path.canonical}': it is a directory")

    @staticmethod
    def _parent_is_a_file(path: ArtifactPath) -> InvalidParameter:
        return InvalidParameter(f"Cannot write '{path.canonical}': a parent path is a file")

    def open_temp(self, path: ArtifactPath) -> TempFile:
        try:
            dir_fd = self.dir.open_parent(path.canonical, create=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._parent_is_a_file(path) from exc
        try:
            self.check_target(path, dir_fd)
            fd, name = self._create_temp(dir_fd)
            lock_new_file(fd)
        except BaseException:
            os.close(dir_fd)
            raise
        return TempFile(fd=fd, dir_fd=dir_fd, name=name, target=path.basename, relative=path.canonical)

    def _create_temp(self, dir_fd: int) -> tuple[int, str | None]:
        if self._tmpfile:
            try:
                return os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=dir_fd), None
            except OSError as exc:
                # ENOENT also means the directory was deleted under us (no links left): not a missing feature.
                if exc.errno not in _NO_TMPFILE or (exc.errno == errno.ENOENT and os.fstat(dir_fd).st_nlink == 0):
                    raise
                self._tmpfile = False  # e.g. NFS: named temporary files from now on
        name = f"{TEMP_PREFIX}{secrets.token_hex(16)}"
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd), name

    def commit(self, temp: TempFile, tail: bytes, options: WriteOptions = DEFAULT_WRITE) -> None:
        try:
            _write_all(temp.fd, tail)
            _record_digest(temp.fd, options.digest())
            if self.settings.fsync_uploads:
                os.fsync(temp.fd)
            temp.publish(options.create_only)
        except BaseException:
            temp.discard()
            raise
        temp.close()  # only now: the lock marks the file live until it has its final name

    def _write_small(self, path: ArtifactPath, data: bytes, options: WriteOptions = DEFAULT_WRITE) -> None:
        self.commit(self.open_temp(path), data, options)

    # presigning (app/storage/local_multipart.py) -------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._presigning.create_multipart_upload(path, num_parts)

    async def upload_target(self, upload_id: str) -> ArtifactPath:
        return await self._presigning.upload_target(upload_id)

    async def write_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        return await self._presigning.write_part(upload_id, part_number, chunks)

    async def complete_multipart_upload(
        self,
        path: ArtifactPath,
        upload_id: str | None,
        parts: builtins.list[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self._presigning.complete_multipart_upload(path, upload_id, parts, options)

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        await self._presigning.abort_multipart_upload(path, upload_id)

    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        return await self._presigning.presign_download(path)

    # list ---------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> builtins.list[FileInfo]:
        infos: builtins.list[FileInfo] = await self.run(self._list, path)
        return infos

    def _list(self, path: ArtifactPath) -> builtins.list[FileInfo]:
        try:
            fd = self.dir.open(path.canonical, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except _MISSING:
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
            fd = self.dir.open(relative, PATH_FLAGS)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except (PathOutsideRoot, OSError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return FileInfo(entry.name, True)
        return FileInfo(entry.name, False, st.st_size) if stat.S_ISREG(st.st_mode) else None

    # delete -------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        await self.run(self._delete, path)

    def _delete(self, path: ArtifactPath) -> None:
        """Remove the named entry itself: a link is unlinked, never followed into what it points to."""
        try:
            dir_fd = self.dir.open_parent(path.canonical, create=False)
        except _MISSING:
            return
        try:
            mode = os.lstat(path.basename, dir_fd=dir_fd).st_mode
            if stat.S_ISLNK(mode):
                self._refuse_link_out_of_root(path)
            if stat.S_ISDIR(mode):
                shutil.rmtree(path.basename, onerror=_ignore_missing, dir_fd=dir_fd)
            else:
                os.unlink(path.basename, dir_fd=dir_fd)
        except _MISSING:
            return
        finally:
            os.close(dir_fd)

    def _refuse_link_out_of_root(self, path: ArtifactPath) -> None:
        """Deleting a link removes only the link; one that leaves the root is refused, as every verb refuses it."""
        try:
            os.close(self.dir.open(path.canonical, PATH_FLAGS))
        except _MISSING:
            pass  # a dangling link inside the root: removing it is fine


def _ignore_missing(_function: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):  # a concurrent delete got there first: fine
        raise exc_info[1]


def _record_digest(fd: int, sha256: str | None) -> None:
    if sha256:
        try:
            os.setxattr(fd, DIGEST_XATTR, sha256.encode("ascii"))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The filesystem keeps no user xattrs (some NFS mounts): serve without a recorded digest.


def _read_digest(fd: int, path: ArtifactPath) -> str | None:
    try:
        raw = os.getxattr(fd, DIGEST_XATTR)
    except OSError:
        return None
    value = raw.decode("ascii", "replace")
    if not _SHA256_HEX.match(value):
        # Written by something else, or damaged: serving it would make every verifying client fail.
        logger.warning("ignoring a malformed digest attribute on '%s': %r", path.canonical, raw[:80])
        return None
    return value


def _write_at_end(fd: int, data: bytes, offset: int, start_writeback: bool) -> None:
    _write_all(fd, data)
    if start_writeback:
        writeback.start(fd, offset, len(data))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(name: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
