"""FTP reply codes and failures mapped onto the service's error hierarchy, for the FTP backend."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import aioftp

from app.errors import (
    ArtifactProxyError,
    InsufficientStorage,
    InvalidPath,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)

logger = logging.getLogger("artifact_proxy.storage.ftp")


def reply_code(exc: aioftp.StatusCodeError) -> str:
    return str(exc.received_codes[-1]) if exc.received_codes else ""


def refused(exc: aioftp.StatusCodeError) -> bool:
    """55x: the file or directory is missing, or the request is refused for it."""
    return reply_code(exc).startswith("55")


def unsupported(exc: aioftp.StatusCodeError) -> bool:
    return reply_code(exc) in ("500", "502", "504")


def _says_no_space(exc: aioftp.StatusCodeError) -> bool:
    """Servers that abort a transfer for a full disk with a generic 426/451 name the reason in the text."""
    text = " ".join(str(line) for line in getattr(exc, "info", []) or []).lower()
    return "no space" in text or "quota" in text


def map_error(exc: BaseException, what: str, where: str) -> ArtifactProxyError:
    """Translate aioftp and socket errors into the service's hierarchy; details go to the log."""
    logger.warning("ftp %s %r failed: %s: %s", what, where, type(exc).__name__, exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageMisconfigured("The FTPS server's certificate is not trusted: set ARTIFACT_PROXY_FTP_CA_FILE")
    if isinstance(exc, TimeoutError):
        return StorageTimeout(f"The FTP server did not answer in time while {what}")
    if isinstance(exc, aioftp.StatusCodeError):
        code = reply_code(exc)
        if code == "530":
            return StorageMisconfigured("The FTP server refused the login: check the user and password")
        if code in ("452", "552") or _says_no_space(exc):
            return InsufficientStorage(
                "Not enough space to store the artifact: the FTP server is out of space or quota"
            )
        if code == "553":
            return InvalidPath()
        if code.startswith("4"):  # FTP's transient negative replies, 421 "service not available" among them
            return StorageUnavailable(f"The FTP server is temporarily unavailable ({code})")
        if code.startswith("55"):
            return StorageMisconfigured(f"The FTP server refused {what} ({code}): check the account's rights")
        return ArtifactProxyError(f"The FTP server rejected a command while {what} ({code})")
    if isinstance(exc, OSError):
        return StorageUnavailable(f"The FTP server is unreachable ({type(exc).__name__})")
    return ArtifactProxyError(f"FTP error while {what}")


@contextmanager
def ftp_errors(what: str, where: str) -> Iterator[None]:
    try:
        yield
    except (aioftp.AIOFTPException, OSError, TimeoutError) as exc:
        raise map_error(exc, what, where) from exc


@contextmanager
def suppress_refused() -> Iterator[None]:
    try:
        yield
    except aioftp.StatusCodeError as exc:
        if not refused(exc):
            raise
