"""The parts of a `wasbs://` destination URI (the settings are `settings.azure`, in `app/store_settings.py`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.storage import StoreConfigError


def parse_wasbs(uri: str) -> tuple[str, str, str, str]:
    """`wasbs://container@account.host/prefix` -> (container, account, host, prefix without outer slashes)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("wasbs", "wasb") or not parts.username or not parts.hostname:
        raise StoreConfigError(f"Use wasbs://<container>@<account>.blob.core.windows.net[/<prefix>], not {uri!r}")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return parts.username, parts.hostname.split(".", 1)[0], parts.hostname, prefix
