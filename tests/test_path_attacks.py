"""The path-attack matrix (wire spec §6.2, §6.4) over every verb, against the real service on a local destination.

Requests go out through `http.client`, which sends the path bytes exactly as written (httpx and requests normalise
dot segments). Each case asserts the status and that nothing outside the destination was read, created or removed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.utils.proxy import Proxy, running_proxy

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
API = "/api/2.0/mlflow-artifacts"

ATTACKS = [
    "../secret.txt",
    "safe/../../secret.txt",
    "..",
    "safe/..",
    "%2e%2e/secret.txt",
    "%2E%2e/secret.txt",
    "..%2fsecret.txt",
    "%252e%252e%252fsecret.txt",
    "%25252e%25252e/secret.txt",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "file:///etc/passwd",
    "file:safe/ok.txt",
    "s3://other-bucket/key",
    "C:%5cwin.ini",
    "C:/x",
    "%5c%5cserver%5cshare",
    "..%5csecret.txt",
    "ok.txt%23frag",
    "ok.txt%23/../../secret.txt",
    "ok%00.txt",
    "ok%0a.txt",
    "a%0d%0aSet-Cookie:x.txt",
    "%c0%ae%c0%ae/secret.txt",
    ".artifact.uploading.x",
    "safe/.artifact.uploading.abc",
    "x" * 300,
    "%" + "25" * 12 + "2e" + "%" + "25" * 12 + "2e/x",  # nested past the 10-round decode limit
    "up/..%2f..%2fsecret.txt",
    "link/secret.txt",
    "link",
    "link/new.txt",
    "inner-link/secret.txt",
    "/".join(["abcdefghijklmnopqrst"] * 60),  # 1,259 bytes: past every store's key limit
    "loop/x.txt",  # a symlink loop
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    base = tmp_path_factory.mktemp("attacks")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    (root / "up").mkdir(parents=True)
    (root / "safe").mkdir()
    (root / "safe" / "ok.txt").write_bytes(b"ok")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "safe" / "inner-link").symlink_to(outside, target_is_directory=True)
    (root / "inner-link").symlink_to(root / "safe" / "inner-link", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    with running_proxy(str(root), base / "proxy") as proxy:
        yield proxy, base


def snapshot(directory: Path) -> dict[str, bytes]:
    result = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "root" not in path.relative_to(directory).parts[:1] and "proxy" not in path.parts:
            result[str(path.relative_to(directory))] = path.read_bytes()
    return result


def send(proxy: Proxy, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
    netloc = urlsplit(proxy.url).netloc
    connection = http.client.HTTPConnection(netloc, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


VERBS = {
    "GET": lambda p: ("GET", f"{API}/artifacts/{p}", None),
    "HEAD": lambda p: ("HEAD", f"{API}/artifacts/{p}", None),
    "PUT": lambda p: ("PUT", f"{API}/artifacts/{p}", b"overwritten"),
    "DELETE": lambda p: ("DELETE", f"{API}/artifacts/{p}", None),
    "LIST": lambda p: ("GET", f"{API}/artifacts?path={p}", None),
    "MPU-CREATE": lambda p: ("POST", f"{API}/mpu/create/{p}", json.dumps({"path": "f.bin", "num_parts": 1}).encode()),
    "MPU-COMPLETE": lambda p: (
        "POST",
        f"{API}/mpu/complete/{p}",
        json.dumps({"path": "f.bin", "upload_id": "u", "parts": [{"part_number": 1, "etag": "e"}]}).encode(),
    ),
    "MPU-ABORT": lambda p: ("POST", f"{API}/mpu/abort/{p}", json.dumps({"path": "f.bin", "upload_id": "u"}).encode()),
    "PRESIGNED": lambda p: ("GET", f"{API}/presigned/{p}", None),
}


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("payload", ATTACKS)
def test_attack_is_refused_and_nothing_outside_changes(world: tuple[Proxy, Path], verb: str, payload: str) -> None:
    proxy, base = world
    if verb == "LIST" and payload.startswith("/") and not payload.startswith("//"):
        payload = "%2F" + payload[1:]
    before = snapshot(base)
    method, target, body = VERBS[verb](payload)
    status, content = send(proxy, method, target, body)
    assert status == 400, (status, content)
    if content and status == 400:
        assert json.loads(content)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert SECRET not in content
    assert snapshot(base) == before
    assert (base / "outside" / "secret.txt").read_bytes() == SECRET


@pytest.mark.parametrize(
    "payload", ["..;/secret.txt", "..\u2215secret.txt", "\uff0e\uff0e\uff0fsecret.txt", "ok%3Fx=1.txt"]
)
def test_lookalikes_stay_literal_names_inside_the_root(world: tuple[Proxy, Path], payload: str) -> None:
    proxy, base = world
    before = snapshot(base)
    target = f"{API}/artifacts/up/{quote(payload, safe='/;=%')}"
    status, _ = send(proxy, "PUT", target, b"literal")
    assert status == 200
    assert snapshot(base) == before
    assert any(p.read_bytes() == b"literal" for p in (base / "root" / "up").rglob("*") if p.is_file())
    for created in (base / "root" / "up").iterdir():
        shutil.rmtree(created) if created.is_dir() else created.unlink()


def test_symlink_inside_the_root_is_followed(world: tuple[Proxy, Path]) -> None:
    proxy, base = world
    (base / "root" / "alias").symlink_to(base / "root" / "safe", target_is_directory=True)
    try:
        status, content = send(proxy, "GET", f"{API}/artifacts/alias/ok.txt")
        assert (status, content) == (200, b"ok")
    finally:
        (base / "root" / "alias").unlink()


def test_listing_hides_links_that_leave_the_root(world: tuple[Proxy, Path]) -> None:
    proxy, _ = world
    status, content = send(proxy, "GET", f"{API}/artifacts?path=")
    assert status == 200
    names = {entry["path"] for entry in json.loads(content)["files"]}
    assert names == {"safe", "up"}


def test_header_injection_in_names_is_impossible(world: tuple[Proxy, Path]) -> None:
    proxy, base = world
    name = 'a";x=1;b.txt'
    (base / "root" / "up" / name).write_bytes(b"q")
    try:
        connection = http.client.HTTPConnection(urlsplit(proxy.url).netloc, timeout=30)
        connection.request("GET", f"{API}/artifacts/up/a%22%3Bx%3D1%3Bb.txt")
        response = connection.getresponse()
        disposition = response.getheader("content-disposition")
        assert response.status == 200
        assert disposition.startswith("attachment; filename=")
        assert '"' not in disposition.split("filename*=")[0].removeprefix("attachment; filename=")
        assert "filename*=UTF-8''a%22%3Bx%3D1%3Bb.txt" in disposition
    finally:
        os.unlink(base / "root" / "up" / name)
