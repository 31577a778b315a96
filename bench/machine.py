"""What the figures were measured on: hardware, OS and the version of every tool, for the report's first table.

Each version is the first line its tool prints; a tool that is missing or fails shows "n/a" instead of stopping
the report, which is written after the whole run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import psutil

from bench.config import GIB, MLFLOW_VENV, NGINX_BIN, PROXY_BIN


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "n/a"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "n/a"


def machine(proxy_workers: int | None) -> dict[str, str]:
    """Row label -> value, in the order the report prints them."""
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "ram": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "artifact-proxy": version([str(PROXY_BIN), "--version"]),
        "mlflow": version(
            [str(MLFLOW_VENV / "bin/python"), "-c", "import mlflow; print('mlflow', mlflow.__version__)"]
        ),
        "nginx": version([NGINX_BIN, "-v"]),
        "curl": version(["curl", "--version"]),
        "hey": "hey (Debian package " + version(["dpkg-query", "-W", "-f=${Version}", "hey"]) + ")",
        # The server's own default, as app/cli.py computes it: the report must say how many workers were measured.
        "proxy workers": str(proxy_workers or "default (" + str(max(1, min(os.cpu_count() or 1, 4))) + ")"),
    }
