"""What each route does, in OpenAPI terms: parameters, bodies and answers, keyed by endpoint and method.

app/openapi.py builds the document from the app's routes and this table; what every operation shares (tags, the
answers any route may give, HEAD from GET) is added there. Bodies are the models in app/schemas.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app import schemas
from app.routes.archives import FLAG_VALUES

Fragment = dict[str, Any]

# The version of the API described (OpenAPI's `info.version`), not of this build: a version number would tell anyone
# which releases' bugs to try.
API_VERSION = "2.0"


def _ref(model: type[BaseModel]) -> Fragment:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> Fragment:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _text(description: str) -> Fragment:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _error(name: str) -> Fragment:
    return {"$ref": f"#/components/responses/{name}"}


def _error_reply(description: str, **headers: str) -> Fragment:
    reply = _json(schemas.ErrorResponse, description)
    if headers:
        reply["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return reply


def _param(name: str, where: str, description: str, *, required: bool = False, **schema: Any) -> Fragment:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": {"type": "string", **schema},
    }


ARTIFACT_PATH = _param(
    "path",
    "path",
    "An artifact path: relative POSIX segments. `..`, absolute and Windows forms, backslashes, control characters, "
    "`#` and percent-encoded forms of any of them are refused with 400.",
    format="artifact-path",
)
LISTED_PATH = {
    **ARTIFACT_PATH,
    "in": "query",
    "required": False,
    "description": "The directory to list (the root if absent).",
}
GLOB = _param(
    "glob",
    "query",
    "Only paths (relative to the directory) matching this: `*` within a segment, `**` across them (`**/*.png`), `?`, "
    "`[abc]`. `..`, a leading `/` and control characters are 400.",
)
TREE = [
    _param(
        "archive",
        "query",
        "Send the directory's files as one archive instead (400 for a file); paths inside are relative to it. ZIP "
        "and tar carry a Content-Length; past ARTIFACT_PROXY_ARCHIVE_MAX_FILES or _MAX_BYTES, 400 before any byte.",
        enum=["zip", "tar", "tar.gz"],
    ),
    GLOB,
]
RECURSIVE = _param(
    "recursive",
    "query",
    "`true`: every file below the directory (no directory entries), relative to it, sorted; at most "
    "ARTIFACT_PROXY_ARCHIVE_MAX_FILES (else 400). `1`, `True`, `0` and `False` also; anything else is 400.",
    enum=list(FLAG_VALUES),
)
MULTIPART_DIR = {**ARTIFACT_PATH, "description": "The directory the upload goes to; the body's `path` names the file."}
RANGE = [
    _param("Range", "header", "One byte range (`bytes=0-99`, `bytes=-100`); several, or a malformed one, get it all."),
    _param("If-Range", "header", "An ETag or HTTP date: the range applies only if the artifact still matches it."),
]
SIGNATURE = [
    _param("expires", "query", "When the URL expires (POSIX seconds), as signed.", required=True),
    _param("sig", "query", "HMAC-SHA256 over the URL's purpose, fields and expiry.", required=True),
]
DIGESTS = [
    _param("Content-MD5", "header", "The body's MD5, base64: a mismatch is 400 and nothing is stored."),
    _param("Digest", "header", "`sha-256=<base64>`: a mismatch is 400 and nothing is stored."),
    _param("Repr-Digest", "header", "`sha-256=:<base64>:`: a mismatch is 400 and nothing is stored."),
    _param("If-None-Match", "header", "`*` makes the upload create-only: 409 if the path exists."),
]
BINARY = {"schema": {"type": "string", "format": "binary"}}
# Not required: an empty body is an empty artifact. Any Content-Type is accepted and none is stored.
UPLOAD_BODY = {"required": False, "content": {"application/octet-stream": BINARY}}
DOWNLOAD_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in {
        "Content-Length": "the bytes sent",
        "ETag": "the stored object's validator",
        "Last-Modified": "when it was written",
        "Repr-Digest": "`sha-256=:<base64>:` of the whole artifact, where it is known",
    }.items()
}

# Every refusal and fault is MLflow's error JSON; these are its occasions. Store faults may be retried: 502 (the
# store refused our credentials), 503 with Retry-After, 504, 507 (destination full), and 500 (a bug).
ERROR_REPLIES = {
    "InvalidRequest": _error_reply("Invalid path, parameter or request"),
    "Refused": _error_reply("Refused: Host not allowed, a cross-origin request, or the rules deny it"),
    "StoreFault": _error_reply("The artifact store failed or is unreachable", **{"Retry-After": "seconds, on 503"}),
    "Unauthenticated": _error_reply("No valid credentials", **{"WWW-Authenticate": "the Basic challenge"}),
    "SlowDown": _error_reply("Too many wrong passwords from this address: wait", **{"Retry-After": "seconds"}),
    "BodyStalled": _error_reply("The body stopped arriving for longer than the idle timeout"),
    "TooLarge": _error_reply("The body is over the size limit"),
    "NotFound": _error_reply("No such artifact, or upload"),
    "Exists": _error_reply("Create-only (If-None-Match, or overwrites forbidden) and the path exists"),
    "RangeNotSatisfiable": _error_reply("The range starts past the end", **{"Content-Range": "`bytes */<size>`"}),
    "Unsupported": _error_reply("The destination cannot presign: the message is the one MLflow's fallback looks for"),
}
# Answers any route may give: the Host check and duplicate headers (middleware), and store faults.
COMMON = {"400": _error("InvalidRequest"), "403": _error("Refused"), "5XX": _error("StoreFault")}
AUTHENTICATED = {"401": _error("Unauthenticated"), "429": _error("SlowDown")}
BODY = {"408": _error("BodyStalled"), "413": _error("TooLarge")}
NOT_FOUND = {"404": _error("NotFound")}
EXISTS = {"409": _error("Exists")}
UNSUPPORTED = {"501": _error("Unsupported")}
# Optional: the schemes apply only with --auth-config, and saying so whatever the config tells no one whether it is on.
SECURED: list[dict[str, list[str]]] = [{}, {"basic": []}, {"bearer": []}]
SECURITY_SCHEMES = {
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "With --auth-config: MLFLOW_TRACKING_USERNAME/PASSWORD",
    },
    "bearer": {"type": "http", "scheme": "bearer", "description": "With --auth-config: MLFLOW_TRACKING_TOKEN"},
}


def _download(summary: str, parameters: list[Fragment], auth: bool = True) -> Fragment:
    ranged_headers = {**DOWNLOAD_HEADERS, "Content-Range": {"required": True, "schema": {"type": "string"}}}
    return {
        "summary": summary,
        "parameters": [*parameters, *RANGE],
        "responses": {
            "200": {"description": "The artifact", "headers": DOWNLOAD_HEADERS, "content": {"*/*": BINARY}},
            "206": {"description": "The range asked for", "headers": ranged_headers, "content": {"*/*": BINARY}},
            "416": _error("RangeNotSatisfiable"),
            **NOT_FOUND,
            **(AUTHENTICATED if auth else {}),
        },
    }


def _multipart(summary: str, request: type[BaseModel], reply: Fragment, extra: dict[str, Fragment]) -> Fragment:
    return {
        "summary": summary,
        "parameters": [MULTIPART_DIR],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {"200": reply, **extra, **BODY, **AUTHENTICATED, **UNSUPPORTED},
    }


# (endpoint name, method) -> the operation, less what every operation shares. The multipart routes are served with
# and without a trailing `/{path}` (the MLflow client omits an empty one); both get the same entry.
OPERATIONS: dict[tuple[str, str], Fragment] = {
    ("list_artifacts", "GET"): {
        "summary": "List a directory, one level (or, with recursive=true, every file below it)",
        "parameters": [LISTED_PATH, RECURSIVE, GLOB],
        "responses": {"200": _json(schemas.ListArtifactsResponse, "The entries"), **AUTHENTICATED},
    },
    ("artifact", "GET"): _download("Download an artifact, or a directory as an archive", [ARTIFACT_PATH, *TREE]),
    ("artifact", "PUT"): {
        "summary": "Upload an artifact, streamed and atomic",
        "parameters": [ARTIFACT_PATH, *DIGESTS],
        "requestBody": UPLOAD_BODY,
        "responses": {
            "200": {
                **_json(schemas.EmptyResponse, "Stored"),
                "headers": {"Repr-Digest": DOWNLOAD_HEADERS["Repr-Digest"]},
            },
            **EXISTS,
            **BODY,
            **AUTHENTICATED,
        },
    },
    ("artifact", "DELETE"): {
        "summary": "Delete an artifact or a directory tree",
        "parameters": [ARTIFACT_PATH],
        "responses": {"200": _json(schemas.EmptyResponse, "Deleted"), **NOT_FOUND, **AUTHENTICATED},
    },
    ("create_upload", "POST"): _multipart(
        "Start a multipart upload: part URLs signed for the client",
        schemas.CreateMultipartRequest,
        _json(schemas.CreateMultipartResponse, "The upload and its part URLs"),
        EXISTS,
    ),
    ("complete_upload", "POST"): _multipart(
        "Complete a multipart upload from its parts",
        schemas.CompleteMultipartRequest,
        _json(schemas.EmptyResponse, "Completed"),
        {**NOT_FOUND, **EXISTS},
    ),
    ("abort_upload", "POST"): _multipart(
        "Abort a multipart upload", schemas.AbortMultipartRequest, _json(schemas.EmptyResponse, "Aborted"), NOT_FOUND
    ),
    ("presigned_download", "GET"): {
        "summary": "A URL to download an artifact from, signed for the client",
        "parameters": [ARTIFACT_PATH],
        "responses": {
            "200": _json(schemas.PresignedDownloadResponse, "The URL"),
            **NOT_FOUND,
            **AUTHENTICATED,
            **UNSUPPORTED,
        },
    },
    ("upload_part", "PUT"): {
        "summary": "Upload one part to a self-signed part URL (local destination)",
        "parameters": [
            _param("upload_id", "path", "The upload, as signed"),
            _param("part", "path", "The part number, as signed"),
            *SIGNATURE,
        ],
        "requestBody": UPLOAD_BODY,
        "responses": {
            "200": {
                **_json(schemas.EmptyResponse, "Stored"),
                "headers": {"ETag": {"required": True, "schema": {"type": "string"}}},
            },
            **NOT_FOUND,
            **BODY,
        },
    },
    ("signed_download", "GET"): _download(
        "Download from a self-signed URL (local destination)", [ARTIFACT_PATH, *SIGNATURE], auth=False
    ),
    ("server_info", "GET"): {
        "summary": "What the server offers (multipart uploads, presigned downloads): the MLflow client's probe",
        "responses": {"200": _json(schemas.ServerInfo, "Capabilities")},
    },
    ("health", "GET"): {"summary": "Liveness", "responses": {"200": _text("`OK`")}},
    ("ready", "GET"): {"summary": "Readiness: the store answers", "responses": {"200": _text("`OK`")}},
    ("metrics_endpoint", "GET"): {"summary": "Prometheus metrics", "responses": {"200": _text("The exposition")}},
    ("openapi", "GET"): {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
    },
    ("swagger_ui_html", "GET"): {
        "summary": "Swagger UI over this document (its scripts load from a CDN, in the browser)",
        "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    },
}
TAGS = {
    "list_artifacts": "artifacts",
    "artifact": "artifacts",
    "create_upload": "multipart",
    "complete_upload": "multipart",
    "abort_upload": "multipart",
    "presigned_download": "multipart",
    "upload_part": "signed URLs",
    "signed_download": "signed URLs",
}
REQUEST_MODELS = [schemas.CreateMultipartRequest, schemas.CompleteMultipartRequest, schemas.AbortMultipartRequest]
RESPONSE_MODELS = [
    schemas.ErrorResponse,
    schemas.EmptyResponse,
    schemas.ListArtifactsResponse,
    schemas.CreateMultipartResponse,
    schemas.PresignedDownloadResponse,
    schemas.ServerInfo,
]
