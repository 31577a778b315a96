"""S3 SDK and transport failures mapped onto the service's error hierarchy, for the S3 backend (`app.storage.s3`)."""

from __future__ import annotations

import logging

import aiohttp
from botocore import exceptions as bce

from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    ArtifactProxyError,
    InvalidParameter,
    ResourceNotFound,
    StorageMisconfigured,
    StorageTimeout,
    StorageUnavailable,
)

logger = logging.getLogger("artifact_proxy.storage.s3")

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# Transient: retry later (5xx statuses are transient too, whatever their code).
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
_THROTTLED.add("ConditionalRequestConflict")  # two create-only writes racing: the retry settles it
_CLIENT_MISTAKE = set("EntityTooSmall EntityTooLarge InvalidPart InvalidPartOrder MalformedXML".split())
_WRONG_REGION = "the bucket is in another region: set AWS_DEFAULT_REGION to the bucket's region"
# Codes an operator must fix, with what to check. Messages never carry credentials.
_MISCONFIGURED = {
    "AccessDenied": "the credentials lack s3:GetObject/PutObject/DeleteObject/ListBucket permission on {where}",
    "403": "the credentials lack permission on {where} (a HEAD without s3:ListBucket also answers 403)",
    "AllAccessDisabled": "all access to {where} is disabled",
    "InvalidAccessKeyId": "the access key is unknown to the server: check AWS_ACCESS_KEY_ID or the AWS profile",
    "SignatureDoesNotMatch": "the signature was rejected: check AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL",
    "ExpiredToken": "the session token has expired: refresh the AWS credentials",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "NoSuchBucket": "the bucket of {where} does not exist: check the artifacts destination",
    "InvalidBucketName": "the bucket name of {where} is invalid",
    "PermanentRedirect": _WRONG_REGION,
    "301": _WRONG_REGION,
    "AuthorizationHeaderMalformed": _WRONG_REGION,
    "KMS.NotFoundException": "the KMS key in MLFLOW_S3_UPLOAD_EXTRA_ARGS does not exist",
    "KMS.DisabledException": "the KMS key in MLFLOW_S3_UPLOAD_EXTRA_ARGS is disabled",
}


def map_error(exc: Exception, op: str, where: str, path: str | None) -> ArtifactProxyError:
    """Translate an SDK/transport failure into the service's error hierarchy; log what operators need."""
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"S3 {op} on {where} failed: {code} (HTTP {status}) {error.get('Message', '')}"
        if code in _NOT_FOUND and path is not None:
            return ArtifactNotFound(path)
        if code == "NoSuchUpload":
            return ResourceNotFound(f"No such multipart upload for '{path}'")
        if code in _MISCONFIGURED:
            logger.error("%s", detail)
            return StorageMisconfigured(
                f"The artifact store is misconfigured: {_MISCONFIGURED[code].format(where=where)}"
            )
        if code in ("RequestTimeout", "RequestTimeoutException"):
            logger.warning("%s", detail)
            return StorageTimeout("The artifact store timed out")
        if code in _THROTTLED or status >= 500:
            logger.warning("%s", detail)
            return StorageUnavailable(f"The artifact store is unavailable or throttling ({code})")
        if code == "PreconditionFailed" and op in ("PutObject", "CompleteMultipartUpload"):
            return AlreadyExists(path or where)  # a create-only write (If-None-Match: *) found an object
        if code == "PreconditionFailed":
            return StorageUnavailable("The artifact changed while it was being read; retry", retry_after=1)
        if code in _CLIENT_MISTAKE:
            return InvalidParameter(f"S3 rejected the multipart upload: {code}: {error.get('Message', '')}")
        logger.error("%s", detail)
        return ArtifactProxyError(f"S3 {op} failed: {code}")
    if isinstance(exc, bce.ReadTimeoutError | TimeoutError):
        logger.warning("S3 %s on %s timed out: %s", op, where, exc)
        return StorageTimeout("The artifact store timed out")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError):
        logger.error("S3 %s on %s: no usable credentials: %s", op, where, type(exc).__name__)
        return StorageMisconfigured("The artifact store is misconfigured: no usable AWS credentials were found")
    if isinstance(
        exc, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError | aiohttp.ClientError | OSError
    ):
        logger.warning("S3 %s on %s: storage unreachable: %s", op, where, exc)
        return StorageUnavailable("The artifact store is unreachable")
    if isinstance(exc, bce.ParamValidationError):  # its text echoes parameter values, SSE-C keys included
        logger.error("S3 %s on %s: botocore rejected the request parameters", op, where)
        return ArtifactProxyError(f"S3 {op} failed: invalid request parameters")
    logger.error("S3 %s on %s failed unexpectedly", op, where, exc_info=exc)
    return ArtifactProxyError(f"S3 {op} failed")
