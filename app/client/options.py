"""The knobs of a transfer, shared by uploads, downloads and verification."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferOptions:
    jobs: int = 8  # files (and parts, and ranges, of each large file) in flight at once
    multipart_threshold: int = 100 * MiB  # from this size, presigned multipart up and ranged presigned down
    part_size: int = 16 * MiB
    server_recursive: bool = True  # ask for recursive listings; off: walk one level at a time
