"""Where the FTP backend connects: the destination URI with `settings.ftp` (the password kept out of the URI)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from app.storage import StoreConfigError
from app.storage.remote_paths import root_of
from app.store_settings import FTPSettings


@dataclass(frozen=True, slots=True)
class FTPTarget:
    host: str
    port: int
    user: str
    password: str
    root: str  # absolute, or relative to the login directory ("." for the login directory itself)
    tls: bool


def parse_ftp_uri(uri: str, config: FTPSettings) -> FTPTarget:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("ftp", "ftps") or not parts.hostname:
        raise StoreConfigError(f"Use ftp://[user[:password]@]host[:port]/path (or ftps://), not {uri!r}")
    try:
        port = parts.port or 21
    except ValueError as exc:
        raise StoreConfigError(f"Invalid port in {uri!r}") from exc
    password = unquote(parts.password) if parts.password is not None else None
    if password is None:
        password = config.password.get_secret_value() if config.password else "anonymous@"
    user = unquote(parts.username) if parts.username else "anonymous"
    return FTPTarget(parts.hostname, port, user, password, root_of(unquote(parts.path)), scheme == "ftps" or config.tls)
