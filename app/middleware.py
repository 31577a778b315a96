"""The security checks every request passes (`app.edge` applies them; this module decides).

As MLflow 3.x's server does: `nosniff` and `SAMEORIGIN` on every response; a `Host` allow-list
(`MLFLOW_SERVER_ALLOWED_HOSTS`) against DNS rebinding; and refusal of state-changing requests from browser pages of
other origins (`MLFLOW_SERVER_CORS_ALLOWED_ORIGINS` widens it). Beyond MLflow:

- With no allow-list, a server bound to a loopback address accepts only loopback names (`localhost`, `127.0.0.1`,
  `[::1]`, any port): a page on `rebind.attacker.example` that resolves to 127.0.0.1 is refused.
- Exactly one `Host` header: the allow-list and the URLs we sign must see the same one.
- A POST from another origin must say `Content-Type: application/json`: the types a page can POST without a CORS
  preflight (text/plain, forms) are refused, so a page the origin rules let through still cannot skip the preflight.

Programmatic clients send no `Origin` and are unaffected. Refusals are 403 (400 for a malformed request) in
MLflow's error shape. The scope records whether the Host was checked: only then may signed URLs be built from it.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import json
import re
from urllib.parse import urlsplit

from starlette.types import Message, Scope

STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
LOOPBACK_HOSTS = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*"]
HOST_CHECKED_KEY = "artifact_proxy.host_checked"  # True when the Host passed an allow-list (explicit or loopback)


# An IP-shaped pattern (`10.*`, `192.168.*:5000`) covers IP addresses only, as in MLflow 3.18: `10.*` must not let
# in a host name that merely starts with those digits (`10.attacker.example`).
_IPV4_PREFIX_GLOB = re.compile(r"(?:[0-9]+\.)+\*(?:\.(?:[0-9]+|\*))*(?::[0-9*]+)?")


def _is_ipv4_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host.partition(":")[0])
    except ValueError:
        return False
    return True


def _matches_one(value: str, pattern: str) -> bool:
    if "*" not in pattern:
        return value == pattern
    if not fnmatch.fnmatchcase(value, pattern):
        return False
    return _is_ipv4_host(value) if _IPV4_PREFIX_GLOB.fullmatch(pattern) else True


def _matches(value: str, patterns: list[str]) -> bool:
    return any(_matches_one(value, pattern) for pattern in patterns)


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SecurityPolicy:
    """What `app.edge.Edge` checks before a request reaches a route, and the headers it adds to every response."""

    def __init__(
        self,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        loopback_only: bool = False,
        probe_paths: frozenset[str] = frozenset(),
        frame_options: str = "SAMEORIGIN",
    ) -> None:
        # MLflow's --x-frame-options: NONE sends no header, for a UI embedded in another origin's frames.
        frame = [] if frame_options.upper() == "NONE" else [(b"x-frame-options", frame_options.upper().encode())]
        self.headers: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff"), *frame]
        # Orchestrators probe by the pod's address, whatever the allow-list says; probes change nothing.
        self.probe_paths = probe_paths
        self.allowed_hosts = [h.lower() for h in allowed_hosts or (LOOPBACK_HOSTS if loopback_only else [])]
        self.allowed_origins = allowed_origins or []
        # Every request asks about the same few Host values; the patterns are globs, so remember the answers (a
        # bounded cache: the Host is the client's to choose).
        self._host_allowed = functools.lru_cache(maxsize=256)(self._match_host)

    def _match_host(self, host: str) -> bool:
        return _matches(host, self.allowed_hosts)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """The status and message a request is refused with, or None. Marks the scope when its Host was checked."""
        host_values: list[bytes] = []
        origin = content_type = b""
        for key, value in scope.get("headers", []):
            if key == b"host":
                host_values.append(value)
            elif key == b"origin":
                origin = value
            elif key == b"content-type":
                content_type = value
        if len(host_values) > 1:
            return 400, "More than one Host header"
        host = host_values[0].decode("latin-1").lower() if host_values else ""
        if self.allowed_hosts:
            if self._host_allowed(host):
                scope[HOST_CHECKED_KEY] = True
            elif scope["path"] not in self.probe_paths:
                return 403, "Host header not allowed (MLFLOW_SERVER_ALLOWED_HOSTS); possible DNS rebinding"
        if origin and scope["method"] in STATE_CHANGING:
            origin_text = origin.decode("latin-1")
            same_origin = urlsplit(origin_text).netloc.lower() == host
            if not same_origin and not self._origin_allowed(origin_text):
                return 403, "Cross-origin request refused"
            if not same_origin and scope["method"] == "POST" and not _is_json(content_type):
                return 403, "Cross-origin POST refused: send Content-Type: application/json"
        return None

    def _origin_allowed(self, origin: str) -> bool:
        if urlsplit(origin).hostname in LOCAL_ORIGIN_HOSTS:
            return True
        return "*" in self.allowed_origins or _matches(origin, self.allowed_origins)

    def refusal_messages(self, status: int, message: str) -> tuple[Message, Message]:
        """The response to a refused request, in MLflow's error shape (the edge adds the security headers)."""
        code = "PERMISSION_DENIED" if status == 403 else "BAD_REQUEST"
        body = json.dumps({"error_code": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        return (
            {"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body},
        )


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or media_type.endswith(b"+json")
