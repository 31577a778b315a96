"""The self-signed URL signer (app/signing.py) on an injected clock: validity is never shorter than the TTL."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from app.errors import PermissionDenied
from app.signing import UrlSigner

FIELDS = ("download", ("a/b.txt",))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed(signer: UrlSigner, ttl: int) -> tuple[str, str]:
    query = parse_qs(signer.query(*FIELDS, ttl))
    return query["expires"][0], query["sig"][0]


@pytest.mark.parametrize("issued", [1_000_000.0, 1_000_000.001, 1_000_000.5, 1_000_000.999])
def test_a_url_is_valid_for_at_least_its_ttl(issued: float) -> None:
    clock = Clock(issued)
    signer = UrlSigner("secret", clock=clock)
    expires, sig = signed(signer, 5)
    assert int(expires) - issued >= 5  # rounded up: never a fraction of a second short
    assert int(expires) - issued < 6
    clock.now = issued + 5
    signer.verify(*FIELDS, expires, sig)  # still valid exactly ttl seconds later
    clock.now = int(expires)
    signer.verify(*FIELDS, expires, sig)  # and up to its expiry, inclusive
    clock.now = int(expires) + 0.001
    with pytest.raises(PermissionDenied, match="This URL has expired"):
        signer.verify(*FIELDS, expires, sig)


def test_signed_in_the_past_is_expired_now() -> None:
    secret = "secret"
    expires, sig = signed(UrlSigner(secret, clock=Clock(1_000_000.0)), 300)
    with pytest.raises(PermissionDenied, match="This URL has expired"):
        UrlSigner(secret, clock=Clock(1_000_301.0)).verify(*FIELDS, expires, sig)
    UrlSigner(secret, clock=Clock(1_000_300.0)).verify(*FIELDS, expires, sig)


def test_tampering_is_refused_before_expiry_is_looked_at() -> None:
    signer = UrlSigner("secret", clock=Clock(1_000_000.0))
    expires, sig = signed(signer, 60)
    with pytest.raises(PermissionDenied, match="Invalid URL signature"):
        signer.verify("download", ("a/other.txt",), expires, sig)
    with pytest.raises(PermissionDenied, match="Invalid URL signature"):
        signer.verify(*FIELDS, str(int(expires) + 3600), sig)
    with pytest.raises(PermissionDenied, match="Invalid URL signature"):
        UrlSigner("another secret", clock=Clock(1_000_000.0)).verify(*FIELDS, expires, sig)
    with pytest.raises(PermissionDenied, match="Missing or malformed"):
        signer.verify(*FIELDS, "soon", sig)


@pytest.mark.parametrize(
    "expires",
    [
        "¹",  # a digit to str.isdigit, not to int()
        "٣٠٠٠٠٠٠٠٠٠",  # Arabic-Indic digits: int() would take them
        "9" * 5000,  # more digits than int() converts
        "1e10",
        " 1000001000",
        "1000001000\n",
        "-1",
        "",
    ],
)
def test_malformed_expiry_is_refused_as_malformed(expires: str) -> None:
    signer = UrlSigner("secret", clock=Clock(1_000_000.0))
    _, sig = signed(signer, 1000)
    with pytest.raises(PermissionDenied, match="Missing or malformed URL signature"):
        signer.verify(*FIELDS, expires, sig)


@pytest.mark.parametrize("sig", ["é" * 64, "\u0430" * 64])
def test_non_ascii_signature_is_refused_as_malformed(sig: str) -> None:
    signer = UrlSigner("secret", clock=Clock(1_000_000.0))
    expires, _ = signed(signer, 1000)
    with pytest.raises(PermissionDenied, match="Missing or malformed URL signature"):
        signer.verify(*FIELDS, expires, sig)
