"""The deployment topology, end to end: SeaweedFS (S3) <- artifact-proxy <- MLflow tracking server <- MLflow client.

The tracking server runs with `--no-serve-artifacts --default-artifact-root http://PROXY/api/2.0/mlflow-artifacts/
artifacts/experiments`, so every experiment it creates hands clients an artifact URI on artifact-proxy. The client is
the real, full `mlflow` package (pyfunc needs numpy/pandas/cloudpickle; the `mlflow==` pin of constraints.txt, as
is the tracking server), run from its own venv `.venv-mlflow` (`bash deploy/setup-mlflow-venv.sh` creates it; a
missing venv fails these tests, it never skips them). The client script is deploy/mlflow_client_demo.py, the same one
the docker-compose `client` service runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import StorageServer, free_port, http_ok, start_process, stop_process, wait_until
from tests.servers.s3 import boto3_client, seaweedfs_server
from tests.utils.mlflow_clients import WORKER_VERSION
from tests.utils.proxy import Proxy, running_proxy

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_VENV = Path(os.environ.get("MLFLOW_VENV", ROOT / ".venv-mlflow"))
DEMO = ROOT / "deploy" / "mlflow_client_demo.py"
ARTIFACT_API = "/api/2.0/mlflow-artifacts/artifacts"
# MLflow 3 sends usage telemetry to the internet by default; nothing here may leave the machine.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Its job runner (7 huey consumer processes) doubles start-up and shutdown time; nothing here uses server jobs.
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# deploy/stack.sh gives each of its 5 processes 20 s to stop before it kills it: wait longer than all of that.
STACK_STOP_TIMEOUT = 5 * 20 + 40


def mlflow_bin(name: str) -> str:
    path = MLFLOW_VENV / "bin" / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the full MLflow lives in its own venv; create it with "
            "`bash deploy/setup-mlflow-venv.sh` (`make test` does)",
            pytrace=False,
        )
    return str(path)


@dataclass
class Stack:
    storage: StorageServer
    proxy: Proxy
    tracking_url: str
    artifact_root: str
    tmp: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mlflow = mlflow_bin("mlflow")
    tmp = tmp_path_factory.mktemp("stack")
    with (
        seaweedfs_server(tmp / "s3") as storage,
        running_proxy(storage.destination, tmp / "proxy", env=storage.env, workers=2) as proxy,
    ):
        port = free_port()
        artifact_root = f"{proxy.url}{ARTIFACT_API}/experiments"
        args = [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--no-serve-artifacts",
            "--default-artifact-root",
            artifact_root,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        process = start_process(args, tmp / "mlflow-server.log", env={**NO_TELEMETRY, **NO_JOBS}, cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(http_ok(f"{url}/health"), 90, "mlflow tracking server", process)
            yield Stack(storage, proxy, url, artifact_root, tmp)
        finally:
            stop_process(process)


@pytest.fixture(scope="module")
def demo(stack: Stack) -> dict[str, Any]:
    """Run the real MLflow client against the tracking server, once; its JSON summary."""
    env = {
        **os.environ,
        **NO_TELEMETRY,
        "MLFLOW_TRACKING_URI": stack.tracking_url,
        "EXPECTED_ARTIFACT_ROOT": stack.artifact_root,
        "PYTHONPATH": "",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }  # a 5xx fails at once instead of minutes of back-off
    result = subprocess.run(
        [mlflow_bin("python"), str(DEMO)], env=env, cwd=stack.tmp, capture_output=True, text=True, timeout=240
    )
    if result.returncode != 0:
        server_log = (stack.tmp / "mlflow-server.log").read_text(errors="replace")[-4000:]
        pytest.fail(
            f"MLflow client failed ({result.returncode}):\n{result.stderr[-6000:]}\n"
            f"--- proxy log ---\n{stack.proxy.log()[-3000:]}\n--- tracking server log ---\n{server_log}"
        )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def proxy_names(stack: Stack, path: str) -> set[str]:
    response = httpx.get(f"{stack.proxy.api}/artifacts", params={"path": path}, timeout=30)
    assert response.status_code == 200, response.text
    return {f["path"] for f in response.json().get("files", [])}


def bucket_keys(stack: Stack, path: str) -> set[str]:
    """Keys under `path` (relative to the destination), read from the S3 server itself, not through the proxy."""
    parts = urlsplit(stack.storage.destination)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    base = f"{prefix}/{path}/" if prefix else f"{path}/"
    client = boto3_client(stack.storage.endpoint)
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        keys.update(obj["Key"][len(base) :] for obj in page.get("Contents", []))
    return keys


def test_the_stack_runs_the_pinned_mlflow(demo: dict[str, Any], stack: Stack) -> None:
    assert demo["mlflow_version"] == WORKER_VERSION
    assert httpx.get(f"{stack.tracking_url}/version", timeout=30).text == WORKER_VERSION


def test_tracking_server_hands_out_artifact_proxy_uris(demo: dict[str, Any], stack: Stack) -> None:
    exp = demo["experiment_id"]
    assert demo["experiment_location"] == f"{stack.artifact_root}/{exp}"
    assert demo["run_artifact_uri"] == f"{stack.artifact_root}/{exp}/{demo['run_id']}/artifacts"
    assert demo["model_artifact_location"].startswith(f"{stack.artifact_root}/{exp}/models/")


def test_run_artifacts_are_in_the_bucket_and_listed_by_the_proxy(demo: dict[str, Any], stack: Stack) -> None:
    run_dir = f"experiments/{demo['experiment_id']}/{demo['run_id']}/artifacts"
    assert proxy_names(stack, run_dir) == {"config", "data", "hello.txt"}
    assert proxy_names(stack, f"{run_dir}/data") == {"blob.bin"}
    assert {"hello.txt", "data/blob.bin", "config/settings.json"} <= bucket_keys(stack, run_dir)
    blob = httpx.head(stack.proxy.artifact_url(f"{run_dir}/data/blob.bin"), timeout=30)
    assert blob.status_code == 200 and int(blob.headers["content-length"]) == 3 * 1024 * 1024 + 17


def test_logged_model_files_are_in_the_bucket(demo: dict[str, Any], stack: Stack) -> None:
    location = demo["model_artifact_location"]
    model_dir = location.split(f"{ARTIFACT_API}/", 1)[1]
    assert {"MLmodel", "python_model.pkl", "requirements.txt"} <= proxy_names(stack, model_dir)
    assert {"MLmodel", "python_model.pkl"} <= bucket_keys(stack, model_dir)
    mlmodel = httpx.get(stack.proxy.artifact_url(f"{model_dir}/MLmodel"), timeout=30)
    assert mlmodel.status_code == 200 and "python_function" in mlmodel.text


def test_transfers_went_through_the_proxy(demo: dict[str, Any], stack: Stack) -> None:
    run_dir = f"experiments/{demo['experiment_id']}/{demo['run_id']}/artifacts"
    assert stack.proxy.logged(f'"PUT {ARTIFACT_API}/{run_dir}/hello.txt HTTP/1.1" 200')
    # From MLflow 3.18 on, clients ask server-info for http(s) roots too: where the service offers presigned
    # downloads, a download is signed by the proxy and its bytes come straight from the store.
    info = httpx.get(f"{stack.proxy.url}/api/3.0/mlflow/server-info", timeout=30).json()
    route = "presigned" if info["multipart_downloads_enabled"] else "artifacts"
    assert stack.proxy.logged(f'"GET /api/2.0/mlflow-artifacts/{route}/{run_dir}/data/blob.bin HTTP/1.1" 200')


def test_tracking_server_ui_endpoints_read_through_the_proxy(demo: dict[str, Any], stack: Stack) -> None:
    run_id = demo["run_id"]
    listed = httpx.get(f"{stack.tracking_url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id}, timeout=30)
    assert listed.status_code == 200, listed.text
    assert {f["path"] for f in listed.json()["files"]} == {"config", "data", "hello.txt"}
    got = httpx.get(f"{stack.tracking_url}/get-artifact", params={"path": "hello.txt", "run_uuid": run_id}, timeout=30)
    assert got.status_code == 200 and got.text == "hello from the MLflow client\n"


def test_setup_script_is_idempotent() -> None:
    # `make test` runs it every time: with the venv in place it only checks, quickly, and changes nothing.
    mlflow_bin("mlflow")
    stamp = MLFLOW_VENV / ".artifact-proxy-installed"
    before = stamp.stat().st_mtime
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "setup-mlflow-venv.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MLFLOW_VENV": str(MLFLOW_VENV)},
    )
    assert result.returncode == 0, result.stderr
    assert "setup-mlflow-venv: ok" in result.stdout and "installing" not in result.stdout
    assert stamp.stat().st_mtime == before


def free_port_pair(taken: set[int]) -> int:
    """A free port whose +10000 neighbour (SeaweedFS' gRPC port for it) is free too."""
    while True:
        port = free_port()
        if port < 55000 and port not in taken and port + 10000 not in taken and port_is_free(port + 10000):
            taken.update((port, port + 10000))
            return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_stack_script_serves_the_topology_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """`make stack` (`bash deploy/stack.sh`): everything comes up wired together behind the nginx front, on one origin
    (the UI, the tracking API and the artifact API), and Ctrl-C stops every process."""
    mlflow_bin("mlflow")  # fail here rather than let the script install MLflow (minutes) in the middle of a test
    taken: set[int] = set()
    ports = {
        name: free_port_pair(taken)
        for name in (
            "FRONT_PORT",
            "TRACKING_PORT",
            "PROXY_PORT",
            "S3_PORT",
            "PG_PORT",
            "WEED_MASTER_PORT",
            "WEED_VOLUME_PORT",
            "WEED_FILER_PORT",
            "WEED_ADMIN_PORT",
        )
    }
    # Not under pytest's 0700 tmp dirs: PostgreSQL runs as the `postgres` user when the tests run as root.
    stack_dir = Path(tempfile.mkdtemp(prefix="artifact-proxy-stack-test-"))
    stack_dir.chmod(0o755)
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "STACK_DIR": str(stack_dir),
        "MLFLOW_VENV": str(MLFLOW_VENV),
        "PROXY_WORKERS": "1",
    }
    log_path = tmp_path / "stack.log"  # outside STACK_DIR, which --fresh empties
    front = f"http://127.0.0.1:{ports['FRONT_PORT']}"  # the one origin clients and browsers use
    root = f"{front}{ARTIFACT_API}/experiments"
    with open(log_path, "wb") as log:
        # SIGINT as a terminal's Ctrl-C delivers it; a default handler, whatever the test runner inherited.
        process = subprocess.Popen(
            ["bash", str(ROOT / "deploy" / "stack.sh"), "--fresh"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_until(lambda: b"Ctrl-C stops everything" in log_path.read_bytes(), 180, "deploy/stack.sh", process)
        with httpx.Client(timeout=30) as http:
            ui = http.get(f"{front}/")
            assert ui.status_code == 200 and "<title>MLflow</title>" in ui.text  # the tracking server's UI
            api = f"{front}/api/2.0/mlflow"
            exp = http.post(f"{api}/experiments/create", json={"name": "stack-smoke"}).json()["experiment_id"]
            location = http.get(f"{api}/experiments/get", params={"experiment_id": exp}).json()["experiment"]
            assert location["artifact_location"] == f"{root}/{exp}"
            run = http.post(f"{api}/runs/create", json={"experiment_id": exp}).json()["run"]["info"]
            assert http.put(f"{run['artifact_uri']}/hello.txt", content=b"hi").status_code == 200
            listed = http.get(f"{api}/artifacts/list", params={"run_id": run["run_id"]}).json()
            assert [f["path"] for f in listed["files"]] == ["hello.txt"]
            # The browser's way (MLflow 3.18's UI): the artifact API under ajax-api, on the UI's own origin.
            path = f"experiments/{exp}/{run['run_id']}/artifacts/hello.txt"
            assert http.get(f"{front}/ajax-api/2.0/mlflow-artifacts/artifacts/{path}").content == b"hi"
        # Both prefixes reached artifact-proxy through the front, which logged them too.
        proxy_log, front_log = stack_dir / "logs" / "artifact-proxy.log", stack_dir / "front" / "access.log"
        put, get = f'"PUT {ARTIFACT_API}/{path} HTTP/1.1" 200', f'"GET /ajax-api/2.0/mlflow-artifacts/artifacts/{path}'
        wait_until(lambda: put in proxy_log.read_text() and get in proxy_log.read_text(), 30, "the proxy's log")
        wait_until(lambda: put in front_log.read_text(), 30, "the front's access log")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STACK_STOP_TIMEOUT) == 130
        output = log_path.read_text(errors="replace")
        assert "stack: stopped" in output
        assert all(port_is_free(port) for port in ports.values()), "a process of the stack is still listening"
    except BaseException:
        print(log_path.read_text(errors="replace")[-5000:])
        for path in sorted((stack_dir / "logs").glob("*.log")):
            print(f"--- {path.name} ---\n{path.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=STACK_STOP_TIMEOUT)
        shutil.rmtree(stack_dir, ignore_errors=True)
