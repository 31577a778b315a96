"""Every setting of the service, in one tree: `Settings` is the trunk, with a branch per backend (`settings.s3`,
`settings.gcs`, `settings.azure`, `settings.sftp`, `settings.ftp`, in `app/store_settings.py`). Precedence: CLI flags >
environment > defaults.

The CLI exports flags into the environment before uvicorn starts, so every worker process builds the same
`Settings()` from its environment. Each setting is read from its first name; the others are aliases, mostly the
variables MLflow users already set (`MLFLOW_ARTIFACTS_DESTINATION`, `MLFLOW_S3_ENDPOINT_URL`, ...). The README's
settings reference is generated from these fields (`artifact-proxy settings --markdown`) and checked by a test.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.store_settings import (
    AzureSettings,
    Branch,
    Bytes,
    FTPSettings,
    GCSSettings,
    MiB,
    S3Settings,
    SFTPSettings,
    ours,
)

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "dev"}
# Words of example values (ours said "example-only-replace-with-openssl-rand-hex-32"), never in `openssl rand -hex`.
PLACEHOLDER_WORDS = ("example", "replace", "change", "placeholder", "your-", "todo")


class Settings(Branch):
    """The service. Sizes take a number of bytes or a unit: `5GiB`, `512MB`."""

    # Every field names its variables; the prefix only keeps the branches from reading `S3`, `FTP`, ... as JSON.
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True, env_prefix="_")

    artifacts_destination: str = Field(
        "./mlartifacts",
        validation_alias=ours("artifacts_destination", "MLFLOW_ARTIFACTS_DESTINATION"),
        description="Local path, file://, s3://, gs://, wasbs://, sftp:// or ftp:// URI",
    )
    host: str = Field("127.0.0.1", validation_alias=ours("host", "MLFLOW_HOST"), description="Interface to bind")
    port: int = Field(5000, validation_alias=ours("port", "MLFLOW_PORT"), description="Port to listen on")
    workers: int | None = Field(
        None, ge=1, validation_alias=ours("workers", "MLFLOW_WORKERS"), description="Processes; default CPUs, max 4"
    )
    static_prefix: str = Field(
        "", validation_alias=ours("static_prefix", "MLFLOW_STATIC_PREFIX"), description="Path prefix of every route"
    )
    log_level: str = Field("info", validation_alias=ours("log_level"), description="debug, info, warning, error")
    access_log: bool = Field(True, validation_alias=ours("access_log"), description="A log line per request")
    log_format: Literal["text", "json"] = Field("text", validation_alias=ours("log_format"), description="text, json")
    metrics: bool = Field(True, validation_alias=ours("metrics"), description="Serve Prometheus `/metrics`")
    metrics_dir: str | None = Field(
        None,
        validation_alias=ours("metrics_dir", "MLFLOW_EXPOSE_PROMETHEUS", "PROMETHEUS_MULTIPROC_DIR"),
        description="Where workers share metric samples; default a fresh temporary directory",
    )
    shutdown_grace: int = Field(
        30, ge=0, validation_alias=ours("shutdown_grace"), description="Seconds in-flight transfers get on stop"
    )
    keepalive_timeout: int = Field(
        5, ge=1, validation_alias=ours("keepalive_timeout"), description="Idle seconds before a kept-alive close"
    )
    max_header_bytes: Bytes = Field(
        64 * 1024, ge=1024, validation_alias=ours("max_header_bytes"), description="Request head size, then 431"
    )
    max_header_fields: int = Field(
        100, ge=1, validation_alias=ours("max_header_fields"), description="Header fields, then 431"
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=ours("header_timeout"),
        description="Seconds for a request head to arrive, from the connection or its first byte (408)",
    )
    development: bool = Field(
        False, validation_alias=ours("development"), description="Allow a short or placeholder signing secret"
    )

    auth_config: str | None = Field(
        None, validation_alias=ours("auth_config"), description="TOML of users, tokens, rules: turns auth on"
    )
    audit_log: str | None = Field(
        None, validation_alias=ours("audit_log"), description="A JSON line per operation to this file (`-`: stdout)"
    )
    forbid_overwrite: bool = Field(
        False, validation_alias=ours("forbid_overwrite"), description="Every write is create-only (409)"
    )
    login_failures: int = Field(
        5,
        ge=1,
        validation_alias=ours("login_failures"),
        description="Wrong passwords per client address before each attempt waits (1 s doubling to 5 min, 429)",
    )
    trusted_proxies: str | None = Field(
        None,
        validation_alias=ours("trusted_proxies", "FORWARDED_ALLOW_IPS"),
        description="Reverse proxies (CIDRs): only theirs are X-Forwarded-* and identity headers believed",
    )
    allowed_hosts: str | None = Field(
        None,
        validation_alias=ours("allowed_hosts", "MLFLOW_SERVER_ALLOWED_HOSTS"),
        description="Host names served; default loopback names on a loopback bind, else any",
    )
    cors_allowed_origins: str | None = Field(
        None,
        validation_alias=ours("cors_allowed_origins", "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"),
        description="Browser origins allowed cross-origin",
    )
    x_frame_options: str = Field(
        "SAMEORIGIN",
        validation_alias=ours("x_frame_options", "MLFLOW_SERVER_X_FRAME_OPTIONS"),
        description="X-Frame-Options header: SAMEORIGIN, DENY, or NONE for no header",
    )
    disable_security_middleware: bool = Field(
        False,
        validation_alias=ours("disable_security_middleware", "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE"),
        description="Turn off the Host and origin checks and the security headers (testing only)",
    )

    upload_chunk_size: Bytes = Field(
        MiB, ge=64 * 1024, validation_alias=ours("upload_chunk_size"), description="Bytes per write and thread hop"
    )
    download_chunk_size: Bytes = Field(
        MiB, ge=64 * 1024, validation_alias=ours("download_chunk_size"), description="Bytes per read"
    )
    fsync_uploads: bool = Field(True, validation_alias=ours("fsync_uploads"), description="fsync before the rename")
    upload_idle_timeout: float = Field(
        120.0, gt=0, validation_alias=ours("upload_idle_timeout"), description="Seconds without body bytes (408)"
    )
    io_threads: int = Field(8, ge=1, le=256, validation_alias=ours("io_threads"), description="Filesystem threads")
    max_upload_size: Bytes | None = Field(
        None, ge=0, validation_alias=ours("max_upload_size"), description="Largest proxied upload (413)"
    )
    stale_upload_age: int = Field(
        60, ge=0, validation_alias=ours("stale_upload_age"), description="Seconds before an unlocked temp file is swept"
    )
    sweep_interval: float = Field(
        300.0, ge=0, validation_alias=ours("sweep_interval"), description="Seconds between sweeps (0: startup only)"
    )
    min_free_bytes: Bytes = Field(
        0,
        ge=0,
        validation_alias=ours("min_free_bytes"),
        description="Free space a local destination keeps: below it not ready, and PUTs that would cross it 507",
    )

    # On wherever the destination can presign: presigned transfers are the product. MLflow 3.18 servers read the
    # clients' variables as an operator's opt-in instead (default off); here they are aliases, so
    # `MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false` on the server turns multipart off.
    enable_multipart: bool = Field(
        True,
        validation_alias=ours("enable_multipart", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"),
        description="Offer multipart uploads where the store can",
    )
    enable_presigned_download: bool = Field(
        True,
        validation_alias=ours("enable_presigned_download", "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"),
        description="Offer presigned downloads where the store can",
    )
    multipart_url_ttl: int = Field(
        3600, ge=60, validation_alias=ours("multipart_url_ttl"), description="Seconds a part URL is valid"
    )
    presigned_download_ttl: int = Field(
        300,
        ge=1,
        validation_alias=ours("presigned_download_ttl", "MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS"),
        description="Seconds a download URL is valid",
    )
    signing_secret: str = Field(
        "",
        validation_alias=ours("signing_secret"),
        description="Key of self-signed URLs, 16+ characters, the same on every replica; default random per launch",
    )
    public_url: str | None = Field(
        None, validation_alias=ours("public_url"), description="Base URL clients reach, for self-signed URLs"
    )
    artifacts_presigned_only: bool = Field(
        False,
        validation_alias=ours("artifacts_presigned_only", "MLFLOW_ARTIFACTS_PRESIGNED_ONLY"),
        description="Refuse proxied uploads and downloads (403): clients must use multipart and presigned URLs",
    )
    presigned_only_min_size: Bytes | None = Field(
        None,
        ge=0,
        validation_alias=ours("presigned_only_min_size"),
        description="Proxied PUTs above this size are refused: clients must use multipart",
    )
    # Bounds on what one archive or recursive listing walks and sends, checked from the listing before a byte goes
    # out: a request naming a huge prefix gets a 400 telling it to narrow the path or the glob.
    archive_max_files: int = Field(
        100_000,
        ge=1,
        validation_alias=ours("archive_max_files"),
        description="Files in one archive or recursive listing, then 400",
    )
    archive_max_bytes: Bytes = Field(
        100 * 1024 * MiB,
        ge=0,
        validation_alias=ours("archive_max_bytes"),
        description="Bytes of files in one archive, then 400",
    )
    # server-info values MLflow 3.18 reads from its own variables: this service stores no skills and does no auth for
    # the tracking server, it only repeats what an operator sets for clients to see.
    skill_content_max_size: Bytes = Field(
        25 * MiB,
        validation_alias=ours("skill_content_max_size", "MLFLOW_SKILL_CONTENT_MAX_DECOMPRESSED_SIZE"),
        description="Told to clients in server-info",
    )
    server_info_tracking_auth: str = Field(
        "",
        validation_alias=ours("server_info_tracking_auth", "MLFLOW_SERVER_INFO_TRACKING_AUTH"),
        description="Told to clients in server-info (`tracking_auth`)",
    )
    storage_timeout: float = Field(
        120.0,
        gt=0,
        validation_alias=ours("storage_timeout", "MLFLOW_ARTIFACT_UPLOAD_DOWNLOAD_TIMEOUT"),
        description="Seconds per object-store call",
    )

    s3: S3Settings = Field(default_factory=S3Settings)
    gcs: GCSSettings = Field(default_factory=GCSSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    sftp: SFTPSettings = Field(default_factory=SFTPSettings)
    ftp: FTPSettings = Field(default_factory=FTPSettings)

    @field_validator("x_frame_options")
    @classmethod
    def _known_frame_option(cls, value: str) -> str:
        if value.upper() not in ("SAMEORIGIN", "DENY", "NONE"):
            raise ValueError("--x-frame-options must be SAMEORIGIN, DENY or NONE")
        return value.upper()

    @field_validator("static_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("--static-prefix must start with '/'")
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        secret = self.signing_secret.lower()
        weak = secret in PLACEHOLDER_SECRETS or len(secret) < 16 or any(word in secret for word in PLACEHOLDER_WORDS)
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


BRANCHES: dict[str, type[Branch]] = {
    "s3": S3Settings,
    "gcs": GCSSettings,
    "azure": AzureSettings,
    "sftp": SFTPSettings,
    "ftp": FTPSettings,
}


def env_names(model: type[BaseSettings], field: str) -> list[str]:
    """The variables a field is read from, the first one preferred."""
    alias = model.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices), f"{model.__name__}.{field} has no environment names"
    return [str(choice) for choice in alias.choices]
