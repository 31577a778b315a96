"""Authentication and authorization, off unless `ARTIFACT_PROXY_AUTH_CONFIG` names a config file.

Who: HTTP Basic against salted PBKDF2 password hashes, bearer tokens (stored as SHA-256), or identity headers set by
a trusted fronting proxy. What: rules per canonical path prefix grant `read`, `write` or `delete` (each implies the
weaker ones) to users, `group:<name>` or `*` (any authenticated caller). The most specific matching prefix decides;
no matching rule denies. Rules are checked against the same canonical path the handler uses. The file is re-read
when it changes, without a restart.

```toml
[users.alice]
password = "pbkdf2_sha256$600000$<salt>$<hash>"   # artifact-proxy hash-password
groups = ["ml"]
tokens = ["sha256:<hex>"]                           # artifact-proxy hash-token

[trusted_headers]            # optional: identity from an ingress doing OIDC
user = "X-Forwarded-User"
groups = "X-Forwarded-Groups"

[[rules]]
prefix = ""                  # the whole store
read = ["*"]
[[rules]]
prefix = "1"                 # experiment 1
write = ["group:ml"]
delete = ["alice"]
```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

import anyio.to_thread
from starlette.requests import Request

from app.errors import ArtifactProxyError, PermissionDenied
from app.metrics import AUDIT_KEY
from app.paths import ArtifactPath

PBKDF2_ITERATIONS = 600_000
VERIFIED_TTL = 300.0  # seconds a verified Basic credential is remembered, so PBKDF2 runs once, not per request


class Operation(IntEnum):
    READ = 1
    WRITE = 2
    DELETE = 3


class Unauthenticated(ArtifactProxyError):
    error_code = "UNAUTHENTICATED"
    status_code = 401

    def __init__(self, message: str = "Authentication required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Basic realm="artifact-proxy", charset="UTF-8"'})


@dataclass(frozen=True)
class Principal:
    name: str
    groups: frozenset[str] = frozenset()

    def matches(self, who: str) -> bool:
        if who == "*":
            return True
        if who.startswith("group:"):
            return who[6:] in self.groups
        return who == self.name


@dataclass(frozen=True)
class Rule:
    prefix: str
    grants: dict[Operation, tuple[str, ...]]

    def covers(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def allows(self, principal: Principal, operation: Operation) -> bool:
        return any(principal.matches(who) for op, whos in self.grants.items() if op >= operation for who in whos)


@dataclass
class AuthConfig:
    users: dict[str, dict[str, object]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # sha256 hex -> user
    rules: list[Rule] = field(default_factory=list)
    user_header: str | None = None
    groups_header: str | None = None

    @classmethod
    def load(cls, path: str) -> AuthConfig:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
        users = {name: dict(entry) for name, entry in raw.get("users", {}).items()}
        tokens = {
            str(token).removeprefix("sha256:").lower(): name
            for name, entry in users.items()
            for token in _strings(entry.get("tokens"))
        }
        rules = [
            Rule(
                prefix=ArtifactPath(str(rule.get("prefix", "")).strip("/")).canonical,
                grants={op: tuple(rule.get(op.name.lower(), ())) for op in Operation},
            )
            for rule in raw.get("rules", [])
        ]
        headers = raw.get("trusted_headers", {})
        return cls(
            users,
            tokens,
            sorted(rules, key=lambda r: len(r.prefix), reverse=True),
            headers.get("user"),
            headers.get("groups"),
        )

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset(_strings(self.users.get(user, {}).get("groups")))


def _strings(value: object) -> list[str]:
    """A TOML list of strings (or nothing) as a Python list; anything else is a config mistake, ignored."""
    return [str(item) for item in value] if isinstance(value, list) else []


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, binascii.Error):
        return False


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Holds the current config (reloaded when its file changes) and answers `authorize`."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self._mtime = -1.0
        self._checked = 0.0
        self._config = AuthConfig()
        self._verified: dict[tuple[str, str], float] = {}
        self._reload()

    def _reload(self) -> None:
        mtime = os.stat(self.config_path).st_mtime
        if mtime != self._mtime:
            self._config = AuthConfig.load(self.config_path)
            self._mtime = mtime
            self._verified.clear()

    def config(self) -> AuthConfig:
        now = time.monotonic()
        if now - self._checked > 1.0:  # at most one stat per second
            self._checked = now
            try:
                self._reload()
            except (OSError, tomllib.TOMLDecodeError, ValueError):
                pass  # keep serving with the last good config; a broken edit must not open or close the door
        return self._config

    async def principal(self, request: Request) -> Principal:
        config = self.config()
        if config.user_header and (user := request.headers.get(config.user_header)):
            raw_groups = request.headers.get(config.groups_header or "", "")
            groups = {g.strip() for g in raw_groups.split(",") if g.strip()} | set(config.groups_of(user))
            return Principal(user, frozenset(groups))
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            user = config.tokens.get(hash_token(credentials.strip())[7:])
            if user is None:
                raise Unauthenticated("Invalid token")
            return Principal(user, config.groups_of(user))
        if scheme.lower() == "basic" and credentials:
            return await self._basic(config, credentials.strip())
        raise Unauthenticated()

    async def _basic(self, config: AuthConfig, credentials: str) -> Principal:
        try:
            user, _, password = base64.b64decode(credentials).decode("utf-8").partition(":")
        except (ValueError, binascii.Error) as exc:
            raise Unauthenticated("Malformed Basic credentials") from exc
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        if self._verified.get(key, 0) < time.monotonic():
            encoded = str(config.users.get(user, {}).get("password", ""))
            if not encoded or not await anyio.to_thread.run_sync(verify_password, password, encoded):
                raise Unauthenticated("Invalid username or password")
            self._verified[key] = time.monotonic() + VERIFIED_TTL
        return Principal(user, config.groups_of(user))

    def allows(self, principal: Principal, operation: Operation, path: ArtifactPath) -> bool:
        """The most specific rule covering `path` decides; no rule refuses."""
        for rule in self.config().rules:
            if rule.covers(path.canonical):
                return rule.allows(principal, operation)
        return False

    def check(self, principal: Principal, operation: Operation, path: ArtifactPath) -> None:
        if self.allows(principal, operation, path):
            return
        raise PermissionDenied(f"User '{principal.name}' may not {operation.name.lower()} '{path.canonical or '/'}'")


PRINCIPAL_KEY = "artifact_proxy.principal"


@runtime_checkable
class FollowsLinks(Protocol):
    """A store whose paths may be links (a local directory): what an operation really touches can differ from the
    path asked for, and must be allowed as well."""

    async def resolved(self, path: ArtifactPath, follow_last: bool) -> ArtifactPath: ...


async def authenticate(request: Request) -> None:
    """Establish who is asking (401 if nobody valid), for routes that must know it before reading their body: an
    unauthenticated client never gets a byte of its body read. `authorize` reuses the answer."""
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is not None and PRINCIPAL_KEY not in request.scope:
        request.scope[PRINCIPAL_KEY] = await authenticator.principal(request)


async def authorize(request: Request, operation: Operation, path: ArtifactPath) -> None:
    """Allow or refuse `operation` on the canonical `path`; records who asked, for the audit log."""
    audit = {"op": operation.name.lower(), "path": path.canonical, "user": "-"}
    request.scope[AUDIT_KEY] = audit
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is None:
        return
    principal: Principal = request.scope.get(PRINCIPAL_KEY) or await authenticator.principal(request)
    audit["user"] = principal.name
    authenticator.check(principal, operation, path)
    store = request.app.state.store
    if isinstance(store, FollowsLinks):
        actual = await store.resolved(path, follow_last=operation == Operation.READ)
        if actual != path and not authenticator.allows(principal, operation, actual):
            # Name only the requested path: where the link leads is none of the client's business.
            raise PermissionDenied(
                f"User '{principal.name}' may not {operation.name.lower()} '{path.canonical}': "
                "it is a link into a path the rules refuse"
            )
