"""The backends' branches of the settings tree (`settings.s3`, `settings.gcs`, ...), and the pieces every branch is
made of. `app/settings.py` is the trunk; between them they list every setting."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, ByteSize, Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GCS_GRANULE = 256 * 1024  # GCS resumable chunks must be multiples of this
IAM_CREDENTIALS_ROOT = "https://iamcredentials.googleapis.com"
_BYTE_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def parse_size(value: object) -> object:
    """`5GiB`, `64KB` or a plain number of bytes, as `--max-upload-size` takes them."""
    return int(_BYTE_SIZE.validate_python(value)) if isinstance(value, str) else value


Bytes = Annotated[int, BeforeValidator(parse_size)]


def ours(name: str, *others: str) -> AliasChoices:
    """`ARTIFACT_PROXY_<NAME>` first, then the other names the setting is known by."""
    return AliasChoices(f"ARTIFACT_PROXY_{name.upper()}", *others)


def _base_url(value: str | None) -> str | None:
    if not value or not value.strip():
        return None
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"  # STORAGE_EMULATOR_HOST is often bare host:port


class Branch(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)


class S3Settings(Branch):
    """S3 and S3-compatible stores (`s3://bucket/prefix`)."""

    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"),
        description="S3 API endpoint",
    )
    public_endpoint_url: str | None = Field(
        None, validation_alias=ours("s3_public_endpoint_url"), description="Endpoint presigned URLs name, if other"
    )
    ignore_tls: bool = Field(
        False, validation_alias=AliasChoices("MLFLOW_S3_IGNORE_TLS"), description="Skip TLS checks"
    )
    ca_bundle: str | None = Field(None, validation_alias=AliasChoices("AWS_CA_BUNDLE"), description="CA bundle file")
    upload_extra_args: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("MLFLOW_S3_UPLOAD_EXTRA_ARGS"),
        description="JSON of extra PutObject/CreateMultipartUpload arguments (SSE, KMS key, ...)",
    )
    region: str | None = Field(
        None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"), description="Region"
    )
    max_attempts: int = Field(
        3, ge=1, validation_alias=ours("s3_max_attempts", "AWS_MAX_ATTEMPTS"), description="Tries per S3 call"
    )
    max_pool_connections: int = Field(
        64, ge=1, validation_alias=ours("s3_max_pool_connections"), description="Connections per worker"
    )
    part_size: Bytes = Field(
        8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB, validation_alias=ours("s3_part_size"), description="Streamed part size"
    )
    upload_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        validation_alias=ours("s3_upload_concurrency"),
        description="Parts of one streamed upload in flight (it buffers this many plus one)",
    )
    list_page_size: int = Field(
        1000, ge=1, le=1000, validation_alias=ours("s3_list_page_size"), description="Keys per ListObjects call"
    )


class GCSSettings(Branch):
    """Google Cloud Storage (`gs://bucket/prefix`). An API root means an emulator, reached anonymously."""

    api_root: str | None = Field(
        None, validation_alias=ours("gcs_api_root", "STORAGE_EMULATOR_HOST"), description="GCS API root (emulators)"
    )
    signed_url_base: str | None = Field(
        None,
        validation_alias=ours("gcs_signed_url_base"),
        description="Where signed URLs point; default the API root, else storage.googleapis.com",
    )
    credentials_file: str | None = Field(
        None,
        validation_alias=ours("gcs_credentials_file", "GOOGLE_APPLICATION_CREDENTIALS"),
        description="Service-account key file",
    )
    signing_service_account: str | None = Field(
        None,
        validation_alias=ours("gcs_signing_service_account"),
        description="Sign URLs through IAM signBlob as this service account; default, without a key file, the "
        "metadata server's account",
    )
    iam_api_root: str = Field(
        IAM_CREDENTIALS_ROOT,
        validation_alias=ours("gcs_iam_api_root"),
        description="IAM Credentials API root, for signBlob",
    )
    upload_chunk_size: Bytes = Field(
        8 * MiB, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_UPLOAD_CHUNK_SIZE"), description="Resumable chunk size"
    )
    download_chunk_size: Bytes | None = Field(
        None, ge=1, validation_alias=AliasChoices("MLFLOW_GCS_DOWNLOAD_CHUNK_SIZE"), description="Read chunk size"
    )

    @field_validator("api_root", "signed_url_base")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return _base_url(value)

    @field_validator("iam_api_root")
    @classmethod
    def _normalise_iam_root(cls, value: str) -> str:
        return _base_url(value) or IAM_CREDENTIALS_ROOT

    @property
    def upload_block(self) -> int:
        return -(-self.upload_chunk_size // GCS_GRANULE) * GCS_GRANULE  # rounded up to a multiple of 256 KiB


class AzureSettings(Branch):
    """Azure Blob Storage (`wasbs://container@account.blob.core.windows.net/prefix`). Secrets stay `SecretStr`."""

    connection_string: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AZURE_STORAGE_CONNECTION_STRING"), description="Connection string"
    )
    access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AZURE_STORAGE_ACCESS_KEY"), description="Account key"
    )
    block_size: Bytes = Field(
        8 * MiB, ge=64 * 1024, le=4000 * MiB, validation_alias=ours("azure_block_size"), description="Block size"
    )
    # The SDK's default retries wait over a minute, eating the client's 120 s answer budget: fail fast to a 503.
    max_retries: int = Field(3, ge=0, le=10, validation_alias=ours("azure_max_retries"), description="SDK retries")
    retry_backoff: float = Field(
        0.5, ge=0, validation_alias=ours("azure_retry_backoff"), description="Seconds before the first retry"
    )
    api_version: str | None = Field(None, validation_alias=ours("azure_api_version"), description="Storage API version")

    @property
    def can_sign(self) -> bool:
        """Whether these credentials can sign a SAS: an account key or a token credential (user delegation) can, a
        connection string that carries only a SAS cannot. Known before any client exists, so capabilities are too."""
        if self.connection_string is None:
            return True
        fields = dict(
            part.split("=", 1) for part in self.connection_string.get_secret_value().split(";") if "=" in part
        )
        return bool(fields.get("AccountKey"))


class SFTPSettings(Branch):
    """SFTP (`sftp://[user@]host[:port]/path`)."""

    known_hosts: str | None = Field(
        None,
        validation_alias=ours("sftp_known_hosts"),
        description="known_hosts file, or `none` to accept any host key (only on a network you trust)",
    )
    identity_file: str | None = Field(None, validation_alias=ours("sftp_identity_file"), description="Private key")
    ssh_config: str | None = Field(
        None, validation_alias=ours("sftp_config"), description="OpenSSH client config to read, not ~/.ssh/config"
    )
    keepalive: float = Field(15.0, ge=0, validation_alias=ours("sftp_keepalive"), description="Keep-alive seconds")


class FTPSettings(Branch):
    """FTP and FTPS (`ftp://[user@]host[:port]/path`)."""

    password: SecretStr | None = Field(
        None, validation_alias=ours("ftp_password"), description="Password, kept out of the URI"
    )
    tls: bool = Field(False, validation_alias=ours("ftp_tls"), description="AUTH TLS on ftp:// too")
    ca_file: str | None = Field(None, validation_alias=ours("ftp_ca_file"), description="CA file for FTPS")
    connections: int = Field(8, ge=1, le=64, validation_alias=ours("ftp_connections"), description="Pool size")
