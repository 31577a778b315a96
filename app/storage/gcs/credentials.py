"""Which signer a GCS store's credentials give it. The store's capabilities follow from it and are fixed when the store
is built, so this reads files and the environment only, never the network:

1. `ARTIFACT_PROXY_GCS_SIGNING_SERVICE_ACCOUNT` set: IAM signBlob as that account, authenticated by whatever the
   credentials are (a key, a user, the metadata server); a key file of that very account signs locally instead.
2. A service-account key (the credentials file, else Application Default Credentials): the key, locally.
3. No credentials file and no ADC, so gcloud-aio takes tokens from the metadata server (GKE Workload Identity, GCE,
   Cloud Run): IAM signBlob as the metadata server's account, its email asked on first use. Nothing to configure on
   GKE. An emulator is reached without credentials, and a metadata server is likely absent where one runs, so there
   this takes `GCE_METADATA_HOST` (or `GCE_METADATA_ROOT`) set.
4. Anything else (user or external-account credentials, an emulator alone): no signer, so multipart uploads and
   presigned downloads are off (501) and the start log says what would turn them on.
"""

from __future__ import annotations

import os

from gcloud.aio.auth.token import get_service_data

from app.storage.gcs.client import GCSClient
from app.storage.gcs.iam import SETTING, IamSigner
from app.storage.gcs.signing import KeySigner, Signer, signing_key_from_service_data


def metadata_server_configured() -> bool:
    return bool(os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT"))


def choose_signer(client: GCSClient) -> tuple[Signer | None, str]:
    """The signer (rules above), and how the start log describes URL signing. Raises OSError or ValueError for a
    credentials file that cannot be read."""
    config = client.config
    data = get_service_data(config.credentials_file)  # what gcloud-aio's tokens use: the file, else ADC, else {}
    key = signing_key_from_service_data(data)
    account = config.signing_service_account
    if key is not None and account in (None, key.client_email):
        return KeySigner(key), f"with the key of {key.client_email}"
    if account is not None:
        return IamSigner(client, config), f"through IAM signBlob as {account}"
    if not data and config.credentials_file is None:
        if not client.emulated or metadata_server_configured():
            return IamSigner(client, config), "through IAM signBlob as the metadata server's account"
        return None, f"off (no service-account key; set GCE_METADATA_HOST or {SETTING} to sign through IAM)"
    kind = data.get("type") or "unreadable"
    return None, f"off ({kind} credentials hold no key; set {SETTING} to sign through IAM)"
