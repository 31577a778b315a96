"""Issue 18: the artifact routes are served by `app.edge` without the router. They must answer exactly as the
router's routes do, under every API prefix, and every response, whichever way it was served, carries the security
headers and is counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.proxy import PATIENCE, Proxy, running_proxy

PREFIXES = ["/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("edge")
    with running_proxy(str(base / "root"), base / "p") as running:
        yield running


@pytest.fixture()
def http(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=PATIENCE) as client:
        yield client


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_method_of_the_artifact_routes_under_every_prefix(http: httpx.Client, prefix: str) -> None:
    name = prefix.strip("/").split("/")[0]
    url = f"{prefix}/artifacts/edge/{name}/a b%25.txt"
    put = http.put(url, content=b"hello")
    assert put.status_code == 200 and put.json() == {}
    assert_secured(put)
    got = http.get(url)
    assert got.content == b"hello" and got.headers["content-length"] == "5"
    assert_secured(got)
    head = http.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == "5" and head.content == b""
    listing = http.get(f"{prefix}/artifacts", params={"path": f"edge/{name}"})
    assert listing.json()["files"] == [{"path": "a b%.txt", "is_dir": False, "file_size": 5}]
    assert_secured(listing)
    assert http.head(f"{prefix}/artifacts", params={"path": f"edge/{name}"}).status_code == 200
    assert http.delete(url).status_code == 200
    missing = http.get(url)
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert_secured(missing)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_method_the_routes_do_not_take_is_405_from_the_router(http: httpx.Client, prefix: str) -> None:
    on_file = http.post(f"{prefix}/artifacts/edge/x.txt", content=b"x")
    assert on_file.status_code == 405 and on_file.json()["error_code"] == "BAD_REQUEST"
    assert set(on_file.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "PUT", "DELETE"}
    assert_secured(on_file)
    on_listing = http.put(f"{prefix}/artifacts", content=b"x")
    assert on_listing.status_code == 405
    assert set(on_listing.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_client_mistakes_on_the_direct_routes_get_their_mapped_errors(http: httpx.Client) -> None:
    traversal = http.get("/api/2.0/mlflow-artifacts/artifacts/a/%2e%2e/%2e%2e/etc/passwd")
    assert traversal.status_code == 400 and traversal.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert_secured(traversal)
    root_delete = http.delete("/api/2.0/mlflow-artifacts/artifacts/")
    assert root_delete.status_code == 400


def test_routes_the_router_serves_and_refusals_are_secured_too(http: httpx.Client) -> None:
    assert_secured(http.get("/health"))
    assert_secured(http.get("/api/2.0/mlflow-artifacts/no-such-route"))
    refused = http.get("/api/2.0/mlflow-artifacts/artifacts/edge/x", headers={"Host": "rebind.attacker.example"})
    assert refused.status_code == 403
    assert_secured(refused)


def test_metrics_label_the_direct_routes_and_bound_the_method_label(proxy: Proxy, http: httpx.Client) -> None:
    http.put("/api/2.0/mlflow-artifacts/artifacts/edge/m.txt", content=b"m").raise_for_status()
    http.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": "edge"}).raise_for_status()
    # llhttp parses WebDAV's methods too: they reach the app, and the label must not grow with them.
    assert http.request("PROPFIND", "/api/2.0/mlflow-artifacts/artifacts/edge/m.txt").status_code == 405
    assert proxy.logged('"PROPFIND /api/2.0/mlflow-artifacts/artifacts/edge/m.txt HTTP/1.1" 405')
    text = proxy.metrics()
    assert 'artifact_proxy_requests_total{method="PUT",route="artifact",status="200"}' in text
    assert 'artifact_proxy_requests_total{method="GET",route="list_artifacts",status="200"}' in text
    assert 'artifact_proxy_requests_total{method="OTHER",route="artifact",status="405"}' in text
    assert "PROPFIND" not in text


def test_a_file_named_like_a_prefix_is_still_a_file(tmp_path: Path) -> None:
    """A path under one prefix that spells another (`.../artifacts/ajax-api/...`) is an artifact path, not a route."""
    with running_proxy(str(tmp_path / "root"), tmp_path / "p") as proxy:
        nested = f"{proxy.api}/artifacts/ajax-api/2.0/mlflow-artifacts/artifacts/f.txt"
        assert httpx.put(nested, content=b"nested").status_code == 200
        assert (tmp_path / "root" / "ajax-api/2.0/mlflow-artifacts/artifacts/f.txt").read_bytes() == b"nested"
