"""Path safety: every route turns client-supplied paths into a canonical artifact path here, and only here.

The canonical path is a relative POSIX path with no empty, `.` or `..` segments ("" is the root). Backends receive
nothing else, and authorization (when added) must see exactly this value, so no encoding can make them disagree.
Local containment (symlinks) is checked by the local backend against the real root, on every verb.
"""

from __future__ import annotations

import ntpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

from app.errors import InvalidParameter, InvalidPath

TEMP_PREFIX = ".artifact.uploading."
MAX_DECODE_ROUNDS = 10
MAX_SEGMENT_BYTES = 255
# Object stores cap keys at 1024 bytes (S3, GCS, Azure) and Linux paths at 4096: longer is refused here, as a 400,
# rather than by a store as an error it reports in its own way.
MAX_PATH_BYTES = 1024

# Lone surrogates (a JSON body may escape one, "\\udc80") name no file and no key: no store can encode them.
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffd#\\\\]")
_SCHEME_OR_DRIVE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True, slots=True)
class ArtifactPath:
    """A validated artifact path: `canonical` is what backends and auth see; `trailing_slash` remembers a final `/`."""

    canonical: str
    trailing_slash: bool = False

    @property
    def is_root(self) -> bool:
        return self.canonical == ""

    @property
    def segments(self) -> list[str]:
        return self.canonical.split("/") if self.canonical else []

    @property
    def basename(self) -> str:
        return self.canonical.rsplit("/", 1)[-1]

    def child(self, name: str) -> EntryPath:
        return EntryPath(f"{self.canonical}/{name}" if self.canonical else name)


@dataclass(frozen=True, slots=True)
class EntryPath(ArtifactPath):
    """A path below the root, naming a file or a directory: what stores read, write, delete and upload to. The root
    is refused once, where a route turns a request into one of these, so no backend has to refuse it again."""

    def __post_init__(self) -> None:
        if not self.canonical:
            raise ValueError("an EntryPath is never the root")


def entry_path(path: ArtifactPath, refusal: Exception) -> EntryPath:
    """`path` as an entry below the root; `refusal` is raised for the root itself."""
    if path.is_root:
        raise refusal
    return path if isinstance(path, EntryPath) else EntryPath(path.canonical, path.trailing_slash)


def fully_decode(raw: str) -> str:
    """Percent-decode until stable: a payload encoded twice must not reach a later decoder and mean `..`."""
    value = raw
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(value, errors="replace")
        if decoded == value:
            return value
        value = decoded
    raise InvalidPath()


def _check_segment(segment: str) -> None:
    if segment == ".." or segment.startswith(TEMP_PREFIX):
        raise InvalidPath()
    if len(segment.encode("utf-8", errors="surrogatepass")) > MAX_SEGMENT_BYTES:
        raise InvalidPath()


def canonical_path(raw: str | None) -> ArtifactPath:
    """Validate a path as decoded once by the HTTP layer and return its canonical form, or raise `InvalidPath`."""
    value = fully_decode(raw or "")
    if _CONTROL.search(value) or value.startswith("/") or _SCHEME_OR_DRIVE.match(value):
        raise InvalidPath()
    kept: list[str] = []
    for segment in value.split("/"):
        if segment in ("", "."):
            continue
        _check_segment(segment)
        kept.append(segment)
    canonical = "/".join(kept)
    if len(canonical.encode("utf-8", errors="surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath()
    return ArtifactPath(canonical, trailing_slash=value.endswith("/") and bool(kept))


def file_path(raw: str | None) -> EntryPath:
    """A path that must name a file (PUT): not the root and not ending in `/`."""
    path = canonical_path(raw)
    refusal = InvalidParameter("Artifact path must include a filename (cannot end with '/').")
    if path.trailing_slash or (raw or "").endswith("/"):
        raise refusal
    return entry_path(path, refusal)


def multipart_target(directory_raw: str | None, body_path: str | None) -> EntryPath:
    """The key a multipart upload writes: the URL directory plus only the name of the body's `path`.

    MLflow 3.18 clients send a file name; older ones their local path, absolute and perhaps a Windows one. As in
    MLflow 3.18, `ntpath.basename` takes the name after the last `/` or `\\` (and a drive: `C:model.bin`), and again
    after decoding, so an encoded separator cannot bring one back (`src%5C..` is `..`).
    """
    if not body_path:
        raise InvalidParameter("Missing value for required parameter 'path'")
    basename = ntpath.basename(body_path)
    if basename:
        basename = ntpath.basename(fully_decode(basename))
    if basename in ("", ".", "..") or _CONTROL.search(basename):
        raise InvalidPath()
    _check_segment(basename)
    directory = canonical_path(directory_raw)
    target = canonical_path(directory.child(basename).canonical)  # the whole path's limits (length) still apply
    return entry_path(target, InvalidPath())
