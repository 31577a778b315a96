"""Artifact URIs, as MLflow resolves them, to the server they live on and the artifact path within it.

Two spellings are accepted:

- `http(s)://HOST[:PORT][/prefix]/api/2.0/mlflow-artifacts/artifacts[/<path>]`, the form tracking servers hand out
  as artifact roots; everything before `/api/2.0/...` is the server (a reverse proxy's prefix included).
- `mlflow-artifacts://HOST:PORT/<path>` (or `mlflow-artifacts:/<path>`, no host): resolved like MLflow's
  `MlflowArtifactsRepository.resolve_uri`, with the scheme, the path prefix and, when the URI names none, the host
  taken from `MLFLOW_TRACKING_URI` (so http unless that is https).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

ARTIFACTS_ROOT = "/api/2.0/mlflow-artifacts/artifacts"
SERVER_INFO = "/api/3.0/mlflow/server-info"
DEFAULT_TRACKING_URI = "http://localhost:5000"


class UriError(ValueError):
    pass


@dataclass(frozen=True)
class Remote:
    """An artifact path (no leading or trailing `/`; "" is the root) on the server at `server`."""

    server: str  # scheme://host[:port][/prefix], with no trailing slash
    path: str

    @property
    def api(self) -> str:
        return f"{self.server}/api/2.0/mlflow-artifacts"

    def url(self, path: str | None = None) -> str:
        """The artifact route of `path` (default this one's): percent-encoded, so `?`, `#`, `%` stay in the name."""
        target = self.path if path is None else path
        return f"{self.server}{ARTIFACTS_ROOT}/{quote(target, safe='/')}"

    def child(self, relative: str) -> Remote:
        return Remote(self.server, join(self.path, relative))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def __str__(self) -> str:
        return self.url()


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, the default port left out, for telling servers apart and naming them."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal, bracketed again
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def join(directory: str, relative: str) -> str:
    return "/".join(part for part in (directory.strip("/"), relative.strip("/")) if part)


def is_remote(text: str) -> bool:
    return text.startswith(("http://", "https://", "mlflow-artifacts:"))


def parse_remote(text: str, tracking_uri: str | None) -> Remote:
    if text.startswith("mlflow-artifacts:"):
        return _mlflow_artifacts(text, tracking_uri or DEFAULT_TRACKING_URI)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UriError(f"not an artifact URI: {text}")
    if parts.query or parts.fragment:
        raise UriError(f"an artifact URI has no query or fragment: {text}")
    where = parts.path.find(ARTIFACTS_ROOT)
    rest = parts.path[where + len(ARTIFACTS_ROOT) :] if where >= 0 else None
    if rest is None or (rest and not rest.startswith("/")):
        raise UriError(f"not an artifact URI (no {ARTIFACTS_ROOT} in its path): {text}")
    server = f"{parts.scheme}://{parts.netloc}{parts.path[:where]}".rstrip("/")
    return Remote(server, _clean(unquote(rest)))


def _mlflow_artifacts(text: str, tracking_uri: str) -> Remote:
    parts, tracking = urlsplit(text), urlsplit(tracking_uri)
    if tracking.scheme not in ("http", "https") or not tracking.netloc:
        raise UriError(f"mlflow-artifacts URIs need MLFLOW_TRACKING_URI to be an http(s) URL, not {tracking_uri!r}")
    if parts.hostname and parts.port is None and parts.hostname.isdigit():
        raise UriError(f"the mlflow-artifacts URI names a port but no host: {text}")
    path = parts.path
    if path.startswith(ARTIFACTS_ROOT):  # MLflow accepts the service root spelled out, too
        path = path[len(ARTIFACTS_ROOT) :]
    server = f"{tracking.scheme}://{parts.netloc or tracking.netloc}{tracking.path}".rstrip("/")
    return Remote(server, _clean(unquote(path)))


def _clean(path: str) -> str:
    # `a//b` and `a/./b` are the same artifact to the server (app/paths.py); `..` is left for it to refuse.
    return "/".join(segment for segment in path.split("/") if segment not in ("", "."))
