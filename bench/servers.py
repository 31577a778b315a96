"""The servers under test and their command lines: artifact-proxy, MLflow, nginx, the raw sink, SeaweedFS.

Each factory picks a free port (through the transcript, so the report shows it as `$PORT`), writes whatever config
the server needs under the run's temp dir, and returns a Server that is not started yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.config import BENCH, MLFLOW_BIN, NGINX_BIN, PROXY_BIN, S3_KEYS, WEED_BIN
from bench.procs import Server
from bench.transcript import Transcript

# SeaweedFS `weed mini` listens on all of these besides the S3 port; each gets a free one so two runs never clash.
WEED_PORTS = (
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
)


def proxy_server(
    t: Transcript, destination: Path | str, workers: int | None, env: dict[str, str] | None = None
) -> Server:
    port = t.free_port()
    cmd = [
        str(PROXY_BIN),
        "server",
        "--artifacts-destination",
        str(destination),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    if workers:  # none: the server's own default, which the report names
        cmd += ["--workers", str(workers)]
    return Server("artifact-proxy", cmd, port, "/health", t.tmp, t, env or {})


def mlflow_server(t: Transcript, root: Path) -> Server:
    port = t.free_port()
    cwd = t.tmp / "mlflow-cwd"  # MLflow may write next to where it runs: keep that inside the temp dir
    cwd.mkdir(exist_ok=True)
    cmd = [
        str(MLFLOW_BIN),
        "server",
        "--artifacts-only",
        "--artifacts-destination",
        str(root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Server("mlflow", cmd, port, "/health", cwd, t)


def nginx_server(t: Transcript, root: Path) -> Server:
    port = t.free_port()
    ndir = t.tmp / "nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):  # nginx's temp dirs, under its prefix
        (ndir / sub).mkdir(parents=True, exist_ok=True)
    conf = (BENCH / "nginx.conf.template").read_text()
    conf = conf.replace("{{DIR}}", str(ndir)).replace("{{PORT}}", str(port)).replace("{{ROOT}}", str(root))
    (ndir / "nginx.conf").write_text(conf)
    return Server("nginx", [NGINX_BIN, "-p", str(ndir), "-c", str(ndir / "nginx.conf")], port, "/health", ndir, t)


def sink_server(t: Transcript, root: Path) -> Server:
    port = t.free_port()
    cmd = [sys.executable, str(BENCH / "sink.py"), "--port", str(port), "--dir", str(root)]
    return Server("raw sink", cmd, port, "/health", t.tmp, t)


def seaweedfs(t: Transcript) -> Server:
    """`weed mini` with one identity (the bench's S3 keys) and a `bench` bucket; the Server's port is S3."""
    wdir = t.tmp / "weed"
    wdir.mkdir()
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": S3_KEYS["AWS_ACCESS_KEY_ID"], "secretKey": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    (wdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
    s3_port = t.free_port()
    ports = {name: t.free_port() for name in WEED_PORTS}
    cmd = [
        str(WEED_BIN),
        "mini",
        f"-dir={wdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-s3.config={wdir / 's3.json'}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-bucket=bench",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    return Server("seaweedfs", cmd, s3_port, "/", wdir, t)
