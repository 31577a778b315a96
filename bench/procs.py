"""Process control for the servers under test: start one, wait until it answers, and stop all of it.

Each server gets a process group of its own (start_new_session), so stopping it reaches its workers too; a child
that left the group is found through the process tree recorded before the stop and killed by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.transcript import Transcript, log


@dataclass
class Server:
    """One server under test: how to start it, where it listens, and how to tell it is up (`health`)."""

    name: str
    cmd: list[str]
    port: int
    health: str
    cwd: Path
    transcript: Transcript  # records the command line; the log goes to its temp dir
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The root of its process tree, which the RSS sampler walks."""
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def start(self, timeout: float = 60) -> None:
        self.transcript.record(
            " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + self.transcript.show(self.cmd)
            if self.env
            else self.cmd
        )
        self.logfile = self.transcript.tmp / f"{self.name.replace(' ', '_')}.log"
        out = open(self.logfile, "wb")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                # Up once it answers below 500: a 4xx (S3 refusing an anonymous GET on "/", say) still means it listens.
                if httpx.get(self.base + self.health, timeout=2).status_code < 500:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        if self.logfile and self.logfile.exists():
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this script created for it
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs([p for p in tree if p.is_running()], timeout=5)
        for p in alive:  # a child that left the group: stop it by its pid
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc = None

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def worker_pids(self) -> list[int]:  # bench/profile.py attaches py-spy to these
        """Processes that serve requests: the leaves of the tree (uvicorn workers, nginx workers)."""
        procs = self.tree()
        leaves = [p.pid for p in procs if not p.children()]
        return leaves or [procs[0].pid]


@contextlib.contextmanager
def running(server: Server, timeout: float = 60) -> Iterator[Server]:
    log(f"starting {server.name}: {server.transcript.show(server.cmd)}")
    try:
        server.start(timeout)
        yield server
    except Exception as exc:
        # The first line of the error and the last line of the server's log: that is what ends up in the report.
        if getattr(exc, "annotated", False):  # an inner server already explained it
            raise
        tail = server.tail()
        log(f"{server.name} log tail:\n{tail}")
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        err = RuntimeError(f"{str(exc).splitlines()[0] if str(exc) else repr(exc)} [{server.name} log: {last}]")
        err.annotated = True  # type: ignore[attr-defined]
        raise err from exc
    finally:
        server.stop()
        log(f"stopped {server.name}")
