"""Crash leftovers of local uploads go away without waiting, and live uploads are never touched.

Every writer holds an exclusive `flock` on its temporary file for the file's whole life, and every multipart step
(part upload, complete, abort) a shared lock on its staging directory's `target` file. A sweeper that can take such
a lock knows that nobody is using the entry: its owner finished or died (`kill -9` releases every lock with the
process). The sweep runs at startup and then periodically; one worker at a time sweeps (a lock on the root itself).

On local filesystems temporary files are anonymous (`O_TMPFILE`) until they are locked and complete, so a crash
mid-upload leaves nothing at all; named ones exist only where the filesystem lacks `O_TMPFILE` (NFS). The age floor
(`stale_age`) covers the instant between a named file's creation and its lock, and mounts whose locks do not reach
other hosts: an NFS share needs working locks (NFSv4, or v3 with lockd; not `nolock` or `local_lock=...`) for one
replica's sweeper to see another's live uploads; without them only the age floor protects a live upload.

A multipart upload lives across requests and replicas, so no process holds its lock for its whole life: its staging
directory is removed once its part URLs have long expired (`staging_max_age`) and no step is running on it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
from dataclasses import dataclass

from app.paths import TEMP_PREFIX

logger = logging.getLogger("artifact_proxy.storage.local")

STAGING_DIR = f"{TEMP_PREFIX}mpu"
STAGING_TARGET = "target"  # in a staging directory: the upload's artifact path, and the lock its steps share


def lock_new_file(fd: int) -> None:
    """Mark a file we just created as live. Nobody else can hold its lock yet; a filesystem without locks (ENOLCK,
    EOPNOTSUPP) leaves only the age floor to protect it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise


def try_lock(fd: int, exclusive: bool) -> bool:
    """Take a lock without waiting; False when somebody holds a conflicting one."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    return True


@dataclass
class SweepCounts:
    temp_files: int = 0
    staging_dirs: int = 0


def sweep(real_root: str, now: float, stale_age: float, staging_max_age: float) -> SweepCounts | None:
    """Remove abandoned temporary files and expired staging directories under `real_root`, as of `now` (POSIX
    seconds). None when another worker is sweeping already."""
    try:
        guard = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        logger.warning("cannot sweep %s: %s", real_root, exc)
        return None
    try:
        if not _try_lock_root(guard):
            return None
        counts = SweepCounts()
        for dirpath, dirnames, filenames in os.walk(real_root):
            if dirpath == real_root and STAGING_DIR in dirnames:
                dirnames.remove(STAGING_DIR)
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    counts.temp_files += _remove_if_abandoned(os.path.join(dirpath, name), now, stale_age)
        counts.staging_dirs = _sweep_staging(os.path.join(real_root, STAGING_DIR), now, stale_age, staging_max_age)
    finally:
        os.close(guard)
    if counts.temp_files or counts.staging_dirs:
        logger.info(
            "removed %d abandoned temporary upload file(s) and %d expired multipart staging director(ies) under %s",
            counts.temp_files,
            counts.staging_dirs,
            real_root,
        )
    return counts


def _try_lock_root(fd: int) -> bool:
    try:
        return try_lock(fd, exclusive=True)
    except OSError:
        return True  # no locks on directories here (some NFS mounts): two sweeps at once are only wasted work


def _remove_if_abandoned(path: str, now: float, stale_age: float) -> int:
    try:
        # Read-write: NFS emulates flock with byte-range locks, and an exclusive one needs a descriptor open for
        # writing. O_NOFOLLOW and O_NONBLOCK: never follow a planted link, never block on a FIFO.
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > now - stale_age or not try_lock(fd, exclusive=True):
            return 0
        os.unlink(path)
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)


def _sweep_staging(base: str, now: float, stale_age: float, max_age: float) -> int:
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            names = os.listdir(entry.path)
        except OSError:
            continue
        for name in names:
            if name.endswith(".tmp"):  # a part being written, or one whose writer died
                _remove_if_abandoned(os.path.join(entry.path, name), now, stale_age)
        removed += _remove_expired_staging(entry.path, now, stale_age, max_age)
    return removed


def _remove_expired_staging(staging: str, now: float, stale_age: float, max_age: float) -> int:
    try:
        fd = os.open(os.path.join(staging, STAGING_TARGET), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # A create that died before it recorded its target: nobody can ever use this directory.
        try:
            if os.lstat(staging).st_mtime > now - stale_age:
                return 0
        except OSError:
            return 0
        shutil.rmtree(staging, ignore_errors=True)
        return 1
    except OSError:
        return 0
    try:
        if os.fstat(fd).st_mtime > now - max_age or not try_lock(fd, exclusive=True):
            return 0
        shutil.rmtree(staging, ignore_errors=True)
        return 1
    finally:
        os.close(fd)
