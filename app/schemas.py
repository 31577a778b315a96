"""Pydantic bodies at the HTTP edge, in MLflow's JSON shapes (snake_case; empty repeated fields omitted).

Requests are parsed with the `*Request` models. Responses are built by the `*_json` functions below (a listing of
thousands of entries is not worth a model per entry), and the `*Response` models describe them in the OpenAPI
document (app/openapi.py); tests/test_openapi_fuzz.py holds the two to each other over HTTP.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.storage.base import CreatedMultipartUpload, FileInfo

MAX_PARTS = 10_000

# Fields read as optional, so that a missing one gets MLflow's own message from the route rather than pydantic's,
# but described as what a client must send.
_BodyPath = Annotated[
    str | None,
    WithJsonSchema(
        {"type": "string", "minLength": 1, "description": "the local file's path: only its basename is used"}
    ),
]
_NumParts = Annotated[
    object,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_PARTS},
                {"type": "string", "pattern": "^[0-9]+$", "description": "a number as text, as protobuf JSON allows"},
            ]
        }
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateMultipartRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"required": ["path", "num_parts"]})
    path: _BodyPath = None
    num_parts: _NumParts = None  # validated by hand so the message matches MLflow's


class CompletedPartBody(_Body):
    part_number: int = Field(ge=1)
    etag: str = ""
    url: str | None = None


class CompleteMultipartRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"required": ["path", "parts"]})
    path: _BodyPath = None
    upload_id: str | None = None
    parts: Annotated[list[CompletedPartBody] | None, Field(json_schema_extra={"minItems": 1})] = None


class AbortMultipartRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"required": ["path"]})
    path: _BodyPath = None
    upload_id: str | None = None


class ErrorResponse(_Reply):
    """MLflow's error JSON, for every refusal and fault on every route."""

    error_code: str
    message: str


class EmptyResponse(_Reply):
    """`{}`: what MLflow's server answers to an upload, a delete, a completed or aborted multipart upload."""


class FileInfoResponse(_Reply):
    path: str = Field(description="the entry's name, relative to the listed directory")
    is_dir: bool
    file_size: int | None = Field(None, ge=0, description="absent for directories")


class ListArtifactsResponse(_Reply):
    files: list[FileInfoResponse] = Field(default_factory=list, description="absent when the directory is empty")


class PartCredentialResponse(_Reply):
    url: str
    part_number: int = Field(ge=1)
    headers: dict[str, str]


class CreateMultipartResponse(_Reply):
    credentials: list[PartCredentialResponse]
    upload_id: str | None = Field(None, description="absent where the store has no upload ids (Azure)")


class PresignedDownloadResponse(_Reply):
    url: str
    headers: dict[str, str]
    file_size: int | None = Field(None, ge=0)


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
