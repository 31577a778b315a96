"""V4 signed URLs for GCS (`GOOG4-RSA-SHA256`), signed locally with a service-account key.

gcloud-aio-storage has a signer, but it reads the host from `STORAGE_EMULATOR_HOST` at import time and always builds
`https://` URLs, so it cannot point at an emulator or a configurable endpoint. This one takes the base URL explicitly.
Only `host` is signed: the MLflow client sends nothing but the headers we return (none), and every HTTP client sets
`Host` itself. Algorithm: https://cloud.google.com/storage/docs/access-control/signing-urls-manually
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gcloud.aio.auth.token import get_service_data

from app.storage.gcs.config import PUBLIC_ENDPOINT

MAX_EXPIRY = 7 * 24 * 3600  # the V4 maximum


class SigningKey:
    """A service account's email and RSA key; its repr never shows the key."""

    __slots__ = ("client_email", "_key")

    def __init__(self, client_email: str, key: rsa.RSAPrivateKey) -> None:
        self.client_email = client_email
        self._key = key

    def __repr__(self) -> str:
        return f"SigningKey(client_email={self.client_email!r})"

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def signing_key_from_service_data(data: Mapping[str, Any]) -> SigningKey | None:
    """The key of a service-account JSON document, or None for any other credential type (user, metadata server)."""
    email, pem = data.get("client_email"), data.get("private_key")
    if data.get("type") != "service_account" or not isinstance(email, str) or not isinstance(pem, str):
        return None
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service-account private key is not an RSA key")
    return SigningKey(email, key)


def find_signing_key(credentials_file: str | None) -> SigningKey | None:
    """The key of the credentials gcloud-aio's token also uses (an explicit file, else ADC), if they are a service
    account; user and metadata-server credentials cannot sign locally."""
    return signing_key_from_service_data(get_service_data(credentials_file))


def _quote(value: str) -> str:
    return quote(value, safe="~")  # RFC 3986: only unreserved characters stay literal


def signed_url(
    key: SigningKey,
    *,
    method: str,
    bucket: str,
    object_name: str,
    expires_in: int,
    base_url: str = PUBLIC_ENDPOINT,
    query: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> str:
    """A path-style URL (`<base>/<bucket>/<object>`) that lets its holder send `method` until it expires."""
    now = now or datetime.now(UTC)
    timestamp, datestamp = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    base = urlsplit(base_url)
    host = base.netloc.lower()
    canonical_uri = f"{base.path.rstrip('/')}/{bucket}/{quote(object_name, safe='/~')}"
    scope = f"{datestamp}/auto/storage/goog4_request"
    params = {
        **(query or {}),
        "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
        "X-Goog-Credential": f"{key.client_email}/{scope}",
        "X-Goog-Date": timestamp,
        "X-Goog-Expires": str(min(max(expires_in, 1), MAX_EXPIRY)),
        "X-Goog-SignedHeaders": "host",
    }
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
    canonical_request = "\n".join(
        [method.upper(), canonical_uri, canonical_query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    string_to_sign = "\n".join(
        ["GOOG4-RSA-SHA256", timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signature = key.sign(string_to_sign.encode()).hex()
    return f"{base.scheme}://{base.netloc}{canonical_uri}?{canonical_query}&X-Goog-Signature={signature}"


class URLSigner:
    """Signed URLs for the objects of one bucket, as reached at `base_url`."""

    def __init__(self, key: SigningKey, bucket: str, base_url: str) -> None:
        self.key, self.bucket, self.base_url = key, bucket, base_url

    def url(self, method: str, object_name: str, expires_in: int, query: Mapping[str, str] | None = None) -> str:
        return signed_url(
            self.key,
            method=method,
            bucket=self.bucket,
            object_name=object_name,
            expires_in=expires_in,
            base_url=self.base_url,
            query=query,
        )

    def urls(self, method: str, names: list[str], expires_in: int) -> list[str]:
        """Sign a batch with one timestamp; meant for one thread hop (RSA signing costs ~1 ms per URL)."""
        now = datetime.now(UTC)
        key, bucket, base = self.key, self.bucket, self.base_url
        return [
            signed_url(key, method=method, bucket=bucket, object_name=n, expires_in=expires_in, base_url=base, now=now)
            for n in names
        ]
