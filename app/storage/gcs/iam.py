"""URL signing through IAM's signBlob, for credentials that hold no key: GKE Workload Identity, GCE and Cloud Run (the
metadata server), or any credentials told which account to sign as.

signBlob (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/signBlob) answers
an RSA-SHA256 PKCS#1 v1.5 signature by one of the account's Google-managed keys, which is what GOOG4-RSA-SHA256 takes:
URLs are built as for a key file (`signing.py`) and only the signature comes from IAM, one call per URL, at most
CONCURRENCY at once. The caller needs `iam.serviceAccounts.signBlob` on the account (the role
roles/iam.serviceAccountTokenCreator, granted on the account itself when it signs as itself) and a token with the iam
or cloud-platform scope.

gcloud-aio's IamClient is not used: it hard-codes the API's URL, which then could not be configured or tested, and
makes its own session. Its Token is: it knows every credential type, and finds the metadata server as gcloud-aio's
storage calls do (`GCE_METADATA_HOST`, read when gcloud-aio is imported), so the email is asked of the same server.

Failures: a refusal that will not pass by itself (400, 403, 404, no service account) is CannotSign, a 501, with one
log line saying what to grant; throttling, IAM or the metadata server unreachable or failing, a rejected token, are
503; no answer in time is 504. No token, payload or signature is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import aiohttp
from gcloud.aio.auth import token as gcloud_token
from gcloud.aio.auth.token import Token

from app.errors import ArtifactProxyError, StorageMisconfigured, StorageTimeout, StorageUnavailable
from app.logs import printable
from app.storage.gcs.client import GCSClient, bounded
from app.storage.gcs.signing import CannotSign
from app.store_settings import GCSSettings

logger = logging.getLogger("artifact_proxy.storage.gcs")

# The narrowest scope signBlob takes (cloud-platform also does), asked of key, user and impersonated credentials. The
# metadata server is asked no scope (gcloud-aio sends none): its tokens carry the VM's access scopes, or on GKE the
# Workload Identity token's; a token without either scope is IAM's ACCESS_TOKEN_SCOPE_INSUFFICIENT, logged as such.
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
ROLE = "roles/iam.serviceAccountTokenCreator"
SETTING = "ARTIFACT_PROXY_GCS_SIGNING_SERVICE_ACCOUNT"


class _Failure(Exception):
    """A failed call, logged once by `sign` however many of a batch's calls fail the same way."""

    def __init__(self, error: ArtifactProxyError, log: str, level: int = logging.WARNING) -> None:
        super().__init__(log)
        self.error, self.log, self.level = error, log, level


