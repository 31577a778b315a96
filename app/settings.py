"""The one settings model: CLI flags > environment > defaults.

The CLI exports flags into the environment (`ARTIFACT_PROXY_*`) before uvicorn starts, so every worker process builds
the same `Settings()` from its environment. MLflow's own variable names are accepted where MLflow users already set
them (`MLFLOW_ARTIFACTS_DESTINATION`, `MLFLOW_STATIC_PREFIX`, ...).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "dev"}


def _env(name: str, *mlflow_names: str) -> AliasChoices:
    return AliasChoices(f"ARTIFACT_PROXY_{name.upper()}", *mlflow_names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    artifacts_destination: str = Field(
        "./mlartifacts", validation_alias=_env("artifacts_destination", "MLFLOW_ARTIFACTS_DESTINATION")
    )
    host: str = Field("127.0.0.1", validation_alias=_env("host", "MLFLOW_HOST"))
    port: int = Field(5000, validation_alias=_env("port", "MLFLOW_PORT"))
    workers: int | None = Field(None, validation_alias=_env("workers", "MLFLOW_WORKERS"))
    static_prefix: str = Field("", validation_alias=_env("static_prefix", "MLFLOW_STATIC_PREFIX"))
    log_level: str = Field("info", validation_alias=_env("log_level"))
    access_log: bool = Field(True, validation_alias=_env("access_log"))
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format"))
    metrics: bool = Field(True, validation_alias=_env("metrics"))
    shutdown_grace: int = Field(30, ge=0, validation_alias=_env("shutdown_grace"))
    keepalive_timeout: int = Field(5, ge=1, validation_alias=_env("keepalive_timeout"))
    # The request head (app/http_limits.py): 431 past this size (URL and header lines) or field count, and it must
    # be complete this many seconds after the connection opens or the next request's first byte (408, or a close).
    max_header_bytes: int = Field(64 * 1024, ge=1024, validation_alias=_env("max_header_bytes"))
    max_header_fields: int = Field(100, ge=1, validation_alias=_env("max_header_fields"))
    header_timeout: float = Field(10.0, gt=0, validation_alias=_env("header_timeout"))
    development: bool = Field(False, validation_alias=_env("development"))

    # Access control and audit (app/auth.py documents the config file).
    auth_config: str | None = Field(None, validation_alias=_env("auth_config"))
    audit_log: str | None = Field(None, validation_alias=_env("audit_log"))  # a file path, or "-" for stdout
    forbid_overwrite: bool = Field(False, validation_alias=_env("forbid_overwrite"))
    # Wrong passwords a client address may send before each further attempt waits (1 s, doubling, at most 5 min).
    login_failures: int = Field(5, ge=1, validation_alias=_env("login_failures"))

    # Our reverse proxies (addresses or CIDRs, comma-separated): only from these are X-Forwarded-For/-Proto and the
    # auth config's identity headers believed. uvicorn's FORWARDED_ALLOW_IPS is accepted as the same setting.
    trusted_proxies: str | None = Field(None, validation_alias=_env("trusted_proxies", "FORWARDED_ALLOW_IPS"))

    # Host allow-list and browser cross-origin policy, under MLflow's variable names (comma-separated).
    allowed_hosts: str | None = Field(None, validation_alias=_env("allowed_hosts", "MLFLOW_SERVER_ALLOWED_HOSTS"))
    cors_allowed_origins: str | None = Field(
        None, validation_alias=_env("cors_allowed_origins", "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    )

    # Uploads: bytes per write/thread hop, fsync before the atomic rename, and an optional size limit (413).
    upload_chunk_size: int = Field(1024 * 1024, ge=64 * 1024, validation_alias=_env("upload_chunk_size"))
    download_chunk_size: int = Field(1024 * 1024, ge=64 * 1024, validation_alias=_env("download_chunk_size"))
    fsync_uploads: bool = Field(True, validation_alias=_env("fsync_uploads"))
    upload_idle_timeout: float = Field(120.0, gt=0, validation_alias=_env("upload_idle_timeout"))
    io_threads: int = Field(8, ge=1, le=256, validation_alias=_env("io_threads"))
    max_upload_size: int | None = Field(None, ge=0, validation_alias=_env("max_upload_size"))
    # Crash leftovers (app/storage/local/sweep.py): an unlocked temp file untouched this long is removed; the sweep
    # runs at startup and then every sweep_interval seconds (0: at startup only).
    stale_upload_age: int = Field(60, ge=0, validation_alias=_env("stale_upload_age"))
    sweep_interval: float = Field(300.0, ge=0, validation_alias=_env("sweep_interval"))
    # A local destination keeps at least this many bytes free: below it /ready fails, and a PUT whose
    # Content-Length would cross it is refused with 507 before its body is read.
    min_free_bytes: int = Field(0, ge=0, validation_alias=_env("min_free_bytes"))

    # Multipart and presigned URLs.
    enable_multipart: bool = Field(True, validation_alias=_env("enable_multipart"))
    enable_presigned_download: bool = Field(True, validation_alias=_env("enable_presigned_download"))
    multipart_url_ttl: int = Field(3600, ge=60, validation_alias=_env("multipart_url_ttl"))
    presigned_download_ttl: int = Field(
        300, ge=1, validation_alias=_env("presigned_download_ttl", "MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS")
    )
    signing_secret: str = Field("", validation_alias=_env("signing_secret"))
    public_url: str | None = Field(None, validation_alias=_env("public_url"))
    presigned_only_min_size: int | None = Field(None, ge=0, validation_alias=_env("presigned_only_min_size"))

    # Object stores.
    storage_timeout: float = Field(
        120.0, gt=0, validation_alias=_env("storage_timeout", "MLFLOW_ARTIFACT_UPLOAD_DOWNLOAD_TIMEOUT")
    )

    @field_validator("static_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("--static-prefix must start with '/'")
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        weak = self.signing_secret.lower() in PLACEHOLDER_SECRETS or len(self.signing_secret) < 16
        if self.signing_secret and weak and not self.development:
            raise ValueError(
                "ARTIFACT_PROXY_SIGNING_SECRET is a placeholder or shorter than 16 characters; "
                "set a long random secret (e.g. `openssl rand -hex 32`), the same on every replica"
            )
        return self

    @staticmethod
    def split_list(value: str | None) -> list[str]:
        return [item.strip() for item in (value or "").split(",") if item.strip()]

    @property
    def api_prefixes(self) -> list[str]:
        return [f"{self.static_prefix}/api/2.0/mlflow-artifacts", f"{self.static_prefix}/ajax-api/2.0/mlflow-artifacts"]

    @property
    def server_info_paths(self) -> list[str]:
        return [
            f"{self.static_prefix}/api/3.0/mlflow/server-info",
            f"{self.static_prefix}/ajax-api/3.0/mlflow/server-info",
        ]
