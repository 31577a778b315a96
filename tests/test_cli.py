"""The CLI mirrors `mlflow server`'s flags; flags beat the environment, which beats defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app import __version__
from app.settings import Settings
from tests.servers import STARTUP_TIMEOUT, free_port, http_ok, start_process, stop_process, wait_until


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().artifacts_destination == "./mlartifacts"
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "/from/mlflow/env")
    assert Settings().artifacts_destination == "/from/mlflow/env"
    monkeypatch.setenv("ARTIFACT_PROXY_ARTIFACTS_DESTINATION", "/from/flag")
    assert Settings().artifacts_destination == "/from/flag"


def test_unknown_scheme_is_a_clear_startup_error() -> None:
    result = run_cli("server", "--artifacts-destination", "dbfs://workspace/x", "--port", str(free_port()))
    assert result.returncode != 0
    assert "Unsupported artifacts destination scheme 'dbfs'" in result.stderr


def test_hdfs_names_what_is_missing() -> None:
    result = run_cli("server", "--artifacts-destination", "hdfs://namenode:8020/x", "--port", str(free_port()))
    assert result.returncode != 0
    assert "libhdfs" in result.stderr


def test_mlflow_style_command_line_with_static_prefix(tmp_path: Path) -> None:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "app",
        "server",
        "--artifacts-only",
        "--serve-artifacts",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
        "--static-prefix",
        "/mlflow",
        "--artifacts-destination",
        str(tmp_path / "a"),
    ]
    process = start_process(args, tmp_path / "log.txt")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{base}/mlflow/health"), STARTUP_TIMEOUT, "artifact-proxy", process)
        url = f"{base}/mlflow/api/2.0/mlflow-artifacts/artifacts/x/y.txt"
        assert httpx.put(url, content=b"prefixed").status_code == 200
        assert httpx.get(url).content == b"prefixed"
        assert (tmp_path / "a" / "x" / "y.txt").read_bytes() == b"prefixed"
        # Only under the prefix: the bare API path is not served.
        assert httpx.get(f"{base}/api/2.0/mlflow-artifacts/artifacts/x/y.txt").status_code == 404
        assert httpx.get(f"{base}/mlflow/api/3.0/mlflow/server-info").status_code == 200
    finally:
        stop_process(process)
