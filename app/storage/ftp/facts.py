"""What an FTP server says about a path (MLSx facts, or aioftp's parse of a LIST line), as the store's metadata."""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import Any

from app.storage.base import FileInfo, ObjectMeta
from app.storage.remote_paths import Kind, listable

Info = Mapping[str, Any]  # MLSx facts ("type", "size", "modify"), or aioftp's parse of a LIST line


def _modified(info: Info) -> float | None:
    raw = str(info.get("modify", ""))[:14]
    try:
        return float(calendar.timegm(time.strptime(raw, "%Y%m%d%H%M%S")))
    except ValueError:
        return None


def object_meta(info: Info) -> ObjectMeta:
    # MLSx's `unique` fact (device and inode on most servers) changes with every upload, even within one second.
    size, tag = int(info.get("size", 0)), "-".join(str(info[fact]) for fact in ("unique", "modify") if fact in info)
    return ObjectMeta(size=size, etag=f'"{tag}-{size:x}"', last_modified=_modified(info))


def kind_of(info: Info | None) -> Kind:
    """What the facts (None: nothing there) say is at a path."""
    if info is None:
        return Kind.MISSING
    return Kind.DIR if info.get("type") == "dir" else Kind.OTHER


def file_info(name: str, info: Info) -> FileInfo | None:
    if not listable(name):
        return None
    if info.get("type") == "dir":
        return FileInfo(name, True)
    if info.get("type") == "file":
        return FileInfo(name, False, int(info.get("size", 0)))
    return None  # links, devices
