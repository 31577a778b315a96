"""Start the real service (the `artifact-proxy` CLI under uvicorn) on a free port, and stop it."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import STARTUP_TIMEOUT, free_port, http_ok, start_process, stop_process, wait_until

# How long a test waits for something the service does on its own (a log line, a request reaching the app). Only a
# safety net against hanging: on a loaded 2-core CI machine "soon" can be many seconds, so it is generous.
PATIENCE = 60.0


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:PORT
    destination: str
    log_path: Path
    pid: int = 0  # the server's process (group leader of its workers)

    @property
    def api(self) -> str:
        return f"{self.url}/api/2.0/mlflow-artifacts"

    def artifact_url(self, path: str) -> str:
        return f"{self.api}/artifacts/{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str, timeout: float = PATIENCE, times: int = 1) -> bool:
        """Whether `text` appears in the log (at least `times` times). Access lines (and the metrics recorded with
        them) are written just after the response is sent, so this waits for the line, up to `timeout`."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < times:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=PATIENCE).text

    def requests_in_flight(self) -> int:
        """Requests inside the app right now (past their headers, not yet answered), not counting this probe."""
        for line in self.metrics().splitlines():
            if line.startswith("artifact_proxy_requests_in_flight "):
                return round(float(line.split()[1])) - 1  # the /metrics request counts itself
        raise AssertionError("/metrics has no artifact_proxy_requests_in_flight")

    def wait_in_flight(self, count: int, timeout: float = PATIENCE) -> None:
        """Wait until at least `count` requests are being served at once. Poll from one thread only: concurrent
        probes would count each other."""
        wait_until(lambda: self.requests_in_flight() >= count, timeout, f"{count} request(s) in flight")


def held_body(data: bytes, first: int, release: threading.Event) -> Iterator[bytes]:
    """An upload body that sends its first `first` bytes, then holds the request open until `release` is set.
    Send it with an explicit Content-Length header (httpx would otherwise send an iterator chunked)."""
    yield data[:first]
    if not release.wait(PATIENCE):
        raise TimeoutError("the test never released a held upload body")
    yield data[first:]


@contextmanager
def running_proxy(
    destination: str,
    work_dir: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workers: int = 1,
    wrapper: list[str] | None = None,
    port: int | None = None,
) -> Iterator[Proxy]:
    """`wrapper` prefixes the command line (e.g. setpriv, to run without root's capabilities); `port` is one to listen
    on (a reverse proxy's upstream), instead of a free one."""
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"proxy-{port}.log"
    args = [
        *(wrapper or []),
        sys.executable,
        "-m",
        "app",
        "server",
        "--artifacts-destination",
        destination,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *(extra_args or []),
    ]
    base_env = {"ARTIFACT_PROXY_SIGNING_SECRET": secrets.token_hex(16)}
    process = start_process(args, log_path, env={**base_env, **(env or {})}, cwd=work_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        prefix = next((a.split("=", 1)[1] for a in (extra_args or []) if a.startswith("--static-prefix=")), "")
        wait_until(http_ok(f"{url}{prefix}/health"), STARTUP_TIMEOUT, f"artifact-proxy on port {port}", process)
        yield Proxy(url=url, destination=destination, log_path=log_path, pid=process.pid)
    finally:
        stop_process(process)
