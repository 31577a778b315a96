"""What the FTP backend is told: the `ARTIFACT_PROXY_FTP_*` settings and the destination URI."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.storage import StoreConfigError
from app.storage.remote_paths import root_of


class FTPConfig(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    password: SecretStr | None = Field(None, validation_alias="ARTIFACT_PROXY_FTP_PASSWORD")  # keeps it out of URIs
    tls: bool = Field(False, validation_alias="ARTIFACT_PROXY_FTP_TLS")  # AUTH TLS on ftp:// too
    ca_file: str | None = Field(None, validation_alias="ARTIFACT_PROXY_FTP_CA_FILE")
    connections: int = Field(8, ge=1, le=64, validation_alias="ARTIFACT_PROXY_FTP_CONNECTIONS")


@dataclass(frozen=True, slots=True)
class FTPTarget:
    host: str
    port: int
    user: str
    password: str
    root: str  # absolute, or relative to the login directory ("." for the login directory itself)
    tls: bool


def parse_ftp_uri(uri: str, config: FTPConfig) -> FTPTarget:
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
