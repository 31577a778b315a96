"""Start the real service (the `artifact-proxy` CLI under uvicorn) on a free port, and stop it."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, http_ok, start_process, stop_process, wait_until


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:PORT
    destination: str
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api/2.0/mlflow-artifacts"

    def artifact_url(self, path: str) -> str:
        return f"{self.api}/artifacts/{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str, timeout: float = 5) -> bool:
        """Whether `text` appears in the log; access lines are written just after the response, so wait a little."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@contextmanager
def running_proxy(
    destination: str,
    work_dir: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workers: int = 1,
) -> Iterator[Proxy]:
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"proxy-{port}.log"
    args = [
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
        wait_until(http_ok(f"{url}{prefix}/health"), 30, f"artifact-proxy on port {port}", process)
        yield Proxy(url=url, destination=destination, log_path=log_path)
    finally:
        stop_process(process)
