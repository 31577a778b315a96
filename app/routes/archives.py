"""`GET artifacts/<dir>?archive=zip|tar|tar.gz` (HEAD too): the tree below a directory as one streamed archive, and
the `recursive=` and `glob=` parameters of the `artifacts?path=` listing. What each file must meet is `app.trees`;
how the archive is built, `app.archives`.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.archives import Archive, ArchiveAborted, archive_format
from app.deps import store_of
from app.downloads import content_disposition, until_disconnect
from app.errors import ArtifactNotFound, ArtifactProxyError, InvalidParameter, IsADirectoryArtifact
from app.globs import Glob, parse_glob
from app.paths import ArtifactPath, EntryPath
from app.schemas import list_json
from app.storage.base import FileInfo
from app.trees import collect

logger = logging.getLogger("artifact_proxy.archives")

ROOT_ARCHIVE_NAME = "artifacts"  # what an archive of the whole store is called: the root has no name


FLAG_VALUES = {"true": True, "True": True, "1": True, "false": False, "False": False, "0": False}


def flag(request: Request, name: str) -> bool:
    """Exactly the values the description lists (`app.openapi_operations`): anything else is a client mistake."""
    value = request.query_params.get(name)
    if value is None:
        return False
    if value not in FLAG_VALUES:
        raise InvalidParameter(f"{name} must be true or false, not '{value}'")
    return FLAG_VALUES[value]


def glob_of(request: Request) -> Glob | None:
    return parse_glob(request.query_params.get("glob"))


async def recursive_listing(request: Request, path: ArtifactPath) -> Response:
    """Every file below `path` (no directory entries), relative to it, sorted: the one-level listing's shape."""
    tree = await collect(request, path, glob_of(request), archive=False)
    return JSONResponse(list_json([FileInfo(entry.path, False, entry.size) for entry in tree.files]))


async def serve_archive(request: Request, path: ArtifactPath) -> Response:
    """`path` is authorized for READ; every file in the archive is checked again on its own (`trees.collect`)."""
    fmt = archive_format(request.query_params["archive"])
    store = store_of(request)
    if not path.is_root:
        try:
            await store.head(EntryPath(path.canonical))
        except (ArtifactNotFound, IsADirectoryArtifact):
            pass  # a directory, or nothing (an empty archive, as the listing of a missing path is empty)
        else:
            raise InvalidParameter(f"'{path.canonical}' is a file: archives are of directories")
    tree = await collect(request, path, glob_of(request), archive=True)
    archive = Archive(store, tree, fmt)
    headers = {
        "content-type": fmt.media_type,
        "content-disposition": content_disposition((path.basename or ROOT_ARCHIVE_NAME) + fmt.suffix),
    }
    if (length := archive.length) is not None:
        headers["content-length"] = str(length)
    if request.method == "HEAD":
        response = Response(status_code=200, headers=headers)
        response.body = b""  # the GET's headers, Content-Length included, and no body
        return response
    return ArchiveResponse(archive, headers)


class ArchiveResponse(Response):
    """Streams an archive; stops reading storage as soon as the client goes away."""

    def __init__(self, archive: Archive, headers: dict[str, str]) -> None:
        # Not Response.__init__: it would announce its empty `body` as `content-length: 0`; a tar.gz goes chunked.
        self.status_code, self.background, self.archive = 200, None, archive
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, lambda: self._stream(send), scope)
        except OSError:
            logger.debug("client went away during the archive of %s", scope.get("path"))

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.archive.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (ArchiveAborted, ArtifactProxyError) as exc:
            # The status and length are sent: returning with the body incomplete makes the server close the
            # connection, so the client sees a failed download, never a short archive it could take for whole.
            logger.warning("archive of '%s' aborted: %s", self.archive.tree.directory.canonical or "/", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
