"""Local directory backend (the embedded default, and NFS mounts).

Every filesystem step of an operation runs in one thread hop (`anyio.to_thread.run_sync`): path resolution, the
containment check, open/stat/scandir. Uploads write `.artifact.uploading.<random>` beside the target, fsync, and
`os.replace` into place, so readers see the old version or the complete new one.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    InvalidParameter,
    InvalidPath,
    IsADirectoryArtifact,
    PathOutsideRoot,
    StorageUnavailable,
)
from app.paths import TEMP_PREFIX, ArtifactPath
from app.settings import Settings
from app.signing import UrlSigner
from app.storage import writeback
from app.storage.base import (
    DEFAULT_WRITE,
    CompletedPart,
    CreatedMultipartUpload,
    FileInfo,
    ObjectMeta,
    PresignedUrl,
    WriteOptions,
)
from app.storage.local_errors import fs_call
from app.storage.local_multipart import LocalPresigning, sweep_expired_staging

logger = logging.getLogger("artifact_proxy.storage.local")

# Files up to this size are read in the same thread hop that opens them: one hop per small GET.
PREFETCH_LIMIT = 256 * 1024
# The upload's SHA-256, kept with the file itself (an extended attribute), so it moves and dies with it.
DIGEST_XATTR = "user.artifact_proxy.sha256"


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


# Where the kernel can name an open file's real path, one open(O_PATH) + readlink replaces realpath's lstat of
# every component in Python: the hot paths resolve each request's path, so this is most of their filesystem cost.
_PROC_FD = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


def real_path(full: str) -> str:
    """`os.path.realpath` for an existing path, faster; a missing path falls back to realpath itself."""
    if not _PROC_FD:
        return os.path.realpath(full)
    try:
        fd = os.open(full, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return os.path.realpath(full)  # not there (yet): resolve the part that exists
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _meta_from_stat(st: os.stat_result, sha256: str | None = None) -> ObjectMeta:
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    return ObjectMeta(size=st.st_size, etag=etag, last_modified=st.st_mtime, sha256=sha256)


class LocalStore:
    """Artifacts as files under a root directory."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.root = local_root(uri).expanduser().absolute()
        self.settings = settings
        self._real_root = ""
        # Presigning needs a secret shared by every worker; without one the capability is off (501, server-info).
        self.signer = UrlSigner(settings.signing_secret) if settings.signing_secret else None
        self.multipart_enabled = self.signer is not None and settings.enable_multipart
        self.presigned_download_enabled = self.signer is not None and settings.enable_presigned_download
        self._presigning = LocalPresigning(self)

    # lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._prepare_root)

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        sweep_temp_files(self._real_root, older_than=self.settings.stale_upload_age)
        sweep_expired_staging(self._real_root, max_age=2 * self.settings.multipart_url_ttl)

    async def close(self) -> None:
        return None

    async def check_ready(self) -> None:
        ok = await anyio.to_thread.run_sync(os.access, self._real_root, os.W_OK | os.X_OK)
        if not ok:
            raise StorageUnavailable(f"The artifact directory {self.root} is not writable")

    # path resolution -----------------------------------------------------------------------------------------------
    def _resolve(self, path: ArtifactPath) -> str:
        """The real path for `path`, refusing anything (symlinks included) that resolves outside the root."""
        return self._contained(real_path(os.path.join(self._real_root, path.canonical)))

    def _contained(self, target: str) -> str:
        if target != self._real_root and not target.startswith(self._real_root + os.sep):
            raise PathOutsideRoot()
        return target

    # read ---------------------------------------------------------------------------------------------------------
    async def open_read(self, path: ArtifactPath) -> LocalReadHandle:
        return await anyio.to_thread.run_sync(fs_call, self._open_read, path)

    def _open_read(self, path: ArtifactPath) -> LocalReadHandle:
        target = self._resolve(path)
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise ArtifactNotFound(path.canonical) from exc
        except NotADirectoryError as exc:
            raise ArtifactNotFound(path.canonical) from exc
        except IsADirectoryError as exc:
            raise IsADirectoryArtifact(path.canonical) from exc
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryArtifact(path.canonical)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactNotFound(path.canonical)
            prefetched = os.pread(fd, st.st_size, 0) if st.st_size <= PREFETCH_LIMIT else None
        except BaseException:
            os.close(fd)
            raise
        meta = _meta_from_stat(st, _read_digest(fd))
        return LocalReadHandle(fd, meta, prefetched, self.settings.download_chunk_size)

    # write --------------------------------------------------------------------------------------------------------
    async def write(
        self, path: ArtifactPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        iterator = aiter(chunks)
        head = bytearray()
        async for chunk in iterator:  # buffer the first block: a small body costs a single thread hop
            head += chunk
            if len(head) >= self.settings.upload_chunk_size:
                break
        else:
            await anyio.to_thread.run_sync(fs_call, self._write_small, path, bytes(head), options)
            return
        fd, temp, target = await anyio.to_thread.run_sync(fs_call, self._open_temp, path)
        try:
            await anyio.to_thread.run_sync(_write_all, fd, bytes(head))
            await self._stream_to_fd(fd, iterator, offset=len(head))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard, fd, temp)
            raise
        # _commit owns the descriptor from here: it closes it, or discards it on failure.
        await anyio.to_thread.run_sync(self._commit, fd, temp, target, b"", options)

    async def _stream_to_fd(self, fd: int, chunks: AsyncIterator[bytes], offset: int = 0) -> None:
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
                await anyio.to_thread.run_sync(_write_at_end, fd, data, offset, start_writeback)
                offset += len(data)
        if parts:
            await anyio.to_thread.run_sync(_write_at_end, fd, b"".join(parts), offset, start_writeback)

    def _prepare_target(self, path: ArtifactPath) -> tuple[str, str]:
        """The (real) parent directory and target file for a write, creating parents inside the root as needed."""
        parent_path = ArtifactPath(path.canonical.rpartition("/")[0])
        parent = self._resolve(parent_path)
        if not os.path.isdir(parent):
            self._make_parents(path, parent)
            parent = self._resolve(parent_path)  # re-check: a concurrent symlink swap must not redirect the write
        target = os.path.join(parent, path.basename)
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return parent, target
        if stat.S_ISLNK(mode):
            # Replacing the link itself would be allowed by os.replace, but reads through it are refused when it
            # leaves the root, so writes are too.
            mode = os.stat(self._resolve(path)).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidParameter(f"Cannot write '{path.canonical}': it is a directory")
        return parent, target

    @staticmethod
    def _make_parents(path: ArtifactPath, parent: str) -> None:
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidParameter(f"Cannot write '{path.canonical}': a parent path is a file") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidPath() from exc
            raise

    def _open_temp(self, path: ArtifactPath) -> tuple[int, str, str]:
        parent, target = self._prepare_target(path)
        temp = os.path.join(parent, f"{TEMP_PREFIX}{secrets.token_hex(16)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        return fd, temp, target

    def _commit(self, fd: int, temp: str, target: str, tail: bytes, options: WriteOptions = DEFAULT_WRITE) -> None:
        try:
            _write_all(fd, tail)
            _record_digest(fd, options.digest())
            if self.settings.fsync_uploads:
                os.fsync(fd)
        except BaseException:
            _discard(fd, temp)
            raise
        os.close(fd)
        try:
            _publish(temp, target, options.create_only, self._relative(target))
        except BaseException:
            _unlink_quietly(temp)
            raise

    def _relative(self, target: str) -> str:
        return os.path.relpath(target, self._real_root)

    def _write_small(self, path: ArtifactPath, data: bytes, options: WriteOptions = DEFAULT_WRITE) -> None:
        fd, temp, target = self._open_temp(path)
        self._commit(fd, temp, target, data, options)

    # presigning (app/storage/local_multipart.py) -------------------------------------------------------------------
    async def create_multipart_upload(self, path: ArtifactPath, num_parts: int) -> CreatedMultipartUpload:
        return await self._presigning.create_multipart_upload(path, num_parts)

    async def write_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        return await self._presigning.write_part(upload_id, part_number, chunks)

    async def complete_multipart_upload(
        self, path: ArtifactPath, upload_id: str | None, parts: builtins.list[CompletedPart]
    ) -> None:
        await self._presigning.complete_multipart_upload(path, upload_id, parts)

    async def abort_multipart_upload(self, path: ArtifactPath, upload_id: str | None) -> None:
        await self._presigning.abort_multipart_upload(path, upload_id)

    async def presign_download(self, path: ArtifactPath) -> PresignedUrl:
        return await self._presigning.presign_download(path)

    # list ---------------------------------------------------------------------------------------------------------
    async def list(self, path: ArtifactPath) -> list[FileInfo]:
        return await anyio.to_thread.run_sync(fs_call, self._list, path)

    def _list(self, path: ArtifactPath) -> builtins.list[FileInfo]:
        target = self._resolve(path)
        infos: builtins.list[FileInfo] = []
        try:
            with os.scandir(target) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        continue
                    info = self._entry_info(entry)
                    if info is not None:
                        infos.append(info)
        except (FileNotFoundError, NotADirectoryError):
            return []
        infos.sort(key=lambda info: info.path)
        return infos

    def _entry_info(self, entry: os.DirEntry[str]) -> FileInfo | None:
        try:
            if entry.is_symlink():
                # A link is listed only if it stays inside the root; a link out of it is invisible.
                self._resolve(ArtifactPath(os.path.relpath(entry.path, self._real_root)))
            if entry.is_dir():
                return FileInfo(entry.name, True)
            return FileInfo(entry.name, False, entry.stat().st_size)
        except (PathOutsideRoot, OSError):
            return None

    # delete -------------------------------------------------------------------------------------------------------
    async def delete(self, path: ArtifactPath) -> None:
        if path.is_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        await anyio.to_thread.run_sync(fs_call, self._delete, path)

    def _delete(self, path: ArtifactPath) -> None:
        target = self._resolve(path)
        if target == self._real_root:
            raise InvalidParameter("Refusing to delete the artifact root")
        try:
            if os.path.isdir(target):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        except (FileNotFoundError, NotADirectoryError):
            return


def _publish(temp: str, target: str, create_only: bool, name: str) -> None:
    """Move a finished temp file into place: atomically replace, or atomically create-only (link fails if taken)."""
    if not create_only:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError as exc:
        raise AlreadyExists(name) from exc
    os.unlink(temp)


def _record_digest(fd: int, sha256: str | None) -> None:
    if sha256:
        try:
            os.setxattr(fd, DIGEST_XATTR, sha256.encode("ascii"))
        except OSError:
            pass  # the filesystem keeps no user xattrs (some NFS mounts): serve without a recorded digest


def _read_digest(fd: int) -> str | None:
    try:
        return os.getxattr(fd, DIGEST_XATTR).decode("ascii")
    except OSError:
        return None


def _write_at_end(fd: int, data: bytes, offset: int, start_writeback: bool) -> None:
    _write_all(fd, data)
    if start_writeback:
        writeback.start(fd, offset, len(data))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _discard(fd: int, temp: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    _unlink_quietly(temp)


def sweep_temp_files(root: str, older_than: float = 0.0) -> int:
    """Remove leftover `.artifact.uploading.*` files (a crash mid-upload); returns how many were removed."""
    removed = 0
    cutoff = time.time() - older_than
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if not name.startswith(TEMP_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            try:
                if older_than and os.lstat(full).st_mtime > cutoff:
                    continue
                os.unlink(full)
                removed += 1
            except OSError:
                continue
    if removed:
        logger.info("removed %d leftover temporary upload file(s) under %s", removed, root)
    return removed