class IamSigner:
    """Signs through IAM as the configured account, else as the metadata server's default account."""

    def __init__(self, client: GCSClient, config: GCSSettings) -> None:
        self._client, self._root = client, config.iam_api_root
        self._credentials_file = config.credentials_file
        self._email: str | None = config.signing_service_account
        self._email_lock = asyncio.Lock()
        self._token: Token | None = None
        self._token_session: aiohttp.ClientSession | None = None

    async def email(self) -> str:
        async with self._email_lock:  # the first requests of a worker would otherwise all ask
            if self._email is None:
                try:
                    self._email = await self._metadata_email()
                except _Failure as failure:
                    logger.log(failure.level, "%s", failure.log)
                    raise failure.error from None
                logger.info("URL signing through IAM signBlob as %s, the metadata server's account", self._email)
            return self._email

    async def sign(self, blobs: list[bytes]) -> list[bytes]:
        email = await self.email()
        url = f"{self._root}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}:signBlob"
        try:
            return await bounded(self._sign_one(url, email, blob) for blob in blobs)
        except _Failure as failure:
            logger.log(failure.level, "%s", failure.log)
            raise failure.error from None

    # one call ------------------------------------------------------------------------------------------------------
    async def _sign_one(self, url: str, email: str, blob: bytes) -> bytes:
        headers = {"Authorization": f"Bearer {await self._access_token()}"}
        body = {"payload": base64.b64encode(blob).decode()}
        with _transport("IAM signBlob"):
            async with self._client.session.post(
                url, json=body, headers=headers, timeout=self._client.timeout, allow_redirects=False
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        if status != 200:
            raise _refusal(status, text, email)
        try:
            return base64.b64decode(json.loads(text)["signedBlob"], validate=True)
        except (ValueError, KeyError, TypeError):
            error = StorageUnavailable("IAM answered signBlob with no signature")
            raise _Failure(error, f"IAM answered signBlob for {email} without a signature") from None

    async def _access_token(self) -> str:
        session = self._client.session
        if self._token is None or self._token_session is not session:  # a token is bound to the session it uses
            file = self._credentials_file
            self._token = Token(service_file=file, session=session, scopes=[IAM_SCOPE])  # type: ignore[arg-type]
            self._token_session = session
        try:
            value = await self._token.get()
        except Exception as exc:  # gcloud-aio raises whatever its refresh met, after its own retries
            error = StorageUnavailable("Could not obtain Google credentials to sign URLs; see the log")
            log = f"could not obtain an access token for IAM signBlob: {type(exc).__name__}"
            raise _Failure(error, log, logging.ERROR) from None
        if not value:
            raise _Failure(StorageUnavailable(), "the credentials gave an empty access token for IAM signBlob")
        return value

    async def _metadata_email(self) -> str:
        url = f"{gcloud_token.GCE_METADATA_BASE}/instance/service-accounts/default/email"
        with _transport("the metadata server"):
            async with self._client.session.get(
                url, headers={"Metadata-Flavor": "Google"}, timeout=self._client.timeout, allow_redirects=False
            ) as resp:
                text = (await resp.text(errors="replace")).strip()
                status = resp.status
        if status == 404:
            log = f"the metadata server names no service account for this workload: set {SETTING} to sign URLs"
            raise _Failure(CannotSign("No service account to sign URLs as; see the log"), log, logging.ERROR)
        if status != 200:
            error = StorageUnavailable("The metadata server did not say which account signs URLs")
            raise _Failure(error, f"the metadata server answered HTTP {status} when asked for its account's email")
        # Workload Identity Federation for GKE without a service account: a bare principal (PROJECT.svc.id.goog).
        if "@" not in text:
            log = (
                f"the metadata server's identity {printable(text[:200])!r} is not a service account, which signing "
                f"needs: annotate the Kubernetes service account with iam.gke.io/gcp-service-account, or set {SETTING} "
                f"to an account this identity holds {ROLE} on"
            )
            raise _Failure(CannotSign("No service account to sign URLs as; see the log"), log, logging.ERROR)
        return text


@contextlib.contextmanager
def _transport(what: str) -> Iterator[None]:
    """Transport failures of one call as `_Failure`s: no answer in time is 504, anything else unreachable 503."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise _Failure(StorageTimeout(f"{what} did not answer in time"), f"{what} timed out") from None
    except aiohttp.ClientError as exc:
        error = StorageUnavailable(f"{what} is unreachable ({type(exc).__name__}); URLs cannot be signed")
        raise _Failure(error, f"{what} is unreachable: {type(exc).__name__}") from None


def _refusal(status: int, body: str, email: str) -> _Failure:
    """What an IAM error answer means for the operator and the client."""
    reason, message = _google_error(body)
    said = f"IAM refused to sign as {email} (HTTP {status}{f' {reason}' if reason else ''}: {message})"
    if status in (400, 403, 404):
        if reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT":
            hint = "the access token lacks the iam or cloud-platform scope (on GCE: the VM's access scopes)"
        elif reason == "SERVICE_DISABLED":
            hint = "enable the IAM Service Account Credentials API (iamcredentials.googleapis.com) in its project"
        else:
            hint = f"grant {ROLE} on {email} to the server's identity (on the account itself when it signs as itself)"
        log = f"{said}: {hint}; multipart uploads and presigned downloads answer 501 until then"
        return _Failure(CannotSign("URL signing through IAM was refused; see the server log"), log, logging.ERROR)
    if status == 401 or status == 429 or status >= 500:
        return _Failure(StorageUnavailable(f"IAM signBlob is unavailable (HTTP {status})"), said)
    return _Failure(StorageMisconfigured(f"IAM signBlob answered HTTP {status}; see the log"), said, logging.ERROR)


def _google_error(body: str) -> tuple[str, str]:
    """The ErrorInfo reason and message of a Google API error answer (`{"error": {"message", "details"}}`)."""
    try:
        error = json.loads(body).get("error") or {}
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        reason = next((str(d["reason"]) for d in details if d.get("reason")), "")
        return reason, printable(str(error.get("message") or "")[:300])
    except (ValueError, AttributeError):
        return "", printable(body[:300])
