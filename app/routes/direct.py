"""The artifact routes matched without Starlette's router: `artifacts/<path>` and the `artifacts` listing under every
API prefix, by a set lookup and a prefix test. `app.edge.Edge` calls them without `request_response`, the exception
middleware or FastAPI's exit stack: issue 18 measured those layers at a third of a small GET's time in the app.

They behave as the router's routes do (the same endpoints, the same error handlers, the same `endpoint` and
`path_params` in the scope); a method these routes do not take goes on to the router, which answers it (405).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from app.routes.artifacts import artifact, list_artifacts

Endpoint = Callable[[Request], Awaitable[Response]]
FILE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
LISTING_METHODS = frozenset({"GET", "HEAD"})


class DirectRoutes:
    def __init__(self, prefixes: Iterable[str]) -> None:
        self.listings = frozenset(f"{prefix}/artifacts" for prefix in prefixes)
        # Longest first: with prefixes `/a` and `/a/artifacts/b`, a path under the second belongs to the second.
        self.file_prefixes = tuple(sorted((f"{listing}/" for listing in self.listings), key=len, reverse=True))

    def match(self, scope: Scope) -> Endpoint | None:
        """The endpoint for this request, with `endpoint` and `path_params` set in the scope; None: the router's."""
        path = get_route_path(scope)
        method = scope["method"]
        if path in self.listings:
            if method not in LISTING_METHODS:
                return None
            scope["endpoint"], scope["path_params"] = list_artifacts, {}
            return list_artifacts
        if method not in FILE_METHODS:
            return None
        for prefix in self.file_prefixes:
            if path.startswith(prefix):
                scope["endpoint"], scope["path_params"] = artifact, {"path": path[len(prefix) :]}
                return artifact
        return None
