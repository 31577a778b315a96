"""JSON bodies of the mpu routes are read only after authentication, and bounded in size, depth and time: an
unauthenticated client cannot make a worker read, hold or parse anything (issue 13, case 1)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.test_auth import PASSWORDS, auth_config
from tests.utils.proxy import Proxy, running_proxy
from tests.utils.raw_http import RawResponse, read_response

MiB = 1024 * 1024
ALICE = "Basic " + base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("bodies")
    env = {"ARTIFACT_PROXY_UPLOAD_IDLE_TIMEOUT": "1"}
    args = ["--auth-config", str(auth_config(base))]
    with running_proxy(str(base / "root"), base / "proxy", env=env, extra_args=args) as proxy:
        yield proxy


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post(proxy: Proxy, route: str, head: dict[str, str], body: bytes = b"") -> RawResponse:
    """POST with exactly these headers and body bytes (Content-Length may promise more than is sent)."""
    host, port = urlsplit(proxy.url).netloc.split(":")
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /api/2.0/mlflow-artifacts/{route} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode() + body
        )
        return read_response(sock, "POST")


@pytest.mark.parametrize("route", ["mpu/create/1", "mpu/complete/1", "mpu/abort/1"])
def test_without_credentials_the_body_is_never_read(secured: Proxy, route: str) -> None:
    before = rss_kib(secured.pid)
    # 77 MB announced, not one byte sent: the answer can only come before the body is read.
    refused = post(secured, route, {"Content-Type": "application/json", "Content-Length": str(77_000_000)})
    assert refused.status == 401
    assert json.loads(refused.body)["error_code"] == "UNAUTHENTICATED"
    assert rss_kib(secured.pid) - before < 10 * 1024


@pytest.mark.parametrize(("route", "size"), [("mpu/create/1", 65 * 1024), ("mpu/complete/1", 30 * MiB)])
def test_an_oversized_body_is_413_before_it_is_read(secured: Proxy, route: str, size: int) -> None:
    refused = post(secured, route, {"Authorization": ALICE, "Content-Length": str(size)})
    assert refused.status == 413
    assert "exceeds the limit" in json.loads(refused.body)["message"]


def test_deeply_nested_json_is_400(secured: Proxy) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    refused = post(secured, "mpu/complete/1", {"Authorization": ALICE, "Content-Length": str(len(body))}, body)
    assert refused.status == 400
    assert json.loads(refused.body)["error_code"] == "INVALID_PARAMETER_VALUE"


def test_a_stalled_body_is_abandoned_with_408(secured: Proxy) -> None:
    stalled = post(secured, "mpu/create/1", {"Authorization": ALICE, "Content-Length": "1000"}, b'{"path": ')
    assert stalled.status == 408
    assert json.loads(stalled.body)["error_code"] == "DEADLINE_EXCEEDED"


def test_a_valid_body_still_works_and_a_large_complete_is_parsed(secured: Proxy) -> None:
    created = post(secured, "mpu/create/1", {"Authorization": ALICE, "Content-Length": "0"})
    assert created.status == 400  # no body: MLflow's message for the missing path
    parts = [
        {"part_number": n, "etag": f'"{n:032x}"', "url": "https://example.invalid/" + "u" * 900}
        for n in range(1, 10_001)
    ]
    body = json.dumps({"path": "m.bin", "upload_id": "0" * 32, "parts": parts}).encode()
    assert len(body) > 5 * MiB
    answered = post(secured, "mpu/complete/1", {"Authorization": ALICE, "Content-Length": str(len(body))}, body)
    # Parsed and validated in full (10,000 parts, megabytes): the answer comes from the store, which knows no such
    # upload, not from a body limit.
    assert answered.status == 404, answered.body
    assert b"multipart upload" in answered.body


def test_a_lone_surrogate_in_the_body_path_is_400(secured: Proxy) -> None:
    # Valid JSON text, but "\udc80" alone is no character: writing the upload's record failed with a 500.
    body = b'{"path": "\\udc80.bin", "num_parts": 1}'
    refused = post(secured, "mpu/create/1", {"Authorization": ALICE, "Content-Length": str(len(body))}, body)
    assert refused.status == 400, refused.body
    assert json.loads(refused.body)["error_code"] == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    "body",
    [
        b'{"path": "m.bin", "upload_id": "\\udc80", "parts": [{"part_number": 1, "etag": "e"}]}',
        b'{"path": "m.bin", "upload_id": "u", "parts": [{"part_number": 1, "etag": "\\ud800"}]}',
    ],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_400(secured: Proxy, body: bytes) -> None:
    # Upload ids and ETags go to the store's client, which cannot encode them either.
    refused = post(secured, "mpu/complete/1", {"Authorization": ALICE, "Content-Length": str(len(body))}, body)
    assert refused.status == 400, refused.body
    assert "lone surrogate" in json.loads(refused.body)["message"]


def test_surrogate_pairs_in_a_body_are_characters(secured: Proxy) -> None:
    body = b'{"path": "\\ud83d\\ude00.bin", "num_parts": 1}'
    created = post(secured, "mpu/create/1", {"Authorization": ALICE, "Content-Length": str(len(body))}, body)
    assert created.status == 200, created.body
