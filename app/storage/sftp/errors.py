"""asyncssh and socket failures mapped onto the service's error hierarchy, for the SFTP backend."""

from __future__ import annotations

import logging

import asyncssh

from app.errors import (
    ArtifactNotFound,
    ArtifactProxyError,
    InsufficientStorage,
    InvalidPath,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)

logger = logging.getLogger("artifact_proxy.storage.sftp")


MISSING = (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath, asyncssh.SFTPNotADirectory)
# Errors after which the connection is unusable: drop it, reconnect on the next request.
CONNECTION_LOST = (
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    ConnectionError,
)
FAILURES = (asyncssh.Error, OSError, TimeoutError)  # what `map_error` translates


def map_error(exc: BaseException, what: str, where: str) -> ArtifactProxyError:
    """Translate asyncssh and socket errors into the service's hierarchy; details go to the log."""
    logger.warning("sftp %s %r failed: %s: %s", what, where, type(exc).__name__, exc)
    if isinstance(exc, MISSING):
        return ArtifactNotFound(where)
    if isinstance(exc, TimeoutError):
        return StorageTimeout(f"The SFTP server did not answer in time while {what}")
    if isinstance(exc, (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable, ValueError)):
        return StorageMisconfigured(
            f"The SFTP server refused the proxy's login or its host key is not trusted ({type(exc).__name__}): "
            "check the user, keys and ARTIFACT_PROXY_SFTP_KNOWN_HOSTS"
        )
    if isinstance(exc, (asyncssh.SFTPPermissionDenied, asyncssh.SFTPWriteProtect)):
        return StorageMisconfigured("The SFTP server denied access: check the account's rights on the destination")
    # Servers speaking SFTP v3 have no code for it: a full disk is a generic failure that names the reason.
    no_space = isinstance(exc, asyncssh.SFTPFailure) and any(
        words in str(exc.reason).lower() for words in ("no space", "quota")
    )
    if no_space or isinstance(exc, (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)):
        return InsufficientStorage(
            "Not enough space to store the artifact: the SFTP server is out of space or over quota"
        )
    if isinstance(exc, asyncssh.SFTPInvalidFilename):
        return InvalidPath()
    if isinstance(exc, (*CONNECTION_LOST, OSError)):
        return StorageUnavailable(f"The SFTP server is unreachable ({type(exc).__name__})")
    return ArtifactProxyError(f"SFTP error while {what}")
