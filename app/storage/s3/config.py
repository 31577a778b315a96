"""The parts of an `s3://bucket/prefix` destination URI (the settings are `settings.s3`)."""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix")."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"Invalid S3 destination {uri!r}: expected s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")
