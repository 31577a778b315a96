"""Self-signed, expiring URLs for backends that cannot presign (the local directory).

A URL carries `expires` and `sig` = HMAC-SHA256(secret, purpose | fields | expires). Any change to the path, the
upload id, the part number or the expiry invalidates it. The secret is shared by every worker and replica through
settings, so a URL signed by one process is honoured by all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from contextvars import ContextVar
from urllib.parse import urlencode

from app.errors import PermissionDenied

# The externally visible base URL of the request being served (scheme://host[:port]); URLs we sign point back here.
current_base_url: ContextVar[str] = ContextVar("current_base_url", default="http://127.0.0.1:5000")


class UrlSigner:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode("utf-8")

    def _digest(self, purpose: str, fields: tuple[str, ...], expires: int) -> str:
        message = "\n".join((purpose, *fields, str(expires))).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, purpose: str, fields: tuple[str, ...], ttl: int) -> str:
        expires = int(time.time()) + ttl
        return urlencode({"expires": expires, "sig": self._digest(purpose, fields, expires)})

    def verify(self, purpose: str, fields: tuple[str, ...], expires: str | None, sig: str | None) -> None:
        """Raise PermissionDenied (403) for a missing, tampered or expired signature."""
        if not expires or not sig or not expires.isdigit():
            raise PermissionDenied("Missing or malformed URL signature")
        expected = self._digest(purpose, fields, int(expires))
        if not hmac.compare_digest(expected, sig):
            raise PermissionDenied("Invalid URL signature")
        if int(expires) < time.time():
            raise PermissionDenied("This URL has expired")
