"""What a GCS destination is made of: the settings read from the environment and the parts of a `gs://` URI."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.storage import StoreConfigError

GRANULE = 256 * 1024  # resumable chunks must be multiples of this
PUBLIC_ENDPOINT = "https://storage.googleapis.com"


class GCSConfig(BaseSettings):
    """GCS-only settings. An API root means an emulator, reached anonymously (as gcloud-aio does)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    api_root: str | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_API_ROOT", "STORAGE_EMULATOR_HOST")
    )
    # Where signed URLs point (clients must reach it): default the API root, else storage.googleapis.com.
    signed_url_base: str | None = Field(None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_SIGNED_URL_BASE"))
    credentials_file: str | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_PROXY_GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS")
    )
    upload_chunk_size: int = Field(8 * 1024 * 1024, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_UPLOAD_CHUNK_SIZE"))
    download_chunk_size: int | None = Field(None, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_DOWNLOAD_CHUNK_SIZE"))

    @field_validator("api_root", "signed_url_base")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        value = value.strip().rstrip("/")
        return value if "://" in value else f"http://{value}"  # STORAGE_EMULATOR_HOST is often bare host:port

    @property
    def upload_block(self) -> int:
        return -(-self.upload_chunk_size // GRANULE) * GRANULE  # rounded up to a multiple of 256 KiB


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/prefix` -> (bucket, prefix without outer slashes)."""
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise StoreConfigError(f"Expected gs://bucket[/prefix], got {uri!r}")
    return parts.netloc, "/".join(s for s in parts.path.split("/") if s)
