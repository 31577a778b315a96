"""Server-wide rules on what a request may do, whoever asks: MLflow 3.18's immutable `skills/` tree, and its
presigned-only mode (with our size-threshold variant).

Authorization (app/auth.py) decides who may touch a path; these rules hold for everyone, with auth on or off, and
each lives here once: `authorize` applies the skills rule to every write and delete, the artifact routes apply the
presigned-only rules, and startup refuses a presigned-only server whose destination cannot presign.
"""

from __future__ import annotations

from app.errors import PermissionDenied, PresignedOnly
from app.middleware import is_loopback
from app.paths import ArtifactPath
from app.settings import Settings
from app.storage import StoreConfigError, redacted
from app.storage.base import ArtifactStore, supports_multipart_upload, supports_presigned_download

SKILLS_ROOT = "skills"
WORKSPACES_ROOT = "workspaces"
SKILL_IMMUTABLE = "Skill upload content is immutable; register a new version instead"

# MLflow 3.18.0's refusals, word for word (mlflow/server/artifact_transfer.py): the client and UI of that release
# are the ones that understand presigned-only servers.
MLFLOW_PRESIGNED_ONLY_RELEASE = "3.18.0"
_UPGRADE = (
    f"Upgrade your MLflow client to match this server (MLflow {MLFLOW_PRESIGNED_ONLY_RELEASE}) or a newer version "
    "with presigned-only artifact support, then retry the {}. "
    "If you are using the MLflow UI, reload the page to refresh the server settings."
)
PRESIGNED_ONLY_UPLOAD = "This server requires artifacts to be uploaded directly to storage. " + _UPGRADE.format(
    "upload"
)
PRESIGNED_ONLY_DOWNLOAD = "This server requires artifacts to be downloaded directly from storage. " + _UPGRADE.format(
    "download"
)


def is_skill_upload(path: ArtifactPath) -> bool:
    """Whether `path` is in the tree where an MLflow tracking server keeps registered skill versions: first segment
    `skills` in any case, also after `workspaces/<ws>/`. A registered version points at these bytes, so changing
    them would change a version behind its users' backs. Only the first segment counts: `1/skills/x` is a run's."""
    segments = path.segments
    if len(segments) >= 2 and segments[0].lower() == WORKSPACES_ROOT:
        segments = segments[2:]
    return bool(segments) and segments[0].lower() == SKILLS_ROOT


def refuse_skill_mutation(path: ArtifactPath) -> None:
    """403 for a write or delete in the skills tree (PUT, DELETE, mpu/*); reads and listings stay open."""
    if is_skill_upload(path):
        raise PermissionDenied(SKILL_IMMUTABLE)


def refuse_proxied(settings: Settings, upload: bool) -> None:
    """Presigned-only mode: the bytes of every file go straight between client and storage, never through us."""
    if settings.artifacts_presigned_only:
        raise PresignedOnly(PRESIGNED_ONLY_UPLOAD if upload else PRESIGNED_ONLY_DOWNLOAD)


def presigned_only_above(size: int) -> PresignedOnly:
    """The refusal of a proxied upload over `presigned_only_min_size`: 3.18's shape, with what a 3.17 client must
    set to send such files as multipart."""
    return PresignedOnly(
        f"This server requires artifacts over {size} bytes to be uploaded directly to storage: set "
        f"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true and MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE to at most "
        f"{size + 1}, then retry the upload."
    )


def check_presigned_only(settings: Settings, store: ArtifactStore) -> None:
    """Refuse to serve in presigned-only mode a destination that cannot presign both ways: every transfer would be
    refused. Capabilities are fixed when the store is built, so this needs no storage round trip."""
    if not settings.artifacts_presigned_only:
        return
    uploads, downloads = supports_multipart_upload(store), supports_presigned_download(store)
    capabilities = store.capabilities
    # URLs that point back at us are signed only for a checked address (app.signing.trusted_base_url): without one,
    # every client would be refused both ways.
    unaddressed = capabilities.signs_own_urls and not (
        settings.public_url or settings.allowed_hosts or is_loopback(settings.host)
    )
    if uploads and downloads and not unaddressed:
        return
    if capabilities.presign_blocker:
        why = capabilities.presign_blocker
    elif not capabilities.can_presign:
        why = "it cannot presign URLs"
    elif not uploads:
        why = (
            "multipart uploads are switched off (ARTIFACT_PROXY_ENABLE_MULTIPART, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD)"
        )
    elif not downloads:
        why = (
            "presigned downloads are switched off "
            "(ARTIFACT_PROXY_ENABLE_PRESIGNED_DOWNLOAD, MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD)"
        )
    else:
        why = "its URLs need ARTIFACT_PROXY_PUBLIC_URL or MLFLOW_SERVER_ALLOWED_HOSTS "
        why += f"on a server bound to {settings.host}"
    raise StoreConfigError(
        f"MLFLOW_ARTIFACTS_PRESIGNED_ONLY needs a destination that presigns multipart uploads and downloads; "
        f"{redacted(settings.artifacts_destination)} does not: {why}"
    )
