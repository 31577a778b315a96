"""Azure Blob Storage backend: `wasbs://<container>@<account>.blob.core.windows.net[/<prefix>]` (and `wasb://`).

One BlobServiceClient per process (built in `start`). Proxied uploads stream into staged blocks and become visible
only at Put Block List; presigned multipart hands out Put Block URLs carrying a blob SAS and commits the block ids it
derives itself; presigned downloads are read-only SAS URLs. Credentials, first found wins:
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCESS_KEY (account from the URI), DefaultAzureCredential.

The store (`store`) holds its parts: the client (`client`: SDK clients, blob names and properties), the block writer
(`writer`), the SAS signer (`sas`) and the block-list uploads (`multipart`); `blocks` is the block-id scheme the writer
and the uploads share, `errors` the SDK error mapping, `config` the destination URI (the settings are `settings.azure`).
"""

from app.storage.azure.store import AzureBlobStore

__all__ = ["AzureBlobStore"]
