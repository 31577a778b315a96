"""The local destination's part PUTs obey the rules of any upload body (issue 13, case 7), and self-signed URLs are
parsed strictly and audited (issue 13, case 9), against the real service over sockets.

- Each part PUT gets the size limit (`ARTIFACT_PROXY_MAX_UPLOAD_SIZE`), the idle timeout and the interrupted-body
  rules.
- Signed downloads and part PUTs write audit lines; malformed signatures are 403, not 500.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from app.storage.local_sweep import STAGING_DIR
from tests.servers import wait_until
from tests.utils.proxy import PATIENCE, Proxy, running_proxy
from tests.utils.raw_http import RawResponse, read_response


# HTTP helpers --------------------------------------------------------------------------------------------------------
def create(proxy: Proxy, path: str, num_parts: int) -> httpx.Response:
    directory, name = path.rsplit("/", 1)
    return httpx.post(f"{proxy.api}/mpu/create/{directory}", json={"path": name, "num_parts": num_parts}, timeout=60)


def put_parts(created: dict[str, Any], parts: list[bytes]) -> list[dict[str, Any]]:
    """PUT each part to its presigned URL; the part list a complete names."""
    done = []
    for credential, data in zip(created["credentials"], parts, strict=True):
        response = httpx.put(credential["url"], content=data, headers=credential["headers"], timeout=60)
        assert response.status_code in (200, 201), response.text
        done.append(
            {
                "part_number": credential["part_number"],
                "etag": response.headers.get("etag", ""),
                "url": credential["url"],
            }
        )
    return done


def complete(proxy: Proxy, path: str, created: dict[str, Any], parts: list[dict[str, Any]]) -> httpx.Response:
    directory, name = path.rsplit("/", 1)
    body = {"path": name, "upload_id": created.get("upload_id"), "parts": parts}
    return httpx.post(f"{proxy.api}/mpu/complete/{directory}", json=body, timeout=60)


def started(proxy: Proxy, path: str, num_parts: int = 1) -> dict[str, Any]:
    response = create(proxy, path, num_parts)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# the local destination's own part URLs ---------------------------------------------------------------------------
PART_LIMIT = 1000  # ARTIFACT_PROXY_MAX_UPLOAD_SIZE of the local proxy below
MULTIPART_ABOVE = 500  # its ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE


@dataclass
class Local:
    proxy: Proxy
    root: Path
    audit: Path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    base = tmp_path_factory.mktemp("policy-local")
    root, audit = base / "root", base / "audit.log"
    env = {
        "ARTIFACT_PROXY_MAX_UPLOAD_SIZE": str(PART_LIMIT),
        "ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE": str(MULTIPART_ABOVE),
        "ARTIFACT_PROXY_UPLOAD_IDLE_TIMEOUT": "1",
    }
    with running_proxy(str(root), base / "proxy", env=env, extra_args=["--audit-log", str(audit)]) as proxy:
        yield Local(proxy, root, audit)


def raw_put(url: str, headers: dict[str, str], body: bytes = b"") -> RawResponse:
    """PUT with exactly these headers and body bytes (Content-Length may promise more than is sent)."""
    parts = urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}\r\n".encode() + body)
        return read_response(sock, "PUT")


def staged_parts(local: Local, upload_id: str) -> list[str]:
    return sorted(name for name in os.listdir(local.root / STAGING_DIR / upload_id) if name != "target")


def wait_until_idle(proxy: Proxy) -> None:
    wait_until(lambda: proxy.requests_in_flight() == 0, PATIENCE, "the service to finish every request")


def test_a_part_announced_over_the_limit_is_413_before_its_body_is_read(local: Local) -> None:
    upload = started(local.proxy, "d/announced.bin")
    # 77 MB announced, not one byte sent: the answer can only come before the body is read.
    refused = raw_put(upload["credentials"][0]["url"], {"Content-Length": str(77_000_000)})
    assert refused.status == 413, refused
    assert json.loads(refused.body)["message"] == f"Upload of 77000000 bytes exceeds the limit of {PART_LIMIT} bytes"
    assert staged_parts(local, upload["upload_id"]) == []


def test_a_chunked_part_over_the_limit_is_413_and_not_stored(local: Local) -> None:
    upload = started(local.proxy, "d/chunked.bin")

    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, announcing no length
        yield b"x" * 600
        yield b"x" * 600

    refused = httpx.put(upload["credentials"][0]["url"], content=body(), timeout=60)
    assert refused.status_code == 413, refused.text
    assert refused.json()["message"] == f"Upload exceeds the limit of {PART_LIMIT} bytes"
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []
    assert [p for p in (local.root / STAGING_DIR / upload["upload_id"]).iterdir() if p.suffix == ".tmp"] == []


def test_a_stalled_part_is_abandoned_with_408(local: Local) -> None:
    upload = started(local.proxy, "d/stalled.bin")
    stalled = raw_put(upload["credentials"][0]["url"], {"Content-Length": "900"}, b"y" * 300)  # then silence
    assert stalled.status == 408, stalled
    assert json.loads(stalled.body)["error_code"] == "DEADLINE_EXCEEDED"
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []


def test_an_interrupted_part_is_not_stored_and_is_no_server_error(local: Local) -> None:
    upload = started(local.proxy, "d/interrupted.bin")
    parts = urlsplit(upload["credentials"][0]["url"])
    wait_until_idle(local.proxy)  # so the one in flight below is this one
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 900\r\n\r\n"
        sock.sendall(head.encode() + b"z" * 300)
        local.proxy.wait_in_flight(1)  # the part is inside the app, its body a third sent: hanging up interrupts it
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []
    assert "unhandled error" not in local.proxy.log()


# signed URLs: strict parsing and audit lines -----------------------------------------------------------------------
MALFORMED = {"error_code": "PERMISSION_DENIED", "message": "Missing or malformed URL signature"}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def signed_download_url(local: Local, path: str, content: bytes) -> str:
    assert httpx.put(local.proxy.artifact_url(path), content=content, timeout=60).status_code == 200
    url: str = httpx.get(f"{local.proxy.api}/presigned/{path}", timeout=60).json()["url"]
    return url


@pytest.mark.parametrize("expires", ["¹", "9" * 5000, "٣"])
def test_a_malformed_expiry_is_403(local: Local, expires: str) -> None:
    url = signed_download_url(local, "signed/expiry.txt", b"e")
    download = httpx.get(with_query(url, expires=expires), timeout=60)
    assert (download.status_code, download.json()) == (403, MALFORMED)
    upload = started(local.proxy, "signed/part.bin")
    part = httpx.put(with_query(upload["credentials"][0]["url"], expires=expires), content=b"p", timeout=60)
    assert (part.status_code, part.json()) == (403, MALFORMED)


def test_a_non_ascii_signature_is_403(local: Local) -> None:
    url = signed_download_url(local, "signed/sig.txt", b"s")
    download = httpx.get(with_query(url, sig="é" * 64), timeout=60)
    assert (download.status_code, download.json()) == (403, MALFORMED)


def test_a_forged_giant_part_number_is_403(local: Local) -> None:
    upload = started(local.proxy, "signed/giant.bin")
    parts = urlsplit(upload["credentials"][0]["url"])
    forged = urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/" + "9" * 5000))
    refused = httpx.put(forged, content=b"p", timeout=60)
    assert (refused.status_code, refused.json()["error_code"]) == (403, "PERMISSION_DENIED")


def audit_entries(local: Local, matches: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The audit lines that `matches`, once there is one: a line is written just after its response is sent."""
    deadline = time.monotonic() + PATIENCE
    while True:
        text = local.audit.read_text() if local.audit.exists() else ""
        found = [entry for entry in map(json.loads, text.splitlines()) if matches(entry)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_signed_downloads_are_audited(local: Local) -> None:
    url = signed_download_url(local, "audit/f.txt", b"audited")
    assert httpx.get(url, timeout=60).content == b"audited"
    assert httpx.get(with_query(url, sig="0" * 64), timeout=60).status_code == 403

    def signed(status: int) -> Callable[[dict[str, Any]], bool]:
        return lambda e: (e["path"], e["user"], e["status"]) == ("audit/f.txt", "signed-url", status)

    assert [(e["op"], e["bytes_out"]) for e in audit_entries(local, signed(200))] == [("read", len(b"audited"))]
    assert [e["op"] for e in audit_entries(local, signed(403))] == ["read"]


def test_part_puts_are_audited_with_their_upload(local: Local) -> None:
    upload = started(local.proxy, "audit/m.bin")
    put_parts(upload, [b"part one"])
    tampered = httpx.put(with_query(upload["credentials"][0]["url"], sig="0" * 64), content=b"x", timeout=60)
    assert tampered.status_code == 403
    written = audit_entries(local, lambda e: e.get("upload_id") == upload["upload_id"] and e["status"] == 200)
    assert [(e["op"], e["path"], e["user"], e["part_number"], e["bytes_in"]) for e in written] == [
        ("write", "audit/m.bin", "signed-url", 1, len(b"part one"))
    ]
    denied = audit_entries(local, lambda e: e.get("upload_id") == upload["upload_id"] and e["status"] == 403)
    assert [(e["op"], e["path"], e["user"]) for e in denied] == [("write", None, "signed-url")]
