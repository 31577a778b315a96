"""Downloads: Content-Type, Content-Disposition, ETag/Last-Modified, Range/If-Range, and the streamed response.

One place owns these protocol rules for every backend (local files and streamed objects alike).
"""

from __future__ import annotations

import functools
import logging
import mimetypes
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.integrity import repr_digest
from app.paths import ArtifactPath
from app.storage.base import ObjectMeta, ReadHandle

logger = logging.getLogger("artifact_proxy.artifacts")

# Responses up to this size go out in one or two sends; only longer ones are worth a disconnect watcher task.
WATCH_DISCONNECT_ABOVE = 1024 * 1024

# MLflow serves these as text/plain (mlflow/utils/mime_type_utils.py), by extension or by the whole extensionless name.
TEXT_EXTENSIONS = frozenset(
    "txt log err cfg conf cnf cf ini properties prop hocon toml yaml yml xml json js py py3 csv tsv md rst ipynb "
    "mlmodel mlproject".split()
)
# A private table built from Python's defaults, so answers never depend on the host's /etc/mime.types.
_MIME = mimetypes.MimeTypes(filenames=())
_TOKEN_SAFE = re.compile(r"^[A-Za-z0-9!#$&+.^_`|~-]+$")
_QUOTED_SAFE = re.compile(r"^[\x20-\x7e]+$")


def content_type(basename: str) -> str:
    ext = basename.rsplit(".", 1)[-1] if "." in basename else basename
    if ext.lower() in TEXT_EXTENSIONS:
        return "text/plain"
    return _guessed_type(last_suffixes(basename))


def last_suffixes(basename: str) -> str:
    """`"".join(PurePosixPath(basename).suffixes[-2:])` without building a path on every download."""
    if basename.endswith("."):
        return ""
    parts = basename.lstrip(".").split(".")[1:][-2:]
    return "".join(f".{part}" for part in parts)


@functools.lru_cache(maxsize=1024)
def _guessed_type(suffixes: str) -> str:
    """By the last two suffixes, all `guess_type` reads of a name (`.tar.gz`): one lookup per kind of file."""
    guessed, _ = _MIME.guess_type("artifact" + suffixes, strict=False)
    return guessed or "application/octet-stream"


def content_disposition(basename: str) -> str:
    """Always `attachment`; non-ASCII names get an ASCII fallback plus RFC 5987 `filename*`; nothing is injectable."""
    if _TOKEN_SAFE.match(basename):
        return f"attachment; filename={basename}"
    if _QUOTED_SAFE.match(basename) and '"' not in basename and "\\" not in basename and ";" not in basename:
        return f'attachment; filename="{basename}"'
    ascii_name = unicodedata.normalize("NFKD", basename).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"[^A-Za-z0-9!#$&+.^_`|~-]", "", ascii_name) or "download"
    return f"attachment; filename={ascii_name}; filename*=UTF-8''{quote(basename, safe='')}"


def validators(meta: ObjectMeta) -> dict[str, str]:
    headers: dict[str, str] = {}
    if meta.etag:
        headers["etag"] = meta.etag
    if meta.last_modified is not None:
        headers["last-modified"] = http_date(int(meta.last_modified))
    if meta.sha256:
        headers["repr-digest"] = repr_digest(meta.sha256)
    return headers


@functools.lru_cache(maxsize=4096)
def http_date(seconds: int) -> str:
    """An HTTP date has whole seconds; most files served were written in a few of them."""
    return formatdate(seconds, usegmt=True)


def base_headers(basename: str, meta: ObjectMeta) -> dict[str, str]:
    return {
        "content-type": content_type(basename),
        "content-disposition": content_disposition(basename),
        "accept-ranges": "bytes",
        "cache-control": "no-cache",
        **validators(meta),
    }


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a `Range` header asks for; None means "send everything" (absent, malformed or multi-range:
    RFC 9110 lets a server ignore those). Raises RangeNotSatisfiable for a well-formed range past the end."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # suffix: the last N bytes
            length = int(last)
            if length <= 0:
                raise RangeNotSatisfiable()
            return ByteRange(max(size - length, 0), size) if size else _unsatisfiable()
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None
    if start >= size:
        raise RangeNotSatisfiable()
    return ByteRange(start, min(end, size))


def _unsatisfiable() -> ByteRange:
    raise RangeNotSatisfiable()


def if_range_matches(if_range: str | None, meta: ObjectMeta) -> bool:
    """Whether a conditional range still applies: a strong ETag match, or an HTTP date equal to Last-Modified."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return bool(meta.etag) and value == meta.etag and not value.startswith("W/")
    if meta.last_modified is None:
        return False
    try:
        return int(parsedate_to_datetime(value).timestamp()) == int(meta.last_modified)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year or zone offset past a C int
        return False


def plan_download(
    request_headers: Headers, path: ArtifactPath, meta: ObjectMeta
) -> tuple[int, dict[str, str], ByteRange]:
    """Status, headers and byte range for a GET/HEAD, honouring Range and If-Range."""
    headers = base_headers(path.basename, meta)
    status, byte_range = 200, ByteRange(0, meta.size)
    if if_range_matches(request_headers.get("if-range"), meta):
        try:
            requested = parse_range(request_headers.get("range"), meta.size)
        except RangeNotSatisfiable:
            headers["content-range"] = f"bytes */{meta.size}"
            return 416, headers, byte_range
        if requested is not None:
            status, byte_range = 206, requested
            headers["content-range"] = f"bytes {requested.start}-{requested.end - 1}/{meta.size}"
    headers["content-length"] = str(byte_range.end - byte_range.start)
    return status, headers, byte_range


async def until_disconnect(receive: Receive, stream: Callable[[], Awaitable[None]], scope: Scope) -> None:
    """Run `stream` (a response's sends) until it ends or the client goes away, whichever comes first. uvicorn drops
    sends after a disconnect without telling us: without this watcher a vanished client would still have the whole
    body read from storage."""
    async with anyio.create_task_group() as group:

        async def stream_then_stop() -> None:
            await stream()
            group.cancel_scope.cancel()

        async def stop_on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            logger.debug("client went away during download of %s", scope.get("path"))
            group.cancel_scope.cancel()

        group.start_soon(stream_then_stop)
        group.start_soon(stop_on_disconnect)


class ReadHandleResponse(Response):
    """Streams one byte range of an opened object, and always closes the handle (disconnects included)."""

    def __init__(self, handle: ReadHandle, byte_range: ByteRange, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.handle = handle
        self.byte_range = byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.byte_range.end - self.byte_range.start <= WATCH_DISCONNECT_ABOVE:
                await self._stream(send)
                return
            await until_disconnect(receive, lambda: self._stream(send), scope)
        except OSError:
            logger.debug("client went away during download of %s", scope.get("path"))
        finally:
            with anyio.CancelScope(shield=True):
                await self.handle.aclose()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        held = b""  # one chunk behind, so the last one ends the body: a small file is one message, not two
        async for chunk in self.handle.iter_range(self.byte_range.start, self.byte_range.end):
            if held:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            held = chunk
        await send({"type": "http.response.body", "body": held, "more_body": False})
