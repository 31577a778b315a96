"""Pydantic bodies at the HTTP edge, in MLflow's JSON shapes (snake_case; empty repeated fields omitted)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.storage.base import CreatedMultipartUpload, FileInfo


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateMultipartRequest(_Body):
    path: str | None = None
    num_parts: object = None  # validated by hand so the message matches MLflow's


class CompletedPartBody(_Body):
    part_number: int = Field(ge=1)
    etag: str = ""
    url: str | None = None


class CompleteMultipartRequest(_Body):
    path: str | None = None
    upload_id: str | None = None
    parts: list[CompletedPartBody] | None = None


class AbortMultipartRequest(_Body):
    path: str | None = None
    upload_id: str | None = None


class ServerInfo(BaseModel):
    """MLflow 3.18's keys, in its order, as `mlflow server --artifacts-only` answers them (3.17 clients read only the
    multipart pair). This service keeps no tracking data (`store_type` null) and serves neither the AI gateway nor
    scheduled issue detection, so `features_enabled` says false where 3.18 says what its tracking half would do."""

    store_type: str | None = None
    workspaces_enabled: bool = False
    trace_archival_enabled: bool = False
    multipart_uploads_enabled: bool
    multipart_downloads_enabled: bool
    artifact_serving_enabled: bool = True
    skill_content_max_size: int
    skill_content_max_files: int = 10_000  # MLflow's fixed archive entry limit
    presigned_upload_run_id_supported: bool
    presigned_upload_model_id_supported: bool
    model_artifact_presigned_downloads_supported: bool
    features_enabled: dict[str, bool] = Field(
        default_factory=lambda: {"gateway": False, "scheduled_issue_detection": False}
    )
    tracking_auth: str = ""
    artifacts_presigned_only: bool


def file_info_json(info: FileInfo) -> dict[str, object]:
    if info.is_dir:
        return {"path": info.path, "is_dir": True}
    return {"path": info.path, "is_dir": False, "file_size": info.file_size}


def list_json(infos: list[FileInfo]) -> dict[str, object]:
    return {"files": [file_info_json(info) for info in infos]} if infos else {}


def created_upload_json(created: CreatedMultipartUpload, url_base: str) -> dict[str, object]:
    """`url_base` prefixes each part URL: a self-signing store's are relative to the service's API root."""
    body: dict[str, object] = {
        "credentials": [
            {"url": url_base + cred.url, "part_number": cred.part_number, "headers": cred.headers}
            for cred in created.credentials
        ]
    }
    if created.upload_id is not None:
        body["upload_id"] = created.upload_id
    return body
