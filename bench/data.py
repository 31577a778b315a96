"""The bytes the workloads move: 16 KiB for small requests, 1 GiB of random data (and 4 GiB for --big), and a
directory of many small files for listing. Random, so no layer on the way can compress it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.config import LIST_N, SMALL
from bench.transcript import log


@dataclass(frozen=True)
class Payloads:
    small: Path
    one_gib: Path
    four_gib: Path

    @classmethod
    def create(cls, tmp: Path) -> Payloads:
        """The 16 KiB file now; the large ones only when the run starts (write_large), as they take a while."""
        data = tmp / "data"
        data.mkdir()
        small = data / "16k.bin"
        small.write_bytes(os.urandom(SMALL))
        return cls(small=small, one_gib=data / "1g.bin", four_gib=data / "4g.bin")

    def write_large(self, big: bool) -> None:
        log("writing 1 GiB of random data")
        with open(self.one_gib, "wb") as f:
            for _ in range(16):
                f.write(os.urandom(64 * 1024 * 1024))
        if big:
            log("writing 4 GiB test file (the 1 GiB file four times)")
            with open(self.one_gib, "rb") as src, open(self.four_gib, "wb") as dst:
                for _ in range(4):
                    src.seek(0)
                    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        os.sync()  # the first timed upload must not pay for writing these


def make_list_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(LIST_N):
        (directory / f"file-{i:05d}.txt").write_bytes(b"x" * 100)
