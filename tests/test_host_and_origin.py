"""Issue 13, cases 5 and 8: DNS rebinding and localhost CSRF are refused by default, and signed URLs are never built
from a Host nobody checked."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.utils.proxy import Proxy, running_proxy
from tests.utils.raw_http import read_response

CREATE = {"path": "big.bin", "num_parts": 2}


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A default `make run`: bound to 127.0.0.1, no allow-list, a signing secret (multipart on)."""
    base = tmp_path_factory.mktemp("loopback")
    (base / "root" / "1").mkdir(parents=True)
    (base / "root" / "1" / "model.bin").write_bytes(b"weights")
    with running_proxy(str(base / "root"), base / "p") as proxy:
        yield proxy


def port_of(proxy: Proxy) -> int:
    return int(urlsplit(proxy.url).port or 0)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "artifacts/1/model.bin"), ("PUT", "artifacts/1/planted.bin"), ("DELETE", "artifacts/1/model.bin")],
)
def test_a_rebound_host_name_is_refused(loopback: Proxy, method: str, path: str) -> None:
    host = f"rebind.attacker.example:{port_of(loopback)}"
    # What the victim's browser sends for a page on the attacker's name after it resolved to 127.0.0.1: the Host and
    # Origin agree, so only the Host tells it apart.
    headers = {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/octet-stream"}
    response = httpx.request(
        method, f"{loopback.api}/{path}", headers=headers, content=b"x" if method == "PUT" else None
    )
    assert response.status_code == 403, response.text
    assert "DNS rebinding" in response.json()["message"]
    listing = httpx.get(f"{loopback.api}/artifacts", params={"path": "1"}, headers={"Host": host})
    assert listing.status_code == 403
    assert (Path(loopback.destination) / "1" / "model.bin").read_bytes() == b"weights"


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "LOCALHOST", "[::1]"])
def test_loopback_names_are_served(loopback: Proxy, name: str) -> None:
    headers = {"Host": f"{name}:{port_of(loopback)}"}
    assert httpx.get(loopback.artifact_url("1/model.bin"), headers=headers).content == b"weights"


