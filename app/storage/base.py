"""The storage interface every backend implements.

Paths handed to a store are always `ArtifactPath`s from `app.paths`: relative, canonical, validated. A store maps them
to its own namespace (a directory, a key prefix) and never parses them as URIs.

Semantics every backend honours:
- `write` is atomic: no reader ever observes a partial object; on any failure (including the source iterator
  raising because the client went away) nothing new is visible and the previous version is intact.
- `list` is one level deep with basenames, never returns the listed path itself, and hides in-progress uploads.
- `walk` yields every file below a path (no directories), at any depth, as paths relative to it, in no particular
  order; it hides in-progress uploads as `list` does and never follows links (local, SFTP): no loops, and no file
  reached through a link that authorization would have to resolve again. A missing path, or a file, walks as nothing.
- `delete` removes a file or a whole prefix and is idempotent (a missing path is not an error).
- `open_read` raises `ArtifactNotFound` for a missing object and `IsADirectoryArtifact` for a directory/prefix.

Optional operations are separate protocols (`MultipartUploads`, `PresignedDownloads`, `SelfSignedTransfers`); which of
them a store offers is its `Capabilities`, fixed when it is built, and `supports_*` below is the one check that drives
both `server-info` and the 501 answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from app.errors import PayloadTooLarge
from app.paths import ArtifactPath, EntryPath
from app.signing import UrlSigner


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    size: int
    etag: str | None = None  # quoted, as sent in an ETag header
    last_modified: float | None = None  # POSIX seconds
    sha256: str | None = None  # hex digest recorded at upload, when the backend keeps one


def _no_digest() -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """How to write: `create_only` refuses (AlreadyExists) to replace an existing object, atomically; `digest`
    returns the body's SHA-256 hex once the stream has ended, for backends that store it with the object."""

    create_only: bool = False
    digest: Callable[[], str | None] = _no_digest


DEFAULT_WRITE = WriteOptions()  # a plain overwrite with no digest to keep


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str  # basename
    is_dir: bool
    file_size: int | None = None


@dataclass(frozen=True, slots=True)
class WalkEntry:
    path: str  # relative to the walked directory, `/`-separated, no empty segments
    size: int
    last_modified: float | None = None  # POSIX seconds, when the listing gives it


class ReadHandle(Protocol):
    """An opened object: its metadata, and its bytes streamed in bounded chunks."""

    meta: ObjectMeta

    def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) in bounded chunks."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PartCredential:
    url: str
    part_number: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CreatedMultipartUpload:
    upload_id: str | None  # omitted on the wire when None (Azure)
    credentials: list[PartCredential]


@dataclass(frozen=True, slots=True)
class CompletedPart:
    part_number: int
    etag: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class CompleteOptions:
    """How to complete a multipart upload: `create_only` refuses (AlreadyExists) to replace an existing object,
    atomically where the backend can; `max_size` refuses (PayloadTooLarge) an upload whose parts add up to more.
    Either refusal discards the upload, as far as the backend allows: a retry could not succeed."""

    create_only: bool = False
    max_size: int | None = None

    def check_size(self, total: int) -> None:
        if self.max_size is not None and total > self.max_size:
            raise PayloadTooLarge(f"Upload of {total} bytes exceeds the limit of {self.max_size} bytes")


DEFAULT_COMPLETE = CompleteOptions()  # replace whatever is there, whatever the size


@dataclass(frozen=True, slots=True)
class PresignedUrl:
    url: str
    headers: dict[str, str]
    file_size: int | None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store offers beyond the core, decided from its configuration when it is built (never probed)."""

    multipart_upload: bool = False  # presigned multipart (`MultipartUploads`)
    presigned_download: bool = False  # presigned downloads (`PresignedDownloads`)
    signs_own_urls: bool = False  # its transfer URLs point back at this service (`SelfSignedTransfers`)
    # Whether the destination can presign at all, whatever the operator switched on: server-info's
    # `presigned_*_supported` flags. `presign_blocker` says why a configuration rules it out where the store could
    # otherwise presign (an S3 SSE-C key would be disclosed in the URL), for the 501s and for presigned-only mode.
    can_presign: bool = False
    presign_blocker: str | None = None


class ArtifactStore(Protocol):
    """The small async core every destination provides."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Open shared clients; called once per process in the app's lifespan."""

    async def close(self) -> None:
        """Close shared clients; called once at shutdown."""

    async def check_ready(self) -> None:
        """Raise an `ArtifactProxyError` when the store cannot currently serve requests."""

    async def head(self, path: EntryPath) -> ObjectMeta:
        """The object's metadata without opening it for reading; the errors of `open_read`. HEAD requests and
        create-only checks use it, so neither reads (or holds) anything they would throw away."""

    async def open_read(self, path: EntryPath) -> ReadHandle: ...

    async def write(
        self, path: EntryPath, chunks: AsyncIterator[bytes], size: int | None, options: WriteOptions = DEFAULT_WRITE
    ) -> None:
        """Store the bytes of `chunks` at `path` atomically; `size` is the announced length when known."""

    async def list(self, path: ArtifactPath) -> list[FileInfo]: ...

    def walk(self, path: ArtifactPath) -> AsyncGenerator[WalkEntry, None]:
        """Every file below `path`, recursively (see the module docstring); an async generator, so a caller that
        stops early (a limit reached) stops the backend's paging too."""
        ...

    async def delete(self, path: EntryPath) -> None: ...


@runtime_checkable
class MultipartUploads(Protocol):
    """Presigned multipart: the client sends parts straight to storage with URLs the service signs."""

    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload: ...

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: list[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        """Make the uploaded parts the object at `path`. A retried complete whose first attempt succeeded succeeds
        again, and is told apart from a refusal by what the object is (its ETag, upload id or blocks)."""

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None: ...


@runtime_checkable
class PresignedDownloads(Protocol):
    async def presign_download(self, path: EntryPath) -> PresignedUrl: ...


@runtime_checkable
class SelfSignedTransfers(Protocol):
    """A store whose multipart parts and downloads go through this service (app/routes/signed.py), under URLs it
    signs itself: the signature is the authorization. Its part and download URLs are relative to the service's API
    root (`presigned-parts/...`); the route that hands them out prefixes the address clients reach."""

    signer: UrlSigner | None

    async def upload_target(self, upload_id: str) -> ArtifactPath: ...

    async def write_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str: ...


def supports_multipart_upload(store: ArtifactStore) -> bool:
    return store.capabilities.multipart_upload and isinstance(store, MultipartUploads)


def supports_presigned_download(store: ArtifactStore) -> bool:
    return store.capabilities.presigned_download and isinstance(store, PresignedDownloads)


def signs_own_urls(store: ArtifactStore) -> bool:
    """Whether the store's transfer URLs point back at this service (a local directory) rather than at storage."""
    return store.capabilities.signs_own_urls
