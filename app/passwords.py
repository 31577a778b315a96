"""Password hashes, and checking them without handing an attacker the server's threads or its user list.

A PBKDF2 check costs about 0.4 s of CPU by design. So checks run on their own capacity limiter, never in the
filesystem threads (a loop of wrong passwords would otherwise queue every download behind it); a few waiting checks
are the most a worker queues; an unknown user costs a check too, so timing does not tell which names exist; and a
client that keeps failing is made to wait, longer each time, before it may try again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread

from app.errors import ArtifactProxyError

PBKDF2_ITERATIONS = 600_000
CONCURRENT_CHECKS = 1  # per worker: PBKDF2 holds a core, and a 2-core machine still has one for everything else
WAITING_CHECKS = 16  # per worker: beyond this a check is refused at once rather than queued
FREE_FAILURES = 5  # failures a client may make before it has to wait (ARTIFACT_PROXY_LOGIN_FAILURES)
MAX_LOCKOUT = 300.0  # seconds; the wait doubles with every further failure up to this
FORGET_AFTER = 900.0  # seconds without a failure after which a client starts afresh
TRACKED_CLIENTS = 10_000  # memory bound for the failure table


class TooManyAttempts(ArtifactProxyError):
    error_code = "REQUEST_LIMIT_EXCEEDED"
    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def unknown_user_hash(iterations: int = PBKDF2_ITERATIONS) -> str:
    """What a user that does not exist is checked against: it costs what a real user's check costs (pass the
    configured users' iteration count), and no password matches it."""
    return f"pbkdf2_sha256${iterations}${base64.b64encode(b'unknown-user-salt').decode()}$"


def iterations_of(encoded: str) -> int | None:
    parts = encoded.split("$")
    return (
        int(parts[1]) if len(parts) == 4 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) < 10 else None
    )


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, binascii.Error):
        return False


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class FailedLogins:
    """Per client address: a few failures are free, then each one doubles the wait before the next attempt."""

    def __init__(self, free_failures: int = FREE_FAILURES, clock: Callable[[], float] = time.monotonic) -> None:
        self._free = free_failures
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def wait_left(self, client: str) -> float:
        entry = self._clients.get(client)
        if entry is None:
            return 0.0
        now = self._clock()
        if now - entry.last > FORGET_AFTER:
            del self._clients[client]
            return 0.0
        return max(0.0, entry.locked_until - now)

    def failed(self, client: str) -> None:
        now = self._clock()
        entry = self._clients.pop(client, None) or _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        if entry.count > self._free:
            entry.locked_until = now + min(MAX_LOCKOUT, 2.0 ** min(entry.count - self._free - 1, 20))
        self._clients[client] = entry  # most recent last, so the oldest go first when the table is full
        while len(self._clients) > TRACKED_CLIENTS:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


class PasswordChecker:
    """Verifies Basic passwords on a limiter of its own, with the failure back-off applied per client."""

    def __init__(self, free_failures: int = FREE_FAILURES, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = FailedLogins(free_failures, clock)
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiting = 0

    def _capacity(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created on first use, inside the worker's event loop
            self._limiter = anyio.CapacityLimiter(CONCURRENT_CHECKS)
        return self._limiter

    async def check(self, client: str, password: str, encoded: str | None, unknown_hash: str) -> bool:
        """Whether `password` matches `encoded` (None: the user does not exist, checked against `unknown_hash`)."""
        wait = self.failures.wait_left(client)
        if wait > 0:
            raise TooManyAttempts("Too many failed logins from this address; wait before trying again", wait)
        if self._waiting >= WAITING_CHECKS:
            raise TooManyAttempts("Too many logins are being checked; try again shortly", 1)
        self._waiting += 1
        try:
            ok = await anyio.to_thread.run_sync(
                verify_password, password, encoded or unknown_hash, limiter=self._capacity()
            )
        finally:
            self._waiting -= 1
        if ok and encoded:
            self.failures.succeeded(client)
            return True
        self.failures.failed(client)
        return False
