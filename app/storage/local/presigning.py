"""Presigned multipart uploads and presigned downloads for the local directory.

The service signs its own expiring URLs (`app.signing`) that point back at itself: relative to its API root, which
only the HTTP layer knows (the address clients reach), so the route makes them absolute. Parts are staged out of
sight in `<root>/.artifact.uploading.mpu/<upload_id>/` (the reserved prefix: never listed, never addressable by
clients); complete concatenates them into a temp file beside the target and renames it into place atomically (or,
create-only, links it there only if the name is free); abort, expiry and a refused complete remove the staging
directory. An upload id is bound to its key by a `target` file in its staging directory, and the completed file
carries its upload id (an extended attribute), so only a retry of the complete that built it is answered with
success.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import anyio.to_thread

from app.errors import AlreadyExists, InvalidParameter, PathOutsideRoot, PayloadTooLarge, ResourceNotFound
from app.paths import ArtifactPath, EntryPath
from app.signing import DOWNLOAD_ROUTE, PART_ROUTE, UrlSigner
from app.storage.base import (
    DEFAULT_COMPLETE,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    PartCredential,
    PresignedUrl,
    WriteOptions,
)
from app.storage.local.files import LocalFiles
from app.storage.local.reading import LocalReadHandle, open_for_read
from app.storage.local.resolve import READ_FLAGS
from app.storage.local.sweep import STAGING_DIR, STAGING_TARGET, lock_new_file, try_lock

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_ID_XATTR = "user.artifact_proxy.upload_id"  # on a completed file: the upload that built it
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def part_etag(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


class LocalPresigning:
    """The MultipartUploads and PresignedDownloads capabilities of a LocalStore, which delegates to this."""

    def __init__(self, files: LocalFiles, signer: UrlSigner | None) -> None:
        self.files = files
        self.signer = signer

    def _staging(self, upload_id: str | None) -> str:
        if not upload_id or not _UPLOAD_ID.match(upload_id):
            raise ResourceNotFound(f"No such multipart upload: {upload_id!r}")
        return os.path.join(self.files.real_root, STAGING_DIR, upload_id)

    # create -------------------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        assert self.signer is not None
        upload_id = uuid.uuid4().hex
        await self.files.run(self._create_staging, path, upload_id)
        ttl = self.files.settings.multipart_url_ttl
        credentials = [
            PartCredential(
                url=f"{PART_ROUTE}/{upload_id}/{n}?{self.signer.query('part', (upload_id, str(n)), ttl)}",
                part_number=n,
            )
            for n in range(1, num_parts + 1)
        ]
        return CreatedMultipartUpload(upload_id=upload_id, credentials=credentials)

    def _create_staging(self, path: EntryPath, upload_id: str) -> None:
        # Fail now (400) on a directory, a file parent or a link out of the root; the parents appear at once, as
        # MLflow's own server makes them.
        self.files.check_target(path, create_parents=True)
        staging = self._staging(upload_id)
        os.makedirs(staging)
        with open(os.path.join(staging, STAGING_TARGET), "w", encoding="utf-8") as handle:
            handle.write(path.canonical)

    # parts --------------------------------------------------------------------------------------------------------
    async def upload_target(self, upload_id: str) -> ArtifactPath:
        """The artifact path an upload in progress was created for (404 when there is no such upload)."""
        staging = self._staging(upload_id)
        bound: str = await self.files.run(_read_target, staging)
        return ArtifactPath(bound)

    async def write_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        staging = self._staging(upload_id)
        final = os.path.join(staging, f"part-{part_number:05d}")
        guard, fd, temp = await self.files.run(self._open_part, staging)
        try:
            await self.files.stream_to_fd(fd, chunks)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_and_unlink, fd, temp, guard)
            raise
        etag: str = await self.files.run(_finish_part, fd, temp, final, guard)
        return etag

    def _open_part(self, staging: str) -> tuple[int, int, str]:
        guard = _hold_staging(staging)
        try:
            temp = os.path.join(staging, f"{uuid.uuid4().hex}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            lock_new_file(fd)
        except BaseException:
            os.close(guard)
            raise
        return guard, fd, temp

    # complete / abort ---------------------------------------------------------------------------------------------
    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: list[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        await self.files.run(self._assemble, path, upload_id, parts, options)

    def _assemble(
        self, path: EntryPath, upload_id: str | None, parts: list[CompletedPart], options: CompleteOptions
    ) -> None:
        self.files.check_target(path)  # containment first, so a link out of the root is a 400 whatever the upload id
        staging = self._staging(upload_id)
        assert upload_id is not None  # _staging refuses anything but a well-formed id
        try:
            guard = _hold_staging(staging)
        except ResourceNotFound:
            if self._completed_by(path, upload_id):
                return  # a retried complete whose first attempt succeeded
            raise
        try:
            _check_bound(staging, path)
            sources = _checked_parts(staging, parts)
            try:
                options.check_size(sum(size for _, size in sources))
                self._concatenate(path, upload_id, [source for source, _ in sources], options)
            except (PayloadTooLarge, AlreadyExists):
                shutil.rmtree(staging, ignore_errors=True)  # refused for good: no retry can succeed
                raise
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(guard)

    def _concatenate(self, path: EntryPath, upload_id: str, sources: list[str], options: CompleteOptions) -> None:
        temp = self.files.open_temp(path)
        try:
            for source in sources:
                _append_file(temp.fd, source)
            _record_upload_id(temp.fd, upload_id)
        except BaseException:
            temp.discard()
            raise
        # Create-only is settled by the link that publishes the file: of two racing completes, one wins.
        self.files.commit(temp, b"", WriteOptions(create_only=options.create_only))

    def _completed_by(self, path: EntryPath, upload_id: str) -> bool:
        """Whether the file at `path` is the one this upload built: a refused upload's retry finds someone else's."""
        try:
            fd = self.files.dir.open(path.canonical, READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError, PathOutsideRoot):
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            return os.getxattr(fd, UPLOAD_ID_XATTR) == upload_id.encode("ascii")
        except OSError as exc:
            # A filesystem without user xattrs (some NFS mounts) keeps no proof: existence has to do there.
            return exc.errno in _NO_XATTRS
        finally:
            os.close(fd)

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        await self.files.run(self._abort, path, upload_id)

    def _abort(self, path: EntryPath, upload_id: str | None) -> None:
        self.files.check_target(path)
        staging = self._staging(upload_id)
        try:
            guard = _hold_staging(staging)
        except ResourceNotFound:
            return  # idempotent: already completed, aborted or expired
        try:
            _check_bound(staging, path)
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(guard)

    # presigned download -------------------------------------------------------------------------------------------
    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        assert self.signer is not None
        handle: LocalReadHandle = await self.files.run(open_for_read, self.files, path)
        await handle.aclose()
        query = self.signer.query("download", (path.canonical,), self.files.settings.presigned_download_ttl)
        url = f"{DOWNLOAD_ROUTE}/{quote(path.canonical)}?{query}"
        return PresignedUrl(url=url, headers={}, file_size=handle.meta.size)


def _hold_staging(staging: str) -> int:
    """A shared lock on the staging directory for one step, so the sweeper never removes it from under the step."""
    try:
        fd = os.open(os.path.join(staging, STAGING_TARGET), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ResourceNotFound("No such multipart upload (completed, aborted or expired)") from exc
    try_lock(fd, exclusive=False)  # refused only while a sweep removes it: then it is gone, as if a moment later
    return fd


def _read_target(staging: str) -> str:
    try:
        with open(os.path.join(staging, STAGING_TARGET), encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ResourceNotFound("No such multipart upload (completed, aborted or expired)") from exc


def _check_bound(staging: str, path: EntryPath) -> None:
    if _read_target(staging) != path.canonical:
        raise ResourceNotFound(f"No multipart upload with this id for '{path.canonical}'")


def _checked_parts(staging: str, parts: list[CompletedPart]) -> list[tuple[str, int]]:
    """Each listed part's staged file and size, in order; 400 unless every part is there as its ETag says."""
    numbers = [part.part_number for part in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise InvalidParameter("Parts must be numbered 1..N with none missing or repeated")
    sources = []
    for part in parts:
        source = os.path.join(staging, f"part-{part.part_number:05d}")
        try:
            st = os.stat(source)
        except FileNotFoundError as exc:
            raise InvalidParameter(f"Part {part.part_number} was never uploaded") from exc
        if part.etag and part.etag != part_etag(st):
            raise InvalidParameter(f"Part {part.part_number} does not match its ETag")
        sources.append((source, st.st_size))
    return sources


def _record_upload_id(fd: int, upload_id: str) -> None:
    try:
        os.setxattr(fd, UPLOAD_ID_XATTR, upload_id.encode("ascii"))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # No user xattrs here: a retried complete is then recognised by the file's existence alone.


def _append_file(fd: int, source: str) -> None:
    with open(source, "rb") as handle:
        remaining = os.fstat(handle.fileno()).st_size
        try:
            while remaining > 0:  # in-kernel copy: no bytes through Python
                copied = os.copy_file_range(handle.fileno(), fd, remaining)
                if copied == 0:
                    break
                remaining -= copied
        except OSError:
            pass  # unsupported on this filesystem: finish with a plain copy from the current offsets
        while chunk := handle.read(1024 * 1024):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]


def _finish_part(fd: int, temp: str, final: str, guard: int) -> str:
    try:
        os.replace(temp, final)  # a re-sent part replaces the earlier attempt whole
        return part_etag(os.fstat(fd))
    finally:
        os.close(fd)
        os.close(guard)


def _close_and_unlink(fd: int, temp: str, guard: int) -> None:
    try:
        os.close(fd)
        os.close(guard)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
