"""Blob SAS tokens, for the Put Block URLs of presigned multipart and for presigned downloads. A SAS is signed with the
account key when there is one, otherwise with a user delegation key obtained through the token credential (and cached
until it nears expiry: one key serves many URLs).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas

from app.paths import ArtifactPath
from app.storage.azure.client import AzureClient
from app.storage.azure.errors import error_code, storage_errors


class SasSigner:
    """Signs blob SAS tokens for the blobs of one client's container."""

    def __init__(self, client: AzureClient) -> None:
        self._client = client
        self._delegation: tuple[UserDelegationKey, datetime] | None = None  # the cached key and its expiry

    async def sign(self, path: ArtifactPath, perm: str, ttl: int, unsupported: type[Exception], **extra: str) -> str:
        """A SAS granting `perm` on the blob of `path` for `ttl` seconds; `unsupported` is raised when the identity
        may not sign (no user delegation right), so the caller answers 501 rather than 502."""
        now = datetime.now(UTC)
        start, expiry = now - timedelta(minutes=5), now + timedelta(seconds=ttl)  # start earlier: clock skew
        common: dict[str, Any] = {"permission": BlobSasPermissions.from_string(perm), "start": start, "expiry": expiry}
        common.update(extra)
        client = self._client
        args = (client.container.account_name or client.account, client.container_name, client.blob_name(path))
        if client.account_key:
            return generate_blob_sas(*args, account_key=client.account_key, **common)
        with storage_errors("sign", path.canonical):
            try:
                key = await self._delegation_key(now, expiry)
            except HttpResponseError as exc:
                # The identity may read and write blobs yet lack the right to get a user delegation key.
                if error_code(exc) == "AuthorizationPermissionMismatch":
                    raise unsupported() from exc
                raise
        return generate_blob_sas(*args, user_delegation_key=key, **common)

    async def _delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        if self._delegation is not None and self._delegation[1] >= expiry:
            return self._delegation[0]
        key_expiry = min(expiry + timedelta(hours=12), now + timedelta(days=7))  # Azure's cap is 7 days
        key = await self._client.service.get_user_delegation_key(now - timedelta(minutes=5), key_expiry)
        self._delegation = (key, key_expiry)
        return key
