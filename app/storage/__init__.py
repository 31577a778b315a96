"""open_store(uri, settings): the scheme registry that picks a backend for a destination URI.

Backends are imported lazily so a deployment only needs (and only loads) the SDK of the store it uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import urlsplit

from app.settings import Settings
from app.storage.base import ArtifactStore

# scheme -> (module, factory name, pip extra that provides its SDK)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "": ("app.storage.local", "LocalStore", ""),
    "file": ("app.storage.local", "LocalStore", ""),
    "s3": ("app.storage.s3", "S3Store", "s3"),
    "gs": ("app.storage.gcs", "GCSStore", "gcs"),
    "wasbs": ("app.storage.azure", "AzureBlobStore", "azure"),
    "wasb": ("app.storage.azure", "AzureBlobStore", "azure"),
    "sftp": ("app.storage.sftp", "SFTPStore", "sftp"),
    "ftp": ("app.storage.ftp", "FTPStore", "ftp"),
    "ftps": ("app.storage.ftp", "FTPStore", "ftp"),
    "hdfs": ("app.storage.hdfs", "open_hdfs", ""),
    "viewfs": ("app.storage.hdfs", "open_hdfs", ""),
}


class StoreConfigError(Exception):
    """The destination cannot be served: unknown scheme, missing SDK, or a malformed URI."""


def scheme_of(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    # A Windows drive letter ("C:\\data") is a local path, not a scheme.
    return "" if len(scheme) == 1 else scheme


def redacted(uri: str) -> str:
    """The URI with any password replaced, for logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def open_store(uri: str, settings: Settings) -> ArtifactStore:
    scheme = scheme_of(uri)
    if scheme in ("abfss", "abfs"):
        raise StoreConfigError(
            f"{scheme}:// (Azure Data Lake Gen2) is not served: name the same account's Blob endpoint instead, "
            "wasbs://<container>@<account>.blob.core.windows.net/<path> (Blob and Data Lake share the data)"
        )
    if scheme not in REGISTRY:
        known = ", ".join(sorted(s + "://" for s in REGISTRY if s))
        raise StoreConfigError(
            f"Unsupported artifacts destination scheme {scheme!r} in {redacted(uri)!r}; use a path or {known}"
        )
    module_name, factory_name, extra = REGISTRY[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StoreConfigError(
            f"The {scheme}:// destination needs an optional dependency ({exc.name}): "
            f"pip install 'artifact-proxy[{extra}]'"
        ) from exc
    factory: Callable[[str, Settings], ArtifactStore] = getattr(module, factory_name)
    return factory(uri, settings)
