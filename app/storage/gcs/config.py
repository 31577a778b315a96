"""The parts of a `gs://` destination URI, and the public endpoint (the settings are `settings.gcs`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.storage import StoreConfigError

PUBLIC_ENDPOINT = "https://storage.googleapis.com"


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/prefix` -> (bucket, prefix without outer slashes)."""
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise StoreConfigError(f"Expected gs://bucket[/prefix], got {uri!r}")
    return parts.netloc, "/".join(s for s in parts.path.split("/") if s)
