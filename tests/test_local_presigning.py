"""Self-signed URLs on the local destination: the secret's rules and staging cleanup; expiry is in
test_presigned_expiry.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port
from tests.utils.proxy import Proxy, running_proxy


def _upload(proxy: Proxy, path: str, parts: list[bytes]) -> dict[str, Any]:
    directory, name = path.rsplit("/", 1)
    created = httpx.post(f"{proxy.api}/mpu/create/{directory}", json={"path": name, "num_parts": len(parts)})
    assert created.status_code == 200, created.text
    body: dict[str, Any] = created.json()
    done = []
    for credential, data in zip(body["credentials"], parts, strict=True):
        put = httpx.put(credential["url"], content=data)
        assert put.status_code == 200, put.text
        done.append({"part_number": credential["part_number"], "etag": put.headers["etag"]})
    complete = {"path": name, "upload_id": body["upload_id"], "parts": done}
    assert httpx.post(f"{proxy.api}/mpu/complete/{directory}", json=complete).status_code == 200
    return body


def test_without_a_secret_each_launch_signs_with_its_own_random_key(tmp_path: Path) -> None:
    """`make run` offers multipart and presigned downloads: the CLI makes a key and gives it to every worker (two
    here: a part URL signed by one is honoured by the other), and says in the log why replicas need a real one."""
    env = {"ARTIFACT_PROXY_SIGNING_SECRET": ""}
    parts = [bytes([n]) * 1000 for n in range(8)]
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env, workers=2) as proxy:
        info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info").json()
        assert (info["multipart_uploads_enabled"], info["multipart_downloads_enabled"]) == (True, True)
        _upload(proxy, "d/m.bin", parts)
        signed = httpx.get(f"{proxy.api}/presigned/d/m.bin").json()
        assert httpx.get(signed["url"]).content == b"".join(parts)
        assert proxy.log().count("ARTIFACT_PROXY_SIGNING_SECRET is not set") == 1
    with running_proxy(str(tmp_path / "root"), tmp_path / "again", env=env) as restarted:
        # Another launch, another key: the URL signed before the restart is refused, not honoured.
        old = signed["url"].replace(proxy.url, restarted.url)
        assert httpx.get(old).status_code == 403
        assert httpx.get(httpx.get(f"{restarted.api}/presigned/d/m.bin").json()["url"]).status_code == 200


def test_switched_off_transfers_answer_what_the_client_falls_back_on(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_ENABLE_MULTIPART": "false", "ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD": "false"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info").json()
        assert (info["multipart_uploads_enabled"], info["multipart_downloads_enabled"]) == (False, False)
        create = httpx.post(f"{proxy.api}/mpu/create/d", json={"path": "x.bin", "num_parts": 1})
        assert (create.status_code, create.json()) == (
            501,
            {
                "error_code": "NOT_IMPLEMENTED",
                "message": "Multipart upload is not supported for the current artifact repository",
            },
        )
        presigned = httpx.get(f"{proxy.api}/presigned/x.bin")
        assert presigned.status_code == 501
        assert presigned.json()["message"].startswith("Multipart download is not supported")


def test_a_configured_secret_is_used_and_not_reported(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy") as proxy:  # running_proxy configures one
        _upload(proxy, "d/m.bin", [b"x" * 10])
        assert "ARTIFACT_PROXY_SIGNING_SECRET is not set" not in proxy.log()


def test_placeholder_secret_is_refused_at_startup(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "server", "--port", str(free_port()), "--artifacts-destination", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "ARTIFACT_PROXY_SIGNING_SECRET": "changethis"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ARTIFACT_PROXY_SIGNING_SECRET is a placeholder" in result.stderr


def test_staging_is_invisible_and_removed_after_complete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as proxy:
        created = httpx.post(f"{proxy.api}/mpu/create/d", json={"path": "m.bin", "num_parts": 2}).json()
        etags = []
        for cred, data in zip(created["credentials"], [b"a" * 1000, b"b" * 10], strict=True):
            etags.append(httpx.put(cred["url"], content=data).headers["etag"])
        assert httpx.get(f"{proxy.api}/artifacts", params={"path": "d"}).json() == {}
        assert [f["path"] for f in httpx.get(f"{proxy.api}/artifacts").json()["files"]] == ["d"]
        parts = [{"part_number": i + 1, "etag": e} for i, e in enumerate(etags)]
        # A part list that does not match what was uploaded is refused and nothing appears.
        bad = httpx.post(
            f"{proxy.api}/mpu/complete/d",
            json={
                "path": "m.bin",
                "upload_id": created["upload_id"],
                "parts": [{"part_number": 1, "etag": '"x"'}, parts[1]],
            },
        )
        assert bad.status_code == 400
        assert not (root / "d" / "m.bin").exists()
        done = httpx.post(
            f"{proxy.api}/mpu/complete/d", json={"path": "m.bin", "upload_id": created["upload_id"], "parts": parts}
        )
        assert done.status_code == 200
        assert (root / "d" / "m.bin").read_bytes() == b"a" * 1000 + b"b" * 10
        assert list((root / ".artifact.uploading.mpu").iterdir()) == []
        # Parts for a finished upload have nowhere to go.
        assert httpx.put(created["credentials"][0]["url"], content=b"late").status_code == 404


def test_presigned_only_mode_refuses_large_proxied_puts(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE": "1000"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy", env=env) as proxy:
        refused = httpx.put(proxy.artifact_url("big.bin"), content=b"x" * 5000)
        assert refused.status_code == 403
        assert "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true" in refused.json()["message"]
        assert httpx.put(proxy.artifact_url("small.bin"), content=b"x" * 1000).status_code == 200
        assert not (tmp_path / "root" / "big.bin").exists()
