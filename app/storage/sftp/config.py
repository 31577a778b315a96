"""What the SFTP backend is told: the `ARTIFACT_PROXY_SFTP_*` settings, the destination URI, and the key files they
name, checked once at startup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncssh

from app.storage import StoreConfigError
from app.storage.remote_paths import root_of
from app.store_settings import SFTPSettings


@dataclass(frozen=True, slots=True)
class SFTPTarget:
    host: str
    port: int | None
    username: str | None
    password: str | None
    root: str  # absolute, or relative to the login directory ("." for the login directory itself)


def parse_sftp_uri(uri: str) -> SFTPTarget:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "sftp" or not parts.hostname:
        raise StoreConfigError(f"Use sftp://[user@]host[:port]/path, not {uri!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise StoreConfigError(f"Invalid port in {uri!r}") from exc
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SFTPTarget(parts.hostname, port, user, password, root_of(unquote(parts.path)))


def check_files(config: SFTPSettings) -> None:
    """Read the key files once at startup, so a bad one stops the service with a clear message, not a 502 later."""
    files: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("KNOWN_HOSTS", config.known_hosts, asyncssh.read_known_hosts),
        ("IDENTITY_FILE", config.identity_file, asyncssh.read_private_key),
        ("CONFIG", config.ssh_config, lambda path: Path(path).read_text()),
    ]
    for name, value, read in files:
        if not value or value.lower() == "none":
            continue
        path = str(Path(value).expanduser())
        if not Path(path).is_file():
            raise StoreConfigError(f"ARTIFACT_PROXY_SFTP_{name}: the file {value!r} does not exist")
        try:
            read(path)
        except (OSError, ValueError) as exc:  # an encrypted key without the agent lands here too
            raise StoreConfigError(f"ARTIFACT_PROXY_SFTP_{name}: cannot use {value!r}: {exc}") from exc
