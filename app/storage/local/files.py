"""The filesystem under a local destination's root: every step below it, on a descriptor of the root.

`LocalFiles` is what the store and its presigning share: the root directory (`resolve.Root`), one-hop execution with
errors mapped (`errors.FsCalls`), target checks, and the temporary-file life of an upload: an anonymous file
(`O_TMPFILE`, or `.artifact.uploading.<random>` where the filesystem has none) in the target's directory, locked for
its whole life (`sweep`), fsynced, then linked or renamed into place, so readers see the old version or the complete
new one and a crash leaves nothing visible.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.errors import AlreadyExists, InsufficientStorage, InvalidParameter, PathOutsideRoot, StorageMisconfigured
from app.metrics import DESTINATION_FREE_BYTES
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.storage import writeback
from app.storage.base import DEFAULT_WRITE, WriteOptions
from app.storage.local.errors import FsCalls
from app.storage.local.mounts import is_local
from app.storage.local.resolve import PATH_FLAGS, Root
from app.storage.local.sweep import lock_new_file
from app.threads import BlockingPool

T = TypeVar("T")

# The upload's SHA-256, kept with the file itself (an extended attribute), so it moves and dies with it.
DIGEST_XATTR = "user.artifact_proxy.sha256"
MISSING = (FileNotFoundError, NotADirectoryError)
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


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
        """Give the finished file its name: atomically create (a link fails if the name is taken), or atomically
        replace. A name nobody holds costs one link either way (most uploads write a new path)."""
        if self.name is None:
            try:
                os.link(f"/proc/self/fd/{self.fd}", self.target, dst_dir_fd=self.dir_fd)
                return
            except FileExistsError as exc:
                if create_only:
                    raise AlreadyExists(self.relative) from exc
            # Taken: named now, while still locked (a sweeper never sees it unlocked unless we die right here), so
            # that it can be renamed over the old version.
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


class LocalFiles:
    """The root directory of a local destination and the filesystem steps every local operation is made of."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.real_root = ""
        self._dir: Root | None = None
        self._fs = FsCalls(str(root))
        self._pool = BlockingPool(settings.io_threads, "artifact-proxy-fs")
        self._tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        # Whether small cached reads may run on the event loop (`reading.open_cached`): a disk filesystem only.
        self.reads_on_loop = False

    def open_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageMisconfigured(f"The artifact directory {self.root} cannot be created: {exc.strerror}") from exc
        self.real_root = os.path.realpath(self.root)
        self._dir = Root(self.real_root)
        self._fs = FsCalls(self.real_root)
        self.reads_on_loop = hasattr(os, "RWF_NOWAIT") and is_local(self.real_root)
        self._pool.open()

    def close(self) -> None:
        self._pool.close()
        if self._dir is not None:
            self._dir.close()

    def readiness(self) -> tuple[str | None, int]:
        """What is wrong with the root (None: nothing), and its free bytes."""
        try:
            named, held = os.stat(self.real_root), os.fstat(self.dir.fd)
        except OSError as exc:
            return f"is gone ({exc.strerror})", 0
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            return "was removed or replaced while the service was running: restart it", 0
        if not os.access(self.real_root, os.W_OK | os.X_OK):
            return "is not writable", 0
        return None, self.free_bytes()

    def free_bytes(self) -> int:
        st = os.statvfs(self.real_root)
        free = st.f_bavail * st.f_frsize
        DESTINATION_FREE_BYTES.set(free)
        return free

    def check_space(self, size: int) -> None:
        free = self.free_bytes()
        if free - size < self.settings.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough space to store the artifact: {size} bytes would leave {max(free - size, 0)} free, "
                f"under the destination's floor of {self.settings.min_free_bytes} bytes"
            )

    @property
    def dir(self) -> Root:
        assert self._dir is not None, "LocalStore.start() was not called"
        return self._dir

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """The filesystem step `function(*args)` in one of the store's threads, its errors mapped (`errors.FsCalls`)."""
        return await self._pool.run(self._fs, function, *args)

    def run_here(self, function: Callable[..., T], *args: Any) -> T:
        """`run` on the calling thread: only for steps that cannot wait on a disk (`reading.open_cached`)."""
        return self._fs(function, *args)

    def is_file(self, path: ArtifactPath) -> bool:
        try:
            fd = self.dir.open(path.canonical, PATH_FLAGS)
        except (*MISSING, PathOutsideRoot):
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

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
            write_all(temp.fd, tail)
            _record_digest(temp.fd, options.digest())
            if self.settings.fsync_uploads:
                os.fsync(temp.fd)
            temp.publish(options.create_only)
        except BaseException:
            temp.discard()
            raise
        temp.close()  # only now: the lock marks the file live until it has its final name

    def write_small(self, path: ArtifactPath, data: bytes, options: WriteOptions = DEFAULT_WRITE) -> None:
        self.commit(self.open_temp(path), data, options)


def _record_digest(fd: int, sha256: str | None) -> None:
    if sha256:
        try:
            os.setxattr(fd, DIGEST_XATTR, sha256.encode("ascii"))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The filesystem keeps no user xattrs (some NFS mounts): serve without a recorded digest.


def _write_at_end(fd: int, data: bytes, offset: int, start_writeback: bool) -> None:
    write_all(fd, data)
    if start_writeback:
        writeback.start(fd, offset, len(data))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(name: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
