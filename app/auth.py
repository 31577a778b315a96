"""Authentication and authorization, off unless `ARTIFACT_PROXY_AUTH_CONFIG` names a config file.

Who: HTTP Basic against salted PBKDF2 password hashes, bearer tokens (stored as SHA-256), or identity headers set by
a trusted fronting proxy. What: rules per canonical path prefix grant `read`, `write` or `delete` (each implies the
weaker ones) to users, `group:<name>` or `*` (any authenticated caller). The most specific matching prefix decides;
no matching rule denies. Rules are checked against the same canonical path the handler uses, and against where a
link in a local destination leads. The file is re-read when it changes, without a restart.

```toml
[users.alice]
password = "pbkdf2_sha256$600000$<salt>$<hash>"   # artifact-proxy hash-password
groups = ["ml"]
tokens = ["sha256:<hex>"]                           # artifact-proxy hash-token

[trusted_headers]            # optional: identity from an ingress doing OIDC, believed only from
user = "X-Forwarded-User"    # ARTIFACT_PROXY_TRUSTED_PROXIES and only without an Authorization header
groups = "X-Forwarded-Groups"
any_user = false             # true: any name the ingress sends; false (default): only the users above
accept_groups = ["ml"]       # groups the header may grant (["*"]: any); by default it grants none

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
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

from starlette.requests import Request

from app.errors import ArtifactProxyError, InvalidParameter, PermissionDenied
from app.metrics import AUDIT_KEY
from app.passwords import PBKDF2_ITERATIONS, PasswordChecker, iterations_of, unknown_user_hash
from app.paths import ArtifactPath
from app.policy import refuse_skill_mutation
from app.proxies import TrustedProxies, peer_of

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
    any_user: bool = False
    accept_groups: frozenset[str] = frozenset()
    unknown_user_hash: str = field(default_factory=unknown_user_hash)

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
        iterations = [iterations_of(str(entry.get("password", ""))) for entry in users.values()]
        return cls(
            users,
            tokens,
            sorted(rules, key=lambda r: len(r.prefix), reverse=True),
            headers.get("user"),
            headers.get("groups"),
            headers.get("any_user") is True,
            frozenset(_strings(headers.get("accept_groups"))),
            unknown_user_hash(max((n for n in iterations if n), default=PBKDF2_ITERATIONS)),
        )

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset(_strings(self.users.get(user, {}).get("groups")))


def _strings(value: object) -> list[str]:
    """A TOML list of strings (or nothing) as a Python list; anything else is a config mistake, ignored."""
    return [str(item) for item in value] if isinstance(value, list) else []


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Holds the current config (reloaded when its file changes) and answers `authorize`."""

    def __init__(
        self,
        config_path: str,
        trusted_proxies: TrustedProxies | None = None,
        passwords: PasswordChecker | None = None,
    ) -> None:
        self.config_path = config_path
        self.trusted_proxies = trusted_proxies or TrustedProxies([])
        self.passwords = passwords or PasswordChecker()
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
        authorization = request.headers.getlist("authorization")
        if len(authorization) > 1:
            raise Unauthenticated("More than one Authorization header")
        # Credentials the client presents win: an identity header can never stand in for, or beat, them.
        scheme, _, credentials = (authorization[0] if authorization else "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            user = config.tokens.get(hash_token(credentials.strip())[7:])
            if user is None:
                raise Unauthenticated("Invalid token")
            return Principal(user, config.groups_of(user))
        if scheme.lower() == "basic" and credentials:
            return await self._basic(config, credentials.strip(), request)
        if config.user_header and config.user_header in request.headers:
            return self._from_proxy(config, request)
        raise Unauthenticated()

    def _from_proxy(self, config: AuthConfig, request: Request) -> Principal:
        """The identity an ingress vouches for, from one of our proxies only, as the config allows."""
        assert config.user_header is not None
        if peer_of(request.scope) not in self.trusted_proxies:
            raise Unauthenticated(
                f"{config.user_header} is accepted only from the proxies in ARTIFACT_PROXY_TRUSTED_PROXIES"
            )
        names = request.headers.getlist(config.user_header)
        if len(names) != 1 or not names[0].strip():
            raise Unauthenticated(f"Expected exactly one non-empty {config.user_header} header")
        user = names[0].strip()
        if not config.any_user and user not in config.users:
            raise Unauthenticated(f"Unknown user '{user}'")
        groups = set(config.groups_of(user))
        if config.groups_header:
            values = request.headers.getlist(config.groups_header)
            if len(values) > 1:
                raise InvalidParameter(f"Expected at most one {config.groups_header} header")
            sent = {g.strip() for g in (values[0] if values else "").split(",") if g.strip()}
            groups |= sent if "*" in config.accept_groups else sent & config.accept_groups
        return Principal(user, frozenset(groups))

    async def _basic(self, config: AuthConfig, credentials: str, request: Request) -> Principal:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (ValueError, binascii.Error) as exc:
            raise Unauthenticated("Malformed Basic credentials") from exc
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        if self._verified.get(key, 0) < time.monotonic():
            # Remembered credentials skip this, so an attacker's failures never lock out a user already in.
            encoded = config.users.get(user, {}).get("password")
            client = (request.scope.get("client") or ("-",))[0]
            known = str(encoded) if encoded else None
            if not await self.passwords.check(client, password, known, config.unknown_user_hash):
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
    """Allow or refuse `operation` on the canonical `path`; records who asked, for the audit log. Every route that
    touches a path passes here, so the rules that bind everyone (app.policy) are applied here too."""
    audit = {"op": operation.name.lower(), "path": path.canonical, "user": "-"}
    request.scope[AUDIT_KEY] = audit
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is not None:
        await _authorize_principal(request, authenticator, operation, path, audit)
    if operation != Operation.READ:
        refuse_skill_mutation(path)


def read_filter(request: Request) -> Callable[[ArtifactPath], bool]:
    """After `authorize(request, READ, directory)`: whether each file below the directory may be read, by the rules
    a GET of that file meets (the most specific prefix decides, so a rule on a subdirectory can refuse what the
    directory's allows). Links need no second look: walks never follow them (app/storage/base.py)."""
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is None:
        return lambda _: True
    principal: Principal = request.scope[PRINCIPAL_KEY]
    return lambda path: authenticator.allows(principal, Operation.READ, path)


async def _authorize_principal(
    request: Request, authenticator: Authenticator, operation: Operation, path: ArtifactPath, audit: dict[str, str]
) -> None:
    principal: Principal = request.scope.get(PRINCIPAL_KEY) or await authenticator.principal(request)
    request.scope[PRINCIPAL_KEY] = principal  # for `read_filter`, asked per file after this
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
