"""The CLI mirrors `mlflow server`'s flags; flags beat the environment, which beats defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app import __version__
from app.settings import Settings
from tests.servers import STARTUP_TIMEOUT, free_port, http_ok, start_process, stop_process, wait_until
from tests.utils.proxy import running_proxy


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


def test_data_lake_destinations_name_the_blob_endpoint_to_use() -> None:
    uri = "abfss://models@acct.dfs.core.windows.net/artifacts"
    result = run_cli("server", "--artifacts-destination", uri, "--port", str(free_port()))
    assert result.returncode != 0
    assert "wasbs://<container>@<account>.blob.core.windows.net" in result.stderr


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


def test_an_mlflow_server_command_line_runs_unchanged(tmp_path: Path) -> None:
    """`mlflow server`'s artifact and security flags work with MLflow's meaning; its tracking-only flags are noted
    in the log, one line each, and change nothing."""
    port, metrics = free_port(), tmp_path / "prometheus"
    args = [
        *("mlflow-cmd", "server", "--backend-store-uri", "sqlite:///mlflow.db", "--default-artifact-root"),
        *(
            "mlflow-artifacts:/",
            "--serve-artifacts",
            "--artifacts-only",
            "--artifacts-destination",
            str(tmp_path / "a"),
        ),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--static-prefix", "/mlflow"),
        *("--allowed-hosts", "127.0.0.1:*,artifacts.internal", "--cors-allowed-origins", "https://ui.example"),
        *("--x-frame-options", "DENY", "--expose-prometheus", str(metrics), "--gunicorn-opts", "--timeout 60"),
        *("--uvicorn-opts", "--timeout-keep-alive 30", "--secrets-cache-ttl", "60", "--enable-workspaces", "--dev"),
        *("--max-upload-size", "1KiB"),
    ][1:]
    process = start_process([sys.executable, "-m", "app", *args], tmp_path / "log.txt")
    try:
        base = f"http://127.0.0.1:{port}/mlflow"
        wait_until(http_ok(f"{base}/health"), STARTUP_TIMEOUT, "artifact-proxy", process)
        url = f"{base}/api/2.0/mlflow-artifacts/artifacts/x/y.txt"
        stored = httpx.put(url, content=b"small")
        assert stored.status_code == 200 and stored.headers["x-frame-options"] == "DENY"
        assert httpx.put(url, content=b"x" * 1025).status_code == 413  # 1KiB
        assert httpx.get(url, headers={"host": "evil.example"}).status_code == 403  # --allowed-hosts
        assert httpx.get(url, headers={"host": "artifacts.internal"}).status_code == 200
        refused = httpx.delete(url, headers={"origin": "https://other.example"})
        assert refused.status_code == 403
        assert httpx.delete(url, headers={"origin": "https://ui.example"}).status_code == 200
        assert any(name.endswith(".db") for name in os.listdir(metrics))  # --expose-prometheus: the samples' home
        log = (tmp_path / "log.txt").read_text()
        for flag in ("--backend-store-uri", "--default-artifact-root", "--gunicorn-opts", "--uvicorn-opts"):
            assert log.count(f"{flag} is ignored") == 1, flag
        assert "--secrets-cache-ttl is ignored" in log and "--enable-workspaces is ignored" in log
        assert "--dev: debug logging on" in log
    finally:
        stop_process(process)


def test_app_name_is_refused_rather_than_serving_without_its_protection() -> None:
    result = run_cli("server", "--app-name", "basic-auth", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--auth-config" in result.stderr and "basic-auth" in result.stderr


def test_security_middleware_can_be_disabled_and_the_frame_header_dropped(tmp_path: Path) -> None:
    args = ["--disable-security-middleware"]
    with running_proxy(str(tmp_path / "a"), tmp_path / "p", extra_args=args) as proxy:
        served = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info", headers={"host": "evil.example"})
        assert served.status_code == 200 and "x-frame-options" not in served.headers
        assert "security middleware disabled" in proxy.log()
    with running_proxy(str(tmp_path / "a"), tmp_path / "q", extra_args=["--x-frame-options", "none"]) as proxy:
        served = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info")
        assert "x-frame-options" not in served.headers and served.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(served.url, headers={"host": "evil.example"}).status_code == 403  # still checked
    result = run_cli("server", "--x-frame-options", "ALLOW-FROM x", "--port", str(free_port()))
    assert result.returncode != 0 and "must be SAMEORIGIN, DENY or NONE" in result.stderr


def test_sizes_take_units_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_PROXY_MAX_UPLOAD_SIZE", "5GiB")
    monkeypatch.setenv("ARTIFACT_PROXY_S3_PART_SIZE", "16MB")
    settings = Settings()
    assert (settings.max_upload_size, settings.s3.part_size) == (5 * 1024**3, 16 * 1000**2)
    result = run_cli("server", "--max-upload-size", "lots", "--port", str(free_port()))
    assert result.returncode != 0 and "ARTIFACT_PROXY_MAX_UPLOAD_SIZE" in result.stderr


def test_settings_prints_what_the_environment_resolves_to_with_secrets_hidden() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MLFLOW_S3_ENDPOINT_URL": "http://s3.internal:8333",
        "ARTIFACT_PROXY_SIGNING_SECRET": "a-very-long-secret-value",
        "AZURE_STORAGE_ACCESS_KEY": "azure-key-value",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app", "settings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert {"MLFLOW_S3_ENDPOINT_URL=http://s3.internal:8333", "ARTIFACT_PROXY_PORT=5000"} <= lines
    assert {"ARTIFACT_PROXY_SIGNING_SECRET=(set, hidden)", "AZURE_STORAGE_ACCESS_KEY=(set, hidden)"} <= lines
    assert "a-very-long-secret-value" not in result.stdout and "azure-key-value" not in result.stdout