def test_two_host_headers_are_refused(loopback: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", port_of(loopback))) as sock:
        sock.sendall(
            b"GET /api/2.0/mlflow-artifacts/artifacts/1/model.bin HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        response = read_response(sock)
    assert response.status == 400
    assert b"More than one Host header" in response.body


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_cross_origin_post_that_needs_no_preflight_is_refused(loopback: Proxy, content_type: str | None) -> None:
    # Another local web page (any port of localhost counts as a local origin, as in MLflow) posting as a browser does
    # without a CORS preflight.
    headers = {"Origin": "http://localhost:3000"}
    if content_type:
        headers["Content-Type"] = content_type
    body = b'{"path": "big.bin", "num_parts": 2}'
    response = httpx.post(f"{loopback.api}/mpu/create/1", content=body, headers=headers)
    assert response.status_code == 403, response.text
    assert "application/json" in response.json()["message"]


def test_json_posts_and_same_origin_posts_still_work(loopback: Proxy) -> None:
    local_page = {"Origin": "http://localhost:3000"}
    assert httpx.post(f"{loopback.api}/mpu/create/1", json=CREATE, headers=local_page).status_code == 200
    same_origin = {"Origin": loopback.url, "Content-Type": "text/plain"}
    body = b'{"path": "big.bin", "num_parts": 2}'
    assert httpx.post(f"{loopback.api}/mpu/create/1", content=body, headers=same_origin).status_code == 200
    assert httpx.post(f"{loopback.api}/mpu/create/1", json=CREATE).status_code == 200  # no Origin: not a browser


def test_signed_urls_on_a_loopback_server_use_the_checked_host(loopback: Proxy) -> None:
    headers = {"Host": f"localhost:{port_of(loopback)}"}
    created = httpx.post(f"{loopback.api}/mpu/create/1", json=CREATE, headers=headers).json()
    assert all(url["url"].startswith(f"http://localhost:{port_of(loopback)}/") for url in created["credentials"])


@pytest.fixture(scope="module")
def all_interfaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Bound to every interface with neither an allow-list nor a public URL: any Host arrives unchecked."""
    base = tmp_path_factory.mktemp("exposed")
    (base / "root" / "1").mkdir(parents=True)
    (base / "root" / "1" / "model.bin").write_bytes(b"weights")
    with running_proxy(str(base / "root"), base / "p", extra_args=["--host", "0.0.0.0"]) as proxy:
        yield proxy


def test_no_urls_are_signed_for_an_unchecked_host(all_interfaces: Proxy) -> None:
    evil = {"Host": "evil.example"}
    created = httpx.post(f"{all_interfaces.api}/mpu/create/1", json=CREATE, headers=evil)
    assert created.status_code == 501, created.text
    assert created.json()["message"].startswith("Multipart upload is not supported")
    presigned = httpx.get(f"{all_interfaces.api}/presigned/1/model.bin", headers=evil)
    assert presigned.status_code == 501
    info = httpx.get(f"{all_interfaces.url}/api/3.0/mlflow/server-info", headers=evil).json()
    assert info["multipart_uploads_enabled"] is False
    assert info["multipart_downloads_enabled"] is False
    # Proxied transfers, which carry no URL, are unaffected
    assert httpx.get(all_interfaces.artifact_url("1/model.bin"), headers=evil).content == b"weights"
    assert all_interfaces.logged("set ARTIFACT_PROXY_PUBLIC_URL, or MLFLOW_SERVER_ALLOWED_HOSTS")


def test_the_public_url_wins_over_any_host(tmp_path: Path) -> None:
    env = {"ARTIFACT_PROXY_PUBLIC_URL": "https://artifacts.example.com/"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "p", env=env, extra_args=["--host", "0.0.0.0"]) as proxy:
        created = httpx.post(f"{proxy.api}/mpu/create/1", json=CREATE, headers={"Host": "evil.example"}).json()
        assert all(url["url"].startswith("https://artifacts.example.com/api/") for url in created["credentials"])
        info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info", headers={"Host": "evil.example"}).json()
        assert info["multipart_uploads_enabled"] is True


def test_an_allow_listed_host_is_used_for_signed_urls(tmp_path: Path) -> None:
    env = {"MLFLOW_SERVER_ALLOWED_HOSTS": "artifacts.internal:*"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "p", env=env, extra_args=["--host", "0.0.0.0"]) as proxy:
        host = f"artifacts.internal:{port_of(proxy)}"
        created = httpx.post(f"{proxy.api}/mpu/create/1", json=CREATE, headers={"Host": host}).json()
        assert all(url["url"].startswith(f"http://{host}/") for url in created["credentials"])
        assert httpx.post(f"{proxy.api}/mpu/create/1", json=CREATE, headers={"Host": "evil.example"}).status_code == 403


def test_ip_shaped_patterns_admit_ip_addresses_only(tmp_path: Path) -> None:
    """As in MLflow 3.18: `10.*` is the private network, not every host name that begins with `10.`."""
    env = {"MLFLOW_SERVER_ALLOWED_HOSTS": "10.*,192.168.*:*,app-*.internal"}
    with running_proxy(str(tmp_path / "root"), tmp_path / "p", env=env, extra_args=["--host", "0.0.0.0"]) as proxy:
        info = f"{proxy.url}/api/3.0/mlflow/server-info"
        for served in ("10.1.2.3", "192.168.0.7:5000", "app-1.internal"):
            assert httpx.get(info, headers={"Host": served}).status_code == 200, served
        for refused in ("10.attacker.example", "10.0.0.1.nip.io", "192.168.evil.example:80", "app-1.internal.evil"):
            assert httpx.get(info, headers={"Host": refused}).status_code == 403, refused
