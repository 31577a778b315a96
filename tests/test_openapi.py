"""The OpenAPI description: exactly the routes the app serves, valid OpenAPI 3.1, under the static prefix, readable
without credentials and the same whatever the deployment's secrets; and the models say what the routes build."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.openapi.models import OpenAPI
from openapi_spec_validator import validate

from app import schemas
from app.main import create_app
from app.openapi import openapi_path
from app.settings import Settings
from app.storage.base import CreatedMultipartUpload, FileInfo, PartCredential
from tests.test_auth import auth_config
from tests.utils.proxy import running_proxy

API = "/api/2.0/mlflow-artifacts"
# What MLflow clients call, by hand: the description and the routes could otherwise lose one together.
MLFLOW_SURFACE = {
    (f"{API}/artifacts", "GET"),
    (f"{API}/artifacts/{{path}}", "GET"),
    (f"{API}/artifacts/{{path}}", "PUT"),
    (f"{API}/artifacts/{{path}}", "DELETE"),
    (f"{API}/mpu/create/{{path}}", "POST"),
    (f"{API}/mpu/complete/{{path}}", "POST"),
    (f"{API}/mpu/abort/{{path}}", "POST"),
    (f"{API}/presigned/{{path}}", "GET"),
    ("/api/3.0/mlflow/server-info", "GET"),
}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize(
    "settings",
    [{}, {"static_prefix": "/mlflow"}, {"metrics": False}],
    ids=["default", "prefix", "no-metrics"],
)
def test_the_description_lists_exactly_the_routes_the_app_serves(tmp_path: Path, settings: dict[str, Any]) -> None:
    app = create_app(Settings(artifacts_destination=str(tmp_path), **settings))
    document = app.openapi()
    served = {(openapi_path(route), method) for route in app.router.routes for method in route.methods or ()}
    assert operations(document) == served
    prefix = settings.get("static_prefix", "")
    assert {(f"{prefix}{path}", method) for path, method in MLFLOW_SURFACE} <= served
    assert ((f"{prefix}/metrics", "GET") in served) is settings.get("metrics", True)
    OpenAPI.model_validate(document)
    validate(json.loads(json.dumps(document)))


def test_every_described_path_answers_with_exactly_the_described_methods(tmp_path: Path) -> None:
    prefixed = running_proxy(str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--static-prefix=/mlflow"])
    with prefixed as proxy, httpx.Client(base_url=proxy.url) as http:
        document = http.get("/mlflow/openapi.json").json()
        assert all(p.startswith("/mlflow/") or p in ("/health", "/ready") for p in document["paths"])
        for path, item in document["paths"].items():
            # OPTIONS is served by no route: the 405 that a matching path gets names the methods the route has.
            response = http.options(re.sub(r"\{\w+\}", "x", path))
            assert response.status_code == 405, path
            allowed = {method.strip() for method in response.headers["allow"].split(",")}
            assert allowed == {method.upper() for method in item}, path
        assert http.get("/openapi.json").status_code == 404  # only under the prefix
        assert http.get("/mlflow/api/2.0/mlflow-artifacts/nothing").json()["error_code"] == "ENDPOINT_NOT_FOUND"
        page = http.get("/mlflow/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "url: '/mlflow/openapi.json'" in page.text
        # The page's assets come from FastAPI's CDN: it gets no Referer, and there is no third-party favicon.
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "fastapi.tiangolo.com" not in page.text


def test_the_description_is_public_and_tells_nothing_of_the_deployment(tmp_path: Path) -> None:
    root = tmp_path / "root-d41d8cd98f00b204"
    secret = "s3cr3t-signing-key-0123456789"
    env = {"ARTIFACT_PROXY_SIGNING_SECRET": secret, "ARTIFACT_PROXY_PUBLIC_URL": "http://artifacts.internal:5000"}
    args = ["--auth-config", str(auth_config(tmp_path))]
    with running_proxy(str(root), tmp_path / "proxy", env=env, extra_args=args) as proxy:
        assert httpx.get(proxy.artifact_url("x.txt")).status_code == 401  # auth is on
        for url in (f"{proxy.url}/openapi.json", f"{proxy.url}/docs"):
            assert httpx.get(url).status_code == 200, url
        served = httpx.get(f"{proxy.url}/openapi.json").text
    for private in (str(root), "d41d8cd98f00b204", secret, "artifacts.internal", "alice", "pbkdf2", "sha256:"):
        assert private not in served
    plain = create_app(Settings(artifacts_destination=str(tmp_path / "elsewhere"))).openapi()
    assert json.loads(served) == json.loads(json.dumps(plain))


@pytest.mark.parametrize(
    "body",
    [
        schemas.list_json([]),
        schemas.list_json([FileInfo("a.txt", False, 3), FileInfo("sub", True), FileInfo("b", False, None)]),
    ],
)
def test_the_listing_model_describes_what_the_listing_builds(body: dict[str, object]) -> None:
    schemas.ListArtifactsResponse.model_validate(body)


@pytest.mark.parametrize("upload_id", ["u-1", None])  # None: Azure has no upload ids
def test_the_multipart_model_describes_what_create_builds(upload_id: str | None) -> None:
    created = CreatedMultipartUpload(upload_id, [PartCredential("http://x/1", 1, {"x-ms-blob-type": "BlockBlob"})])
    body = schemas.created_upload_json(created, "")
    assert schemas.CreateMultipartResponse.model_validate(body).upload_id == upload_id
