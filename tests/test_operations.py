"""What operators rely on: /metrics, /ready, JSON access logs and graceful shutdown."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.utils.proxy import running_proxy
from tests.utils.raw_http import read_head, read_response

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


def test_metrics_count_requests_and_bytes_across_workers(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", workers=2) as proxy:
        for i in range(6):
            httpx.put(proxy.artifact_url(f"m/{i}.bin"), content=b"x" * 1000).raise_for_status()
        httpx.get(proxy.artifact_url("m/missing.bin"))
        # A request is counted just after its response is sent, together with its access line: wait for the lines.
        for i in range(6):
            assert proxy.logged(f'"PUT {ARTIFACTS}/m/{i}.bin HTTP/1.1" 200')
        assert proxy.logged(f'"GET {ARTIFACTS}/m/missing.bin HTTP/1.1" 404')
        text = proxy.metrics()
        puts = [
            line
            for line in text.splitlines()
            if line.startswith("artifact_proxy_requests_total{") and 'method="PUT"' in line and 'status="200"' in line
        ]
        assert puts and sum(float(line.rsplit(" ", 1)[1]) for line in puts) == 6
        assert 'route="artifact"' in puts[0]
        received = [
            line
            for line in text.splitlines()
            if line.startswith('artifact_proxy_bytes_received_total{route="artifact"}')
        ]
        assert float(received[0].rsplit(" ", 1)[1]) == 6000
        assert 'artifact_proxy_requests_total{method="GET",route="artifact",status="404"}' in text
        assert "artifact_proxy_request_duration_seconds_bucket" in text


def test_ready_reports_an_unusable_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as proxy:
        assert httpx.get(f"{proxy.url}/ready").status_code == 200
        shutil.rmtree(root)
        response = httpx.get(f"{proxy.url}/ready")
        assert response.status_code == 503
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert response.headers["retry-after"]
        assert httpx.get(f"{proxy.url}/health").status_code == 200


def test_json_access_log(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--log-format", "json"]) as proxy:
        httpx.put(proxy.artifact_url("j/a.txt"), content=b"12345").raise_for_status()
        assert proxy.logged(f'"PUT {ARTIFACTS}/j/a.txt')
        lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
        access = [line for line in lines if line.get("path") == f"{ARTIFACTS}/j/a.txt"]
        assert access[0]["status"] == 200
        assert access[0]["bytes_in"] == 5
        assert access[0]["method"] == "PUT"
        assert access[0]["duration_ms"] >= 0


def test_text_access_log_has_bytes_and_duration(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy") as proxy:
        httpx.put(proxy.artifact_url("t/a.txt"), content=b"12345").raise_for_status()
        assert httpx.get(proxy.artifact_url("t/a.txt")).content == b"12345"
        assert proxy.logged(f'"GET {ARTIFACTS}/t/a.txt HTTP/1.1" 200 in=0 out=5 ')
        line = next(line for line in proxy.log().splitlines() if f'"PUT {ARTIFACTS}/t/a.txt' in line)
        assert re.search(r'" 200 in=5 out=2 [0-9]+[.][0-9]ms$', line), line  # out: the "{}" answer


def test_graceful_shutdown_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy", extra_args=["--shutdown-grace", "20"]) as proxy:
        host, port = urlsplit(proxy.url).netloc.split(":")
        body = os.urandom(4 * 1024 * 1024)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"PUT {ARTIFACTS}/g/in-flight.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: 1024 * 1024]
            )
            proxy.wait_in_flight(1)  # the upload is inside the app, a quarter of its body sent
            pid = int(proxy.log().split("Started server process [", 1)[1].split("]", 1)[0])
            os.kill(pid, signal.SIGTERM)
            # uvicorn says so once it has stopped accepting and is waiting for our connection.
            assert proxy.logged("Waiting for connections to close"), proxy.log()[-3000:]
            sock.sendall(body[1024 * 1024 :])
            reply = read_response(sock, "PUT")
        assert reply.status == 200, reply
        assert (root / "g" / "in-flight.bin").read_bytes() == body


def test_host_allow_list_and_cross_origin_refusal(tmp_path: Path) -> None:
    env = {
        "MLFLOW_SERVER_ALLOWED_HOSTS": "127.0.0.1:*,artifacts.example.com",
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": "https://ui.example.com",
    }
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        url = proxy.artifact_url("h.txt")
        assert httpx.put(url, content=b"ok").status_code == 200
        rebound = httpx.get(url, headers={"Host": "evil.example.net"})
        assert rebound.status_code == 403
        assert rebound.json()["error_code"] == "PERMISSION_DENIED"
        assert httpx.get(url, headers={"Host": "artifacts.example.com"}).status_code == 200
        foreign = httpx.put(url, content=b"x", headers={"Origin": "https://evil.example.net"})
        assert foreign.status_code == 403
        assert httpx.put(url, content=b"y", headers={"Origin": "https://ui.example.com"}).status_code == 200
        assert httpx.get(url, headers={"Origin": "https://evil.example.net"}).content == b"y"


def test_a_download_stops_reading_storage_when_the_client_goes_away(tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big.bin", "wb") as handle:
        handle.truncate(size)  # sparse: 200 MiB of zeros without writing them
    with running_proxy(str(root), tmp_path / "proxy") as proxy:
        host, port = urlsplit(proxy.url).netloc.split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"GET {ARTIFACTS}/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            response = read_head(sock)
            assert response.status == 200 and int(response.headers["content-length"]) == size
            assert len(response.read(1024 * 1024)) == 1024 * 1024  # a little of the body, then hang up
            response.close()
        # The download's bytes are counted when it ends, with its access line: wait for that line.
        assert proxy.logged(f'"GET {ARTIFACTS}/big.bin HTTP/1.1" 200')
        sent = [
            line
            for line in proxy.metrics().splitlines()
            if line.startswith('artifact_proxy_bytes_sent_total{route="artifact"}')
        ]
        assert 1024 * 1024 <= float(sent[0].rsplit(" ", 1)[1]) < size / 4
