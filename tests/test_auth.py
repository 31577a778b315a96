"""Access control, audit and integrity (issue #8) against the real service with auth on."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.auth import hash_token
from app.passwords import hash_password
from tests.utils.mlflow_clients import ArtifactClient
from tests.utils.proxy import PATIENCE, Proxy, held_body, running_proxy

PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}
CI_TOKEN = "ci-token-0123456789"


def auth_config(tmp_path: Path, extra_rules: str = "") -> Path:
    config = tmp_path / "auth.toml"
    config.write_text(f"""
[users.alice]
password = "{hash_password(PASSWORDS["alice"], iterations=1000)}"
groups = ["ml"]

[users.bob]
password = "{hash_password(PASSWORDS["bob"], iterations=1000)}"

[users.ci]
tokens = ["{hash_token(CI_TOKEN)}"]
groups = ["ml"]

[trusted_headers]
user = "X-Forwarded-User"
groups = "X-Forwarded-Groups"
any_user = true
accept_groups = ["ml"]

[[rules]]
prefix = ""
read = ["*"]

[[rules]]
prefix = "1"
read = ["*"]
write = ["group:ml"]
delete = ["alice"]

[[rules]]
prefix = "2"
read = ["bob"]
{extra_rules}
""")
    return config


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path, Path]]:
    base = tmp_path_factory.mktemp("auth")
    root, audit = base / "root", base / "audit.log"
    (root / "1").mkdir(parents=True)
    (root / "1" / "seed.txt").write_text("seed")
    (root / "2").mkdir()
    (root / "2" / "private.txt").write_text("private")
    args = ["--auth-config", str(auth_config(base)), "--audit-log", str(audit)]
    # The tests play the ingress from 127.0.0.1, and send many wrong passwords on purpose.
    env = {"ARTIFACT_PROXY_TRUSTED_PROXIES": "127.0.0.1", "ARTIFACT_PROXY_LOGIN_FAILURES": "1000"}
    with running_proxy(str(root), base / "proxy", env=env, extra_args=args) as proxy:
        yield proxy, root, audit


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


WHO = {
    "anonymous": {},
    "alice": basic("alice"),
    "bob": basic("bob"),
    "ci": {"Authorization": f"Bearer {CI_TOKEN}"},
    "wrong-password": {"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()},
    "wrong-token": {"Authorization": "Bearer nope"},
}


def call(proxy: Proxy, verb: str, path: str, headers: dict[str, str]) -> httpx.Response:
    api = proxy.api
    body_json = {"path": "f.bin", "num_parts": 1, "upload_id": "0" * 32, "parts": [{"part_number": 1, "etag": ""}]}
    requests = {
        "GET": lambda: httpx.get(f"{api}/artifacts/{path}/seed.txt", headers=headers),
        "HEAD": lambda: httpx.head(f"{api}/artifacts/{path}/seed.txt", headers=headers),
        "LIST": lambda: httpx.get(f"{api}/artifacts", params={"path": path}, headers=headers),
        "PRESIGNED": lambda: httpx.get(f"{api}/presigned/{path}/seed.txt", headers=headers),
        "PUT": lambda: httpx.put(f"{api}/artifacts/{path}/new.txt", content=b"n", headers=headers),
        "MPU-CREATE": lambda: httpx.post(f"{api}/mpu/create/{path}", json=body_json, headers=headers),
        "MPU-ABORT": lambda: httpx.post(f"{api}/mpu/abort/{path}", json=body_json, headers=headers),
        "DELETE": lambda: httpx.delete(f"{api}/artifacts/{path}/absent.txt", headers=headers),
    }
    return requests[verb]()


# (who, verb, path) -> expected status; every verb on experiment 1, and reads on experiment 2.
MATRIX = {
    **{
        (who, verb, "1"): 401
        for who in ("anonymous", "wrong-password", "wrong-token")
        for verb in ("GET", "HEAD", "LIST", "PRESIGNED", "PUT", "MPU-CREATE", "MPU-ABORT", "DELETE")
    },
    **{
        ("alice", verb, "1"): 200
        for verb in ("GET", "HEAD", "LIST", "PRESIGNED", "PUT", "MPU-CREATE", "MPU-ABORT", "DELETE")
    },
    **{("bob", verb, "1"): 200 for verb in ("GET", "HEAD", "LIST", "PRESIGNED")},
    **{("bob", verb, "1"): 403 for verb in ("PUT", "MPU-CREATE", "MPU-ABORT", "DELETE")},
    **{("ci", verb, "1"): 200 for verb in ("GET", "LIST", "PUT", "MPU-CREATE", "MPU-ABORT")},
    ("ci", "DELETE", "1"): 403,
    ("alice", "LIST", "2"): 403,
    ("alice", "GET", "2"): 403,
    ("bob", "LIST", "2"): 200,
    ("ci", "PUT", "2"): 403,
}


@pytest.mark.parametrize(("who", "verb", "path"), list(MATRIX))
def test_permission_matrix(secured: tuple[Proxy, Path, Path], who: str, verb: str, path: str) -> None:
    proxy, _, _ = secured
    response = call(proxy, verb, path, WHO[who])
    expected = MATRIX[(who, verb, path)]
    assert response.status_code == expected, response.text
    if expected in (401, 403) and verb != "HEAD":
        error = response.json()
        assert error["error_code"] == ("UNAUTHENTICATED" if expected == 401 else "PERMISSION_DENIED")
    if expected == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("spelling", ["%2531/evil.txt", "./1/evil.txt", "1//evil.txt", "%31/evil.txt", "1/./evil.txt"])
def test_encodings_cannot_dodge_the_rules(secured: tuple[Proxy, Path, Path], spelling: str) -> None:
    proxy, root, _ = secured
    response = httpx.put(f"{proxy.api}/artifacts/{spelling}", content=b"evil", headers=WHO["bob"])
    assert response.status_code == 403
    assert not (root / "1" / "evil.txt").exists()


def test_trusted_identity_headers(secured: tuple[Proxy, Path, Path]) -> None:
    proxy, root, _ = secured
    headers = {"X-Forwarded-User": "oidc-user", "X-Forwarded-Groups": "ml, other"}
    assert httpx.put(f"{proxy.api}/artifacts/1/oidc.txt", content=b"o", headers=headers).status_code == 200
    assert (root / "1" / "oidc.txt").read_bytes() == b"o"


def test_audit_lines_for_allowed_and_denied_calls(secured: tuple[Proxy, Path, Path]) -> None:
    proxy, _, audit = secured
    httpx.put(f"{proxy.api}/artifacts/1/audited.txt", content=b"12345", headers=WHO["alice"]).raise_for_status()
    httpx.delete(f"{proxy.api}/artifacts/1/audited.txt", headers=WHO["bob"])
    # A request's audit line is written just after its response, before its access line: wait for both access lines.
    assert proxy.logged('"PUT /api/2.0/mlflow-artifacts/artifacts/1/audited.txt HTTP/1.1" 200')
    assert proxy.logged('"DELETE /api/2.0/mlflow-artifacts/artifacts/1/audited.txt HTTP/1.1" 403')
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    allowed = [entry for entry in lines if entry["path"] == "1/audited.txt" and entry["op"] == "write"]
    denied = [entry for entry in lines if entry["path"] == "1/audited.txt" and entry["op"] == "delete"]
    assert allowed[-1]["user"] == "alice" and allowed[-1]["status"] == 200 and allowed[-1]["bytes_in"] == 5
    assert denied[-1]["user"] == "bob" and denied[-1]["status"] == 403
    assert {"client", "duration_ms", "bytes_out"} <= set(allowed[-1])


def test_rules_reload_without_restart(tmp_path: Path) -> None:
    config = auth_config(tmp_path)
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--auth-config", str(config)]) as proxy:
        url = f"{proxy.api}/artifacts/3/x.txt"
        assert httpx.put(url, content=b"x", headers=WHO["bob"]).status_code == 403
        config.write_text(config.read_text() + '\n[[rules]]\nprefix = "3"\nwrite = ["bob"]\n')
        os.utime(config, (os.path.getmtime(config) + 5,) * 2)
        # The service looks at the file at most once a second: poll, with a deadline that is only a safety net.
        deadline = time.monotonic() + PATIENCE
        while httpx.put(url, content=b"x", headers=WHO["bob"]).status_code != 200:
            assert time.monotonic() < deadline, "the new rule was not picked up"
            time.sleep(0.1)


def test_mlflow_client_with_its_usual_credentials(
    mlflow_client: ArtifactClient, secured: tuple[Proxy, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, _, _ = secured
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    source = tmp_path / "model.txt"
    source.write_text("weights")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["alice"])
    repo = mlflow_client.http_repo(proxy.artifact_url("1/run/artifacts"))
    repo.log_artifact(str(source))
    assert [f.path for f in repo.list_artifacts()] == ["model.txt"]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", CI_TOKEN)
    (tmp_path / "dl").mkdir()
    local = mlflow_client.http_repo(proxy.artifact_url("1/run/artifacts")).download_artifacts(
        "model.txt", str(tmp_path / "dl")
    )
    assert Path(local).read_text() == "weights"


# Integrity ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("integrity")
    with running_proxy(str(base / "root"), base / "proxy") as proxy:
        yield proxy


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024 + 5])
def test_digest_is_returned_on_upload_download_and_head(plain: Proxy, size: int) -> None:
    data = os.urandom(size)
    expected = f"sha-256=:{b64(hashlib.sha256(data).digest())}:"
    put = httpx.put(plain.artifact_url(f"d/{size}.bin"), content=data)
    assert put.headers["repr-digest"] == expected
    assert httpx.get(plain.artifact_url(f"d/{size}.bin")).headers["repr-digest"] == expected
    assert httpx.head(plain.artifact_url(f"d/{size}.bin")).headers["repr-digest"] == expected


@pytest.mark.parametrize("header", ["Content-MD5", "Digest", "Repr-Digest"])
@pytest.mark.parametrize("size", [100, 5 * 1024 * 1024])
def test_digest_mismatch_is_rejected_and_nothing_is_stored(plain: Proxy, header: str, size: int) -> None:
    old, new = b"old version", os.urandom(size)
    url = plain.artifact_url(f"mismatch/{header}-{size}.bin")
    httpx.put(url, content=old).raise_for_status()
    wrong = {
        "Content-MD5": b64(hashlib.md5(b"other").digest()),
        "Digest": f"sha-256={b64(hashlib.sha256(b'other').digest())}",
        "Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:",
    }[header]
    response = httpx.put(url, content=new, headers={header: wrong})
    assert response.status_code == 400
    assert "Upload rejected" in response.json()["message"]
    assert httpx.get(url).content == old
    right = {
        "Content-MD5": b64(hashlib.md5(new).digest()),
        "Digest": f"sha-256={b64(hashlib.sha256(new).digest())}",
        "Repr-Digest": f"sha-256=:{b64(hashlib.sha256(new).digest())}:",
    }[header]
    assert httpx.put(url, content=new, headers={header: right}).status_code == 200
    assert httpx.get(url).content == new


def test_create_only_with_if_none_match(plain: Proxy) -> None:
    url = plain.artifact_url("once/model.bin")
    assert httpx.put(url, content=b"first", headers={"If-None-Match": "*"}).status_code == 200
    refused = httpx.put(url, content=b"second", headers={"If-None-Match": "*"})
    assert refused.status_code == 409
    assert refused.json()["error_code"] == "ALREADY_EXISTS"
    assert httpx.get(url).content == b"first"


def test_create_only_under_concurrency_lets_exactly_one_writer_win(plain: Proxy) -> None:
    url = plain.artifact_url("once/raced.bin")
    bodies = [bytes([i]) * (200_000 + i) for i in range(16)]
    release = threading.Event()

    def attempt(body: bytes) -> int:
        headers = {"If-None-Match": "*", "Content-Length": str(len(body))}
        return httpx.put(url, content=held_body(body, 64 * 1024, release), headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        futures = [pool.submit(attempt, body) for body in bodies]
        try:
            plain.wait_in_flight(len(bodies))  # all 16 are mid-body together: none has created the file yet
        finally:
            release.set()
        statuses = [future.result() for future in futures]
    assert sorted(statuses) == [200] + [409] * 15
    assert httpx.get(url).content == bodies[statuses.index(200)]


def test_server_setting_forbids_overwrites(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_FORBID_OVERWRITE": "true"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        url = proxy.artifact_url("x.txt")
        assert httpx.put(url, content=b"1").status_code == 200
        assert httpx.put(url, content=b"2").status_code == 409
        assert httpx.get(url).content == b"1"
