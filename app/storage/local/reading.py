"""Reading a local artifact: one open below the root, the small ones read in the same thread hop."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import AsyncIterator

import anyio.to_thread

from app.errors import ArtifactNotFound, IsADirectoryArtifact
from app.paths import ArtifactPath
from app.storage.base import ObjectMeta
from app.storage.local.files import DIGEST_XATTR, MISSING, LocalFiles
from app.storage.local.resolve import READ_FLAGS

logger = logging.getLogger("artifact_proxy.storage.local")

# Files up to this size are read in the same thread hop that opens them: one hop per small GET.
PREFETCH_LIMIT = 256 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Opening these is refused by the kernel for sockets and device nodes without a driver: not an artifact either way.
_NOT_OPENABLE = frozenset({errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})


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


def open_for_read(files: LocalFiles, path: ArtifactPath) -> LocalReadHandle:
    """Open `path` for reading (a thread-hop step: run it with `files.run`)."""
    fd, st = _open_regular(files, path)
    try:
        prefetched = os.pread(fd, st.st_size, 0) if st.st_size <= PREFETCH_LIMIT else None
        meta = _meta_from_stat(st, _read_digest(fd, path))
    except BaseException:
        os.close(fd)
        raise
    return LocalReadHandle(fd, meta, prefetched, files.settings.download_chunk_size)


def open_cached(files: LocalFiles, path: ArtifactPath) -> LocalReadHandle | None:
    """`open_for_read` on the event loop, for a file whose bytes need no disk: the open, stat and digest of an inode
    the kernel holds, and for a small file one `preadv(RWF_NOWAIT)`, which reads the page cache or refuses at once
    (starting readahead, which the thread then finds under way).
    None when a byte is not cached: `open_for_read` in a thread then does it all again. A GET of a small, recently
    used artifact costs no thread hop (a hop is a fifth of such a request's time). Only when `files.reads_on_loop`."""
    fd, st = files.run_here(_open_regular, files, path)
    try:
        prefetched: bytes | None = None
        if st.st_size <= PREFETCH_LIMIT:
            buffer = bytearray(st.st_size)
            if st.st_size:
                try:
                    got = os.preadv(fd, [buffer], 0, os.RWF_NOWAIT)
                except BlockingIOError:
                    got = -1  # not in the page cache
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    files.reads_on_loop = False  # this filesystem cannot say "would block": threads from now on
                    got = -1
                if got != st.st_size:
                    os.close(fd)
                    return None
            prefetched = bytes(buffer)
        meta = _meta_from_stat(st, _read_digest(fd, path))
    except BaseException:
        os.close(fd)
        raise
    return LocalReadHandle(fd, meta, prefetched, files.settings.download_chunk_size)


def head_of(files: LocalFiles, path: ArtifactPath) -> ObjectMeta:
    """The metadata `open_for_read` would give, nothing read (a thread-hop step)."""
    fd, st = _open_regular(files, path)
    try:
        return _meta_from_stat(st, _read_digest(fd, path))
    finally:
        os.close(fd)


def _open_regular(files: LocalFiles, path: ArtifactPath) -> tuple[int, os.stat_result]:
    """An open descriptor on the regular file at `path`, and its stat; 404 for anything that is not one."""
    try:
        fd = files.dir.open(path.canonical, READ_FLAGS)
    except MISSING as exc:
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
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _meta_from_stat(st: os.stat_result, sha256: str | None = None) -> ObjectMeta:
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    return ObjectMeta(size=st.st_size, etag=etag, last_modified=st.st_mtime, sha256=sha256)


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
