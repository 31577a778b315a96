"""What the run tells: progress lines on stdout, and every external command it ran, for the report.

Commands are kept with the run's temp dir shown as `$TMP` and the ports it picked as `$PORT`, so the report's
"Exact commands" list reads the same from one run to the next.
"""

from __future__ import annotations

import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import ROOT


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Transcript:
    tmp: Path  # the run's temp dir: shown as $TMP, and where the servers' logs go
    ports: set[int] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)

    def show(self, cmd: list[str] | str) -> str:
        text = cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)
        return text.replace(str(self.tmp), "$TMP").replace(str(ROOT) + "/", "")

    def record(self, cmd: list[str] | str) -> None:
        text = self.show(cmd)
        for port in self.ports:
            text = re.sub(rf"\b{port}\b", "$PORT", text)
        if text not in self.commands:
            self.commands.append(text)

    def free_port(self) -> int:
        """A port free now on 127.0.0.1; remembered so the commands that use it show `$PORT`."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.ports.add(port)
        return port
