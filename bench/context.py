"""One run's shared state, handed to every scenario instead of module globals."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.config import Settings
from bench.data import Payloads
from bench.results import Results, new_results
from bench.transcript import Transcript, log

T = TypeVar("T")


@dataclass
class Context:
    """The command line's choices, the transcript (temp dir, ports, commands), the payload files, and the figures
    as they come in. A failure is recorded in the figures' errors and the run goes on: one broken server must not
    lose the rest of the report."""

    settings: Settings
    transcript: Transcript
    files: Payloads
    results: Results = field(default_factory=new_results)

    @property
    def tmp(self) -> Path:
        return self.transcript.tmp

    def section(self, name: str, fn: Callable[[], None]) -> None:
        """One server's scenario; a failure ends the section, with its traceback in the log."""
        log(f"== {name}")
        try:
            fn()
        except Exception as exc:
            log(f"!! {name} failed: {exc}")
            traceback.print_exc()
            self.results["errors"].append(f"{name}: {str(exc).splitlines()[0] if str(exc) else repr(exc)}")

    def guard(self, name: str, fn: Callable[[], T]) -> T | None:
        """One workload within a section; a failure leaves None for it and the section goes on."""
        try:
            return fn()
        except Exception as exc:
            log(f"!! {name} failed: {exc}")
            self.results["errors"].append(f"{name}: {str(exc).splitlines()[0]}")
            return None
