"""What a transfer shows while it runs (rich progress bars on a terminal) and what it reports at the end.

Bars are drawn on stderr only when it is a terminal and `--json` is off, so pipes and CI logs get no escape codes.
rich rather than tqdm: one `Progress` holds the bytes bar and the files bar together and is safe to update from
many tasks, and it is already in the test environment's pins (schemathesis brings it).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@dataclass
class Summary:
    """The `--json` object: what was transferred, how long it took, and what failed."""

    files: int = 0
    bytes: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)  # downloads the server sent no digest for
    started: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(time.monotonic() - self.started, 3),
            "failures": self.failures,
            "not_verified": self.not_verified,
        }

    def fail(self, path: str, message: str) -> None:
        self.failures.append({"path": path, "error": message})


class Bars:
    """One bar of bytes, its label counting files; drawn only when `shown`."""

    def __init__(self, shown: bool) -> None:
        self._progress: Progress | None = None
        self._files_total = self._files_done = 0
        self._bytes_total = 0
        if shown:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task: TaskID = self._progress.add_task(self._label(), total=0)

    def _label(self) -> str:
        return f"{self._files_done}/{self._files_total} files"

    def __enter__(self) -> Bars:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def expect(self, size: int, files: int = 1) -> None:
        self._bytes_total += size
        self._files_total += files
        if self._progress:
            self._progress.update(self._task, total=self._bytes_total, description=self._label())

    def moved(self, size: int) -> None:
        if self._progress and size:
            self._progress.advance(self._task, size)

    def file_done(self) -> None:
        self._files_done += 1
        if self._progress:
            self._progress.update(self._task, description=self._label())


def shows_bars(as_json: bool, quiet: bool) -> bool:
    return not as_json and not quiet and sys.stderr.isatty()


def report(summary: Summary, as_json: bool, verbose: bool, verb: str) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_json()))
        return
    for failure in summary.failures:
        click.echo(f"error: {failure['path']}: {failure['error']}", err=True)
    if verbose:
        for path in summary.not_verified:
            click.echo(f"{path}: not verified (the server sent no digest)", err=True)
    if verbose or summary.files > 1:
        seconds = time.monotonic() - summary.started
        click.echo(f"{verb} {summary.files} file(s), {summary.bytes} bytes in {seconds:.1f} s", err=True)
