"""The README's two set-ups, run as written: each one's start block, then its "try it" block (issue 16).

The blocks are the fenced `sh` blocks after the README's `<!-- README set-up N, start` and `<!-- README set-up N, try
it -->` markers, so what a newcomer copies is what runs here. They run with bash in a scratch directory laid out like
the checkout (the Makefile, the sources and the three venvs linked in; `make run` finds its install stamp and starts
at once), so the `mlflow.db`, `front/` and `mlartifacts/` they create stay out of the work tree. One change is made to
them: the ports 5000, 5001 and 5002 become free ones (and `make run` with no `PORT=` gets its port from
`ARTIFACT_PROXY_PORT`, which the Makefile reads), so a developer's own `make run` or `make stack` cannot collide.

The start block's background processes (`make run`, `mlflow server`, nginx) share one process group, which the test
ends whatever happens. A missing venv, nginx or MLflow fails the test; `make test` installs them all.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED = ("Makefile", "pyproject.toml", "constraints.txt", "app", "deploy", ".venv")
MLFLOW_VENV = Path(os.environ.get("MLFLOW_VENV", ROOT / ".venv-mlflow"))
README_PORTS = ("5000", "5001", "5002")
SERVER_START = 180.0  # a deadline, not a delay: the tracking server's first start migrates a new SQLite database
STOP_DEADLINE = 60.0
# Nothing here may leave the machine, and MLflow 3.18's job runner only slows its start and stop.
QUIET_MLFLOW = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def readme_block(marker: str) -> str:
    """The fenced sh block right after the README comment that starts with `<!-- {marker}`."""
    text = README.read_text()
    found = re.search(re.escape(f"<!-- {marker}") + r"[^\n]*-->\n```sh\n(.*?)\n```\n", text, re.DOTALL)
    assert found, f"README.md has no sh block after <!-- {marker} ... -->"
    return found.group(1)


@dataclass
class Setup:
    cwd: Path
    ports: dict[str, int]  # a port the README names -> the one used here
    log: Path

    def localise(self, block: str) -> str:
        return re.sub(r"(?<!\d)(500[0-2])(?!\d)", lambda m: str(self.ports[m.group(1)]), block)

    def env(self) -> dict[str, str]:
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACT_PROXY_", "MLFLOW_", "AWS_", "AZURE_"))
        }
        return {
            **inherited,
            **QUIET_MLFLOW,
            "PATH": f"{inherited.get('PATH', '')}:/usr/sbin:/sbin",  # Debian's nginx, for a non-login root shell
            "ARTIFACT_PROXY_PORT": str(self.ports["5000"]),
        }

    def run(self, block: str) -> str:
        """A try-it block, in the foreground: its output, or a failure that shows it and the servers' log."""
        done = subprocess.run(
            ["bash", "-e", "-c", self.localise(block)],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=SERVER_START,
        )
        assert done.returncode == 0, (
            f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n--- servers\n"
            f"{self.log.read_text()[-4000:]}"
        )
        return done.stdout

    def wait_for(self, *urls: str) -> None:
        for url in urls:
            try:
                wait_until(http_ok(url), SERVER_START, url)
            except RuntimeError as exc:
                pytest.fail(f"{exc}\n--- servers\n{self.log.read_text()[-4000:]}", pytrace=False)


def checkout_like(tmp: Path) -> Path:
    for venv in (ROOT / ".venv", MLFLOW_VENV):
        if not (venv / "bin" / "python").exists():
            pytest.fail(f"{venv} is missing; `make test` creates it", pytrace=False)
    work = tmp / "checkout"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    (work / ".venv-mlflow").symlink_to(MLFLOW_VENV)
    # Were `make run` to install here, `pip install -e .` would repoint .venv's editable install at this directory.
    if subprocess.run(["make", "-q", ".venv/.installed-run"], cwd=work, capture_output=True).returncode != 0:
        pytest.fail("`make run` would reinstall .venv; `make install-test` brings it up to date first", pytrace=False)
    return work


def end_group(pgid: int) -> None:
    """SIGTERM to every process the start block left, then SIGKILL to what outlives the deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not group_alive(pgid), STOP_DEADLINE, f"process group {pgid} ending")
            return
        except RuntimeError:
            continue


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def started(number: int, tmp: Path) -> Iterator[Setup]:
    cwd = checkout_like(tmp)
    setup = Setup(cwd, {port: free_port() for port in README_PORTS}, tmp / "servers.log")
    start = setup.localise(readme_block(f"README set-up {number}, start"))
    with open(setup.log, "wb") as log:
        process = subprocess.Popen(
            ["bash", "-e", "-c", start],
            cwd=cwd,
            env=setup.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: the block's background jobs outlive its shell
        )
    try:
        assert process.wait(timeout=SERVER_START) == 0, f"the start block failed:\n{setup.log.read_text()[-4000:]}"
        yield setup
    finally:
        end_group(process.pid)


def stored(cwd: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(cwd)): p.read_text() for p in cwd.glob(pattern)}


def test_set_up_1_one_origin_runs_as_written(tmp_path: Path) -> None:
    with started(1, tmp_path) as setup:
        front, service, tracking = (f"http://127.0.0.1:{setup.ports[p]}" for p in README_PORTS)
        setup.wait_for(f"{service}/health", f"{tracking}/health", f"{front}/api/2.0/mlflow-artifacts/artifacts")
        out = setup.run(readme_block("README set-up 1, try it"))
        files = stored(setup.cwd, "mlartifacts/experiments/0/*/artifacts/hello.txt")
    lines = out.splitlines()  # MLflow also prints a "View run" line and an experiment link
    assert any(line.startswith(f"{front}/api/2.0/mlflow-artifacts/artifacts/experiments/0/") for line in lines), out
    assert lines[-2:] == ["['hello.txt']", "hello.txt"], out
    assert list(files.values()) == ["hello"], files


def test_set_up_2_mlflow_artifacts_roots_run_as_written(tmp_path: Path) -> None:
    with started(2, tmp_path) as setup:
        service, tracking = (f"http://127.0.0.1:{setup.ports[p]}" for p in ("5000", "5002"))
        setup.wait_for(f"{service}/health", f"{tracking}/health")
        out = setup.run(readme_block("README set-up 2, try it"))
        files = stored(setup.cwd, "mlartifacts/experiments/exp/*/artifacts/hello.txt")
    assert out.splitlines()[-1] == "hello.txt", out
    assert list(files.values()) == ["hello"], files
