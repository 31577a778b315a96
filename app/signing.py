"""Self-signed, expiring URLs for backends that cannot presign (the local directory).

A URL carries `expires` and `sig` = HMAC-SHA256(secret, purpose | fields | expires). Any change to the path, the
upload id, the part number or the expiry invalidates it. The secret is shared by every worker and replica through
settings, so a URL signed by one process is honoured by all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable
from urllib.parse import urlencode

from starlette.requests import Request

from app.errors import PermissionDenied
from app.middleware import HOST_CHECKED_KEY

# Routes of the URLs a self-signing store hands out (app/routes/signed.py serves them).
PART_ROUTE = "presigned-parts"
DOWNLOAD_ROUTE = "signed-artifacts"

# ASCII digits only, and few enough for int(): str.isdigit also takes '¹' or '٣', and int() refuses thousands of
# digits. Twelve digits reach far past any expiry we sign.
_EXPIRES = re.compile(r"[0-9]{1,12}")


def trusted_base_url(request: Request) -> str | None:
    """Where URLs we sign should point: the configured public URL, else the address the client used, but only if its
    Host passed an allow-list. An unchecked Host is whatever the client (or a confused proxy) wrote, and a URL built
    from it would send the next client's bytes there."""
    public_url: str | None = request.app.state.settings.public_url
    if public_url:
        return public_url.rstrip("/")
    if request.scope.get(HOST_CHECKED_KEY):
        return str(request.base_url).rstrip("/")
    return None


class UrlSigner:
    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode("utf-8")
        self._clock = clock  # POSIX seconds; tests pass their own to sign or verify at another time

    def _digest(self, purpose: str, fields: tuple[str, ...], expires: int) -> str:
        message = "\n".join((purpose, *fields, str(expires))).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, purpose: str, fields: tuple[str, ...], ttl: int) -> str:
        # Rounded up: a URL is valid for at least `ttl` seconds, never a fraction of a second less.
        expires = math.ceil(self._clock() + ttl)
        return urlencode({"expires": expires, "sig": self._digest(purpose, fields, expires)})

    def verify(self, purpose: str, fields: tuple[str, ...], expires: str | None, sig: str | None) -> None:
        """Raise PermissionDenied (403) for a missing, tampered or expired signature."""
        # compare_digest refuses non-ASCII text with a TypeError: a malformed signature, not a server fault.
        if not expires or not sig or not _EXPIRES.fullmatch(expires) or not sig.isascii():
            raise PermissionDenied("Missing or malformed URL signature")
        expected = self._digest(purpose, fields, int(expires))
        if not hmac.compare_digest(expected, sig):
            raise PermissionDenied("Invalid URL signature")
        if int(expires) < self._clock():
            raise PermissionDenied("This URL has expired")
