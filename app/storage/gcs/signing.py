"""V4 signed URLs for GCS (`GOOG4-RSA-SHA256`): the request to sign is built here, once, whoever signs it.

A service-account key signs locally (`KeySigner`); without one, IAM's signBlob signs with a key Google holds for the
account (`app/storage/gcs/iam.py`). Both are RSA-SHA256 (PKCS#1 v1.5) over the same string-to-sign, so for one key
and one clock the URLs are byte-identical, and `credentials.py` decides which signer a store gets.

gcloud-aio-storage has a signer, but it reads the host from `STORAGE_EMULATOR_HOST` at import time and always builds
`https://` URLs, so it cannot point at an emulator or a configurable endpoint. This one takes the base URL explicitly.
Only `host` is signed: the MLflow client sends nothing but the headers we return (none), and every HTTP client sets
`Host` itself. Algorithm: https://cloud.google.com/storage/docs/access-control/signing-urls-manually
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import anyio.to_thread
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.errors import ArtifactProxyError

MAX_EXPIRY = 7 * 24 * 3600  # the V4 maximum
BUILD_INLINE = 64  # requests built on the event loop (tens of microseconds each); larger batches go to a thread


class CannotSign(ArtifactProxyError):
    """The configured signer cannot sign at all (a missing permission, no service account): an operator must act.
    Callers answer with the 501 the MLflow client falls back on; the reason is in the log."""

    error_code = "NOT_IMPLEMENTED"
    status_code = 501


class Signer(Protocol):
    """Who signs: the account the URLs name (`X-Goog-Credential`), and RSA-SHA256 signatures of a batch."""

    async def email(self) -> str: ...

    async def sign(self, blobs: list[bytes]) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class V4Request:
    url: str  # the URL without its signature
    string_to_sign: bytes

    def signed(self, signature: bytes) -> str:
        return f"{self.url}&X-Goog-Signature={signature.hex()}"


def _quote(value: str) -> str:
    return quote(value, safe="~")  # RFC 3986: only unreserved characters stay literal


def v4_request(
    *,
    email: str,
    method: str,
    bucket: str,
    object_name: str,
    expires_in: int,
    base_url: str,
    now: datetime,
    query: Mapping[str, str] | None = None,
) -> V4Request:
    """A path-style URL (`<base>/<bucket>/<object>`) that lets its holder send `method` until it expires, and the
    string whose signature completes it."""
    timestamp, datestamp = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    base = urlsplit(base_url)
    host = base.netloc.lower()
    canonical_uri = f"{base.path.rstrip('/')}/{bucket}/{quote(object_name, safe='/~')}"
    scope = f"{datestamp}/auto/storage/goog4_request"
    params = {
        **(query or {}),
        "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
        "X-Goog-Credential": f"{email}/{scope}",
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
    return V4Request(f"{base.scheme}://{base.netloc}{canonical_uri}?{canonical_query}", string_to_sign.encode())


class URLSigner:
    """Signed URLs for the objects of one bucket, as reached at `base_url`, signed by `signer`."""

    def __init__(self, signer: Signer, bucket: str, base_url: str) -> None:
        self.signer, self.bucket, self.base_url = signer, bucket, base_url

    async def url(
        self,
        method: str,
        object_name: str,
        expires_in: int,
        query: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> str:
        return (await self.urls(method, [object_name], expires_in, query, now))[0]

    async def urls(
        self,
        method: str,
        names: list[str],
        expires_in: int,
        query: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> list[str]:
        """Sign a batch with one timestamp (an upload's part URLs all expire together)."""
        email, when = await self.signer.email(), now or datetime.now(UTC)

        def build() -> list[V4Request]:
            return [
                v4_request(
                    email=email,
                    method=method,
                    bucket=self.bucket,
                    object_name=name,
                    expires_in=expires_in,
                    base_url=self.base_url,
                    now=when,
                    query=query,
                )
                for name in names
            ]

        # mpu/create may ask for 10,000 parts: hashing them all would stall every other request for a while.
        requests = build() if len(names) <= BUILD_INLINE else await anyio.to_thread.run_sync(build)
        signatures = await self.signer.sign([request.string_to_sign for request in requests])
        return [request.signed(signature) for request, signature in zip(requests, signatures, strict=True)]


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


class KeySigner:
    """Signs locally with a service-account key."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    async def email(self) -> str:
        return self.key.client_email

    async def sign(self, blobs: list[bytes]) -> list[bytes]:
        # RSA signing costs about 1 ms per URL: one thread hop for the batch keeps the event loop free.
        return await anyio.to_thread.run_sync(lambda: [self.key.sign(blob) for blob in blobs])
