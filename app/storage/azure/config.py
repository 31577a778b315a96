"""What an Azure destination is made of: the settings read from the environment and the parts of a `wasbs://` URI."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.storage import StoreConfigError

MiB = 1024 * 1024


class AzureConfig(BaseSettings):
    """Azure credentials and tuning from the environment; secrets stay `SecretStr` so they never reach a log."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    connection_string: SecretStr | None = Field(None, validation_alias="AZURE_STORAGE_CONNECTION_STRING")
    access_key: SecretStr | None = Field(None, validation_alias="AZURE_STORAGE_ACCESS_KEY")
    block_size: int = Field(8 * MiB, ge=64 * 1024, le=4000 * MiB, validation_alias="ARTIFACT_PROXY_AZURE_BLOCK_SIZE")
    # The SDK's default retries wait over a minute, eating the client's 120 s answer budget: fail fast to a 503.
    max_retries: int = Field(3, ge=0, le=10, validation_alias="ARTIFACT_PROXY_AZURE_MAX_RETRIES")
    retry_backoff: float = Field(0.5, ge=0, validation_alias="ARTIFACT_PROXY_AZURE_RETRY_BACKOFF")
    api_version: str | None = Field(None, validation_alias="ARTIFACT_PROXY_AZURE_API_VERSION")

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


def parse_wasbs(uri: str) -> tuple[str, str, str, str]:
    """`wasbs://container@account.host/prefix` -> (container, account, host, prefix without outer slashes)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("wasbs", "wasb") or not parts.username or not parts.hostname:
        raise StoreConfigError(f"Use wasbs://<container>@<account>.blob.core.windows.net[/<prefix>], not {uri!r}")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return parts.username, parts.hostname.split(".", 1)[0], parts.hostname, prefix
