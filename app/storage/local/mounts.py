"""Which filesystem holds the destination, read from /proc/self/mountinfo: it decides whether a small, page-cached
read may run on the event loop (`reading.open_cached`).

On a disk filesystem the kernel keeps recently used inodes and pages in memory, and an open, a stat and a
`preadv(RWF_NOWAIT)` of cached pages take microseconds, as nginx relies on. On a network or FUSE filesystem the same
open may wait for a server round trip, which would stall every request of the worker: there, every step stays in a
worker thread.
"""

from __future__ import annotations

import os

# Filesystems whose metadata and page cache are this machine's own.
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs", "zfs", "bcachefs"})
MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem mounted deepest above `path` (a resolved path), or None when unknown."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
            mounts = [_parse(line) for line in lines]
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for point, fstype in filter(None, mounts):
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)  # the later of two mounts on one point is the one on top
    return best[1] if best else None


def is_local(path: str) -> bool:
    return filesystem_type(os.path.realpath(path)) in LOCAL_TYPES


def _parse(line: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) of one mountinfo line: `id parent dev root POINT opts [tags] - TYPE src opts`."""
    fields = line.split()
    try:
        separator = fields.index("-")
        point, fstype = fields[4], fields[separator + 1]
    except (ValueError, IndexError):
        return None
    return _unescape(point), fstype


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in a path as octal escapes (`\\040`)."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field
