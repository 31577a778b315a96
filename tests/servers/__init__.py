"""Real servers for tests: each is started on 127.0.0.1 on a free port, awaited, and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
# How long a server may take to start. A deadline, not a delay: on a fully loaded 2-core CI machine a Python or
# Node server can take many seconds to import and listen, so it is generous.
STARTUP_TIMEOUT = 60.0


@dataclass
class StorageServer:
    """A running storage server and how the proxy reaches it."""

    name: str
    destination: str  # the --artifacts-destination URI
    env: dict[str, str] = field(default_factory=dict)  # environment the proxy process needs
    endpoint: str = ""  # base URL of the storage server itself, if any
    process: subprocess.Popen[bytes] | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """A binary from the test virtualenv first, then PATH; a missing one fails loudly (never a skip)."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed; run `make test`, which installs every test server")
    return found


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {process.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


def http_ok(url: str, accept: tuple[int, ...] = (200,)) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=10).status_code in accept

    return check


def start_process(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # the child keeps its own descriptor; ours closes here
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group, so stop() also ends its children
        )


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)
