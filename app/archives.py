"""Directory archives (`?archive=zip|tar|tar.gz`): one stream built from a `trees.Tree` and each file's `open_read`.

Memory stays at about one read chunk whatever the tree: members are read one at a time, chunk by chunk, and nothing
is assembled. ZIP and plain tar store the bytes as they are, so the archive's exact length follows from the listing
and is sent as Content-Length; tar.gz is compressed on the fly (in a worker thread: zlib releases the GIL, and a MiB
of deflate must not stall the event loop) and sent chunked.

- ZIP: zipstream-ng, stored members with data descriptors (the CRC is computed as the bytes pass, so no file is read
  twice) and ZIP64 wherever a member, the offsets or the count need it.
- tar: the standard library's header building (`TarInfo.tobuf`, PAX format: names of any length, sizes past 8 GiB).

A file that vanishes or changes size between the listing and its turn aborts the stream: the length and the member
headers already sent promise the listed bytes, so skipping it would hand the client an archive silently missing a
file it was promised. The client sees a truncated body (a failed download), and the log says which file.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass

import anyio.to_thread
from zipstream import ZipStream  # type: ignore[import-untyped]

from app.errors import ArtifactNotFound, InvalidParameter
from app.storage.base import ArtifactStore, WalkEntry
from app.trees import Tree

_BLOCK = tarfile.BLOCKSIZE
_END_OF_TAR = b"\0" * (2 * _BLOCK)
_COMPRESS_IN_THREAD = 64 * 1024  # smaller pieces (headers, padding) are compressed inline


@dataclass(frozen=True, slots=True)
class Format:
    suffix: str
    media_type: str


FORMATS = {
    "zip": Format(".zip", "application/zip"),
    "tar": Format(".tar", "application/x-tar"),
    "tar.gz": Format(".tar.gz", "application/gzip"),
}


def archive_format(raw: str) -> Format:
    try:
        return FORMATS[raw.lower()]
    except KeyError:
        raise InvalidParameter(f"archive must be one of {', '.join(FORMATS)}, not '{raw}'") from None


class ArchiveAborted(Exception):
    """A listed file could not be sent as listed; the stream stops where it is."""


@dataclass
class Archive:
    """An archive of `tree` in `fmt`: `length` when known in advance, and its bytes (`chunks`)."""

    store: ArtifactStore
    tree: Tree
    fmt: Format

    @property
    def length(self) -> int | None:
        if self.fmt.suffix == ".zip":
            sizing = ZipStream(sized=True)  # the same members, never iterated: only their sizes count
            for entry in self.tree.files:
                sizing.add(iter(()), entry.path, size=entry.size)
            return int(len(sizing))
        if self.fmt.suffix == ".tar":
            return sum(len(_tar_header(e)) + e.size + _padding(e.size) for e in self.tree.files) + len(_END_OF_TAR)
        return None

    def chunks(self) -> AsyncIterator[bytes]:
        if self.fmt.suffix == ".zip":
            return self._zip_chunks()
        if self.fmt.suffix == ".tar":
            return self._tar_chunks()
        return _gzipped(self._tar_chunks())

    # reading members ------------------------------------------------------------------------------------------------
    async def _member(self, entry: WalkEntry) -> AsyncGenerator[bytes, None]:
        """The listed bytes of one file, exactly `entry.size` of them, or ArchiveAborted."""
        path = self.tree.path_of(entry)
        try:
            handle = await self.store.open_read(path)
        except ArtifactNotFound:
            raise ArchiveAborted(f"'{path.canonical}' vanished since it was listed") from None
        try:
            if handle.meta.size != entry.size:
                raise ArchiveAborted(f"'{path.canonical}' changed size since it was listed")
            async for chunk in handle.iter_range(0, entry.size):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await handle.aclose()

    # tar -------------------------------------------------------------------------------------------------------------
    async def _tar_chunks(self) -> AsyncIterator[bytes]:
        for entry in self.tree.files:
            yield _tar_header(entry)
            async with aclosing(self._member(entry)) as member:  # closed, its handle too, even when cancelled
                async for chunk in member:
                    yield chunk
            if pad := _padding(entry.size):
                yield b"\0" * pad
        yield _END_OF_TAR

    # zip -------------------------------------------------------------------------------------------------------------
    async def _zip_chunks(self) -> AsyncIterator[bytes]:
        """zipstream-ng pulls member bytes from plain iterators. A member's iterator answers b"" when it has no chunk
        ready, which a stored member passes straight out (adding nothing to its size or CRC): that empty piece is the
        signal to await the next chunk from storage, so the archive is built in the event loop, no thread blocking
        on storage. Members are added one at a time as the stream reaches them (zipstream-ng allows adding while
        streaming), so only the one being sent has a reader."""
        stream = ZipStream(sized=True)
        for entry in self.tree.files:
            feed = _Feed(self._member(entry))
            stream.add(feed.pieces(), entry.path, size=entry.size)
            try:
                for piece in stream.all_files():
                    if piece:
                        yield piece
                    else:
                        await feed.fill()
            finally:
                with anyio.CancelScope(shield=True):
                    await feed.source.aclose()
        for piece in stream.footer():
            yield piece


class _Feed:
    """One member's bytes, handed to zipstream-ng a chunk at a time as the archive loop fetches them."""

    def __init__(self, source: AsyncGenerator[bytes, None]) -> None:
        self.source = source
        self.ready: bytes | None = None
        self.done = False

    def pieces(self) -> Iterator[bytes]:
        while True:
            if self.ready is not None:
                chunk, self.ready = self.ready, None
                yield chunk
            elif self.done:
                return
            else:
                yield b""

    async def fill(self) -> None:
        try:
            self.ready = await anext(self.source)
        except StopAsyncIteration:
            self.done = True


# tar helpers ---------------------------------------------------------------------------------------------------------
def _tar_header(entry: WalkEntry) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.size, info.mode, info.type = entry.size, 0o644, tarfile.REGTYPE
    info.mtime = int(entry.last_modified or 0)  # whole seconds: a float would add a PAX record to every header
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % _BLOCK


async def _gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    async for chunk in chunks:
        if len(chunk) >= _COMPRESS_IN_THREAD:
            out = await anyio.to_thread.run_sync(compressor.compress, chunk)
        else:
            out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
