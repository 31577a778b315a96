"""S3 test servers: SeaweedFS (real SigV4 checks) and moto (fast, accepts any signature)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.servers import (
    STARTUP_TIMEOUT,
    StorageServer,
    find_binary,
    free_port,
    start_process,
    stop_process,
    wait_until,
)

ACCESS_KEY = "artifact-proxy-test"
SECRET_KEY = "artifact-proxy-test-secret"
REGION = "us-east-1"
BUCKET = "artifacts"
PREFIX = "some-prefix"
READY_PROBE = "readiness-probe"  # outside PREFIX, so no test ever lists it

# `weed mini` serves each component on an HTTP port and a gRPC port. Some internal clients ignore the explicit gRPC
# flags and dial HTTP port + 10000 (the admin worker does), so every gRPC port is exactly that, and both must be free.
SEAWEED_COMPONENTS = ("s3", "master", "volume", "filer", "admin")
GRPC_OFFSET = 10000


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _seaweed_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(SEAWEED_COMPONENTS):
        port = free_port()
        taken = set(ports.values()) | {p + GRPC_OFFSET for p in ports.values()}
        if port + GRPC_OFFSET > 65535 or {port, port + GRPC_OFFSET} & taken or not _port_is_free(port + GRPC_OFFSET):
            continue
        ports[SEAWEED_COMPONENTS[len(ports)]] = port
    return ports


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }


def boto3_client(endpoint: str, secret: str = SECRET_KEY) -> Any:
    """A sync client for setup and inspection (bucket creation, ListMultipartUploads)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _bucket_ready(endpoint: str) -> bool:
    """The bucket answers and data round-trips: SeaweedFS serves metadata before its volume server has registered
    with the master, and until then (notably after a restart) reads of existing objects fail with InternalError."""
    client = boto3_client(endpoint)
    client.put_object(Bucket=BUCKET, Key=READY_PROBE, Body=b"ok")
    return bool(client.get_object(Bucket=BUCKET, Key=READY_PROBE)["Body"].read() == b"ok")


def _seaweedfs_args(tmp_dir: Path) -> list[str]:
    data = tmp_dir / "seaweedfs-data"
    data.mkdir(parents=True, exist_ok=True)
    config = tmp_dir / "seaweedfs-s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = _seaweed_ports()
    port_flags = [f"-{name}.port={port} -{name}.port.grpc={port + GRPC_OFFSET}".split() for name, port in ports.items()]
    return [
        find_binary("weed"),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        *(flag for pair in port_flags for flag in pair),
    ]


def _s3_port(args: list[str]) -> int:
    return int(next(arg for arg in args if arg.startswith("-s3.port=")).split("=", 1)[1])


def start_seaweedfs(args: list[str], log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    endpoint = f"http://127.0.0.1:{_s3_port(args)}"
    # TMPDIR: glog writes its log files there (default /tmp).
    process = start_process(args, log_path, env={"TMPDIR": str(log_path.parent)})
    try:
        wait_until(lambda: _bucket_ready(endpoint), STARTUP_TIMEOUT, "SeaweedFS", process)
    except BaseException:
        stop_seaweedfs(process)
        raise
    return endpoint, process


def stop_seaweedfs(process: subprocess.Popen[bytes] | None) -> None:
    """Stop it, then remove the unix sockets it leaves in /tmp (their paths are fixed and named by our ports)."""
    stop_process(process)
    if process is None or not isinstance(process.args, list):
        return
    ports = [arg.rsplit("=", 1)[1] for arg in process.args if str(arg).startswith("-") and ".port" in str(arg)]
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def restart_seaweedfs(server: StorageServer, tmp_dir: Path) -> None:
    """Start a stopped SeaweedFS again with the same command line: same ports, same data directory."""
    assert server.process is not None
    stop_seaweedfs(server.process)
    args = server.process.args
    assert isinstance(args, list)
    _, server.process = start_seaweedfs(args, tmp_dir / "seaweedfs-restart.log")


@contextmanager
def seaweedfs_server(tmp_dir: Path) -> Iterator[StorageServer]:
    args = _seaweedfs_args(tmp_dir)
    endpoint, process = start_seaweedfs(args, tmp_dir / "seaweedfs.log")
    server = StorageServer("seaweedfs", f"s3://{BUCKET}/{PREFIX}", s3_env(endpoint), endpoint, process)
    try:
        yield server
    finally:
        stop_seaweedfs(server.process)


@contextmanager
def moto_server(tmp_dir: Path) -> Iterator[StorageServer]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = start_process([find_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)], tmp_dir / "moto.log")
    try:

        def create_bucket() -> bool:
            boto3_client(endpoint).create_bucket(Bucket=BUCKET)
            return True

        wait_until(create_bucket, STARTUP_TIMEOUT, "moto_server", process)
        yield StorageServer("moto", f"s3://{BUCKET}/{PREFIX}", s3_env(endpoint), endpoint, process)
    finally:
        stop_process(process)
