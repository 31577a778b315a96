"""The OpenAPI 3.1 description of the served routes, at `<prefix>/openapi.json`, with Swagger UI at `<prefix>/docs`.

The routes are plain Starlette endpoints (no dependency resolution or response validation per request), which FastAPI's
generator cannot see. So the document is built here, once per worker at startup, from the app's own route table and
the models in app/schemas.py: every path and method comes from a route, and a route with no entry in `OPERATIONS`
stops the app from starting, so nothing is served undescribed.

Served without credentials. Nothing in the document depends on the destination, the auth config, a secret or the
build: only the static prefix and whether `/metrics` is on, both of which any client can find out by asking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.openapi_operations import (
    API_VERSION,
    COMMON,
    ERROR_REPLIES,
    OPERATIONS,
    REQUEST_MODELS,
    RESPONSE_MODELS,
    SECURED,
    SECURITY_SCHEMES,
    TAGS,
    Fragment,
)

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")  # `{path:anypath}` is `{path}` to OpenAPI


def _head_of(get: Fragment) -> Fragment:
    """A HEAD answers with its GET's status and headers, and no body."""
    responses = {
        status: {k: v for k, v in reply.items() if k != "content"} for status, reply in get["responses"].items()
    }
    return {**get, "summary": f"{get['summary']}: headers only", "responses": responses}


def operation(endpoint: str, method: str) -> Fragment:
    """The description of `method` on a route of `endpoint`, or KeyError if there is none."""
    if method == "HEAD":
        return _head_of(operation(endpoint, "GET"))
    described = OPERATIONS[(endpoint, method)]
    tag = TAGS.get(endpoint, "server")
    extra: Fragment = {"tags": [tag]}
    if tag in ("artifacts", "multipart"):
        extra["security"] = SECURED  # optional: the security schemes apply only with --auth-config
    responses = {**described["responses"], **COMMON}
    return {**described, **extra, "responses": dict(sorted(responses.items()))}


def openapi_path(route: Route) -> str:
    return _CONVERTOR.sub(r"{\1}", route.path)


def describe(routes: Sequence[BaseRoute]) -> Fragment:
    paths: dict[str, Fragment] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            raise TypeError(f"{route!r} is not a route this module can describe")
        name = route.endpoint.__name__
        entry = paths.setdefault(openapi_path(route), {})
        for method in sorted(route.methods):
            described = operation(name, method)
            # One entry serves the multipart routes with and without their `/{path}`: keep the parameters this
            # route has, and refuse one that the entry does not describe.
            parameters = [
                p for p in described.get("parameters", ()) if p["in"] != "path" or p["name"] in route.param_convertors
            ]
            undescribed = set(route.param_convertors) - {p["name"] for p in parameters}
            if undescribed:
                raise KeyError(f"{method} {route.path}: no description of {sorted(undescribed)}")
            operation_id = re.sub(r"\W+", "_", f"{name}_{method}_{route.path}").strip("_").lower()
            entry[method.lower()] = {**described, "parameters": parameters, "operationId": operation_id}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "artifact-proxy",
            "version": API_VERSION,
            "description": "MLflow's mlflow-artifacts REST API, as served by artifact-proxy. Errors are MLflow's JSON "
            '`{"error_code": ..., "message": ...}`; client mistakes are 4xx.',
        },
        "paths": paths,
        "components": {
            "schemas": _component_schemas(),
            "responses": ERROR_REPLIES,
            "securitySchemes": SECURITY_SCHEMES,
        },
        "tags": [{"name": name} for name in ("artifacts", "multipart", "signed URLs", "server")],
    }


def _component_schemas() -> Fragment:
    models = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    found: Fragment = top["$defs"]
    for schema in found.values():
        for name in schema.get("required", []):
            # The `None` default of a field read as optional (see schemas.py) is not something to send.
            schema["properties"][name].pop("default", None)
    return found


class DescribedApp(FastAPI):
    """FastAPI, serving the document built here at its `openapi_url`."""

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            self.openapi_schema = describe(self.router.routes)
        return self.openapi_schema


async def swagger_ui_html(request: Request) -> Response:
    """FastAPI's Swagger UI page; the browser fetches its script and stylesheet from FastAPI's default CDN."""
    page = get_swagger_ui_html(
        openapi_url=str(request.app.openapi_url), title="artifact-proxy - Swagger UI", swagger_favicon_url="data:,"
    )
    # The CDN learns that someone opened the page, not where: no Referer, and no third-party favicon.
    page.headers["referrer-policy"] = "no-referrer"
    return page


def routes(prefix: str) -> list[Route]:
    return [Route(f"{prefix}/docs", swagger_ui_html, methods=["GET"])]
