"""What an S3 destination is configured with: the `s3://bucket/prefix` URI, and `S3Config`, read from the variables
MLflow users already set (plus a few `ARTIFACT_PROXY_S3_*` tuning knobs)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class S3Config(BaseSettings):
    """S3 client settings, read from the variables MLflow users already set."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    )
    public_endpoint_url: str | None = Field(None, validation_alias="ARTIFACT_PROXY_S3_PUBLIC_ENDPOINT_URL")
    ignore_tls: bool = Field(False, validation_alias="MLFLOW_S3_IGNORE_TLS")
    ca_bundle: str | None = Field(None, validation_alias="AWS_CA_BUNDLE")
    upload_extra_args: dict[str, Any] = Field(default_factory=dict, validation_alias="MLFLOW_S3_UPLOAD_EXTRA_ARGS")
    region: str | None = Field(None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"))
    max_attempts: int = Field(
        3, ge=1, validation_alias=AliasChoices("ARTIFACT_PROXY_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS")
    )
    max_pool_connections: int = Field(64, ge=1, validation_alias="ARTIFACT_PROXY_S3_MAX_POOL_CONNECTIONS")
    part_size: int = Field(8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB, validation_alias="ARTIFACT_PROXY_S3_PART_SIZE")
    # Parts of one streamed upload sent at once; it buffers at most this many parts plus the one being received.
    upload_concurrency: int = Field(4, ge=1, le=64, validation_alias="ARTIFACT_PROXY_S3_UPLOAD_CONCURRENCY")
    list_page_size: int = Field(1000, ge=1, le=1000, validation_alias="ARTIFACT_PROXY_S3_LIST_PAGE_SIZE")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix")."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"Invalid S3 destination {uri!r}: expected s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")
