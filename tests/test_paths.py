"""The path pipeline (wire spec §6.1) as a pure function: canonical forms and rejections."""

from __future__ import annotations

import pytest

from app.errors import InvalidParameter, InvalidPath
from app.paths import EntryPath, canonical_path, entry_path, file_path, multipart_target


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        (".", ""),
        ("a/b.txt", "a/b.txt"),
        ("a//b.txt", "a/b.txt"),
        ("a/./b.txt", "a/b.txt"),
        ("up//etc/passwd", "up/etc/passwd"),
        ("a%20b.txt", "a b.txt"),
        ("ok%3Fx=1.txt", "ok?x=1.txt"),
        ("..;/secret", "..;/secret"),
        ("..\u2215secret", "..\u2215secret"),
        ("up/file:x", "up/file:x"),
        ("1/abc/artifacts/", "1/abc/artifacts"),
    ],
)
def test_canonical_forms(raw: str, canonical: str) -> None:
    assert canonical_path(raw).canonical == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "../x",
        "a/../../x",
        "..",
        "%2e%2e/x",
        "..%2fx",
        "%252e%252e%252fx",
        "/etc/passwd",
        "file:///etc/passwd",
        "C:/x",
        "C:\\x",
        "\\\\server\\share",
        "ok.txt#frag",
        "ok\x00.txt",
        "ok\n.txt",
        "a\x7fb",
        "a\udc80b",
        "%c0%ae%c0%ae/x",
        ".artifact.uploading.x",
        "d/.artifact.uploading.y",
        "x" * 256,
        "%" + "25" * 11 + "2e",
    ],
)
def test_rejections(raw: str) -> None:
    with pytest.raises(InvalidPath):
        canonical_path(raw)


def test_path_of_1024_bytes_is_the_limit() -> None:
    longest = "/".join(["a" * 255] * 3 + ["a" * 254, "b"])
    assert len(canonical_path(longest).canonical) == 1024
    with pytest.raises(InvalidPath):
        canonical_path(longest + "c")


def test_segment_of_255_bytes_is_fine() -> None:
    assert canonical_path("é" * 127 + "x").canonical


@pytest.mark.parametrize("raw", ["", "dir/", "/", "."])
def test_file_path_needs_a_filename(raw: str) -> None:
    with pytest.raises(InvalidParameter):
        file_path(raw)


@pytest.mark.parametrize(
    ("directory", "body_path", "key"),
    [
        ("1/r/artifacts", "/data/run/model.bin", "1/r/artifacts/model.bin"),
        ("", "model.bin", "model.bin"),
        ("d", "C:\\Users\\me\\model.bin", "d/model.bin"),
        ("d", "C:model.bin", "d/model.bin"),  # a drive-relative Windows path: ntpath drops the drive
        ("d", "../../x.bin", "d/x.bin"),
        ("d", "src%2Fmodel.bin", "d/model.bin"),  # an encoded separator splits too, after decoding
        ("", "file:x.bin", None),
    ],
)
def test_multipart_target_uses_only_the_basename(directory: str, body_path: str, key: str | None) -> None:
    if key is None:  # the name is whole, but at the root it reads as a scheme: refused as a URL path would be
        with pytest.raises(InvalidParameter):
            multipart_target(directory, body_path)
        return
    assert multipart_target(directory, body_path).canonical == key


@pytest.mark.parametrize(
    "body_path",
    [
        *("", None, "..", "dir/", "/etc/..", "a\x00b", "\udc80.bin", ".artifact.uploading.z", "%2e%2e", "x#y"),
        # MLflow 3.18's cases: what is left after the last separator (or the drive) is empty, `.` or `..`.
        *("C:\\Users\\me\\..", "C:\\Users\\me\\", "C:", "a/.", "src%5C..", "C%3A.."),
    ],
)
def test_multipart_target_rejects_bad_basenames(body_path: str | None) -> None:
    with pytest.raises(InvalidParameter):
        multipart_target("d", body_path)


def test_the_root_is_never_an_entry() -> None:
    """Stores take an EntryPath for what they read, write, delete and upload to, so none of them refuses the root
    itself: the type cannot hold it, and every way to make one from a request refuses it."""
    with pytest.raises(ValueError):
        EntryPath("")
    refusal = InvalidParameter("Refusing to delete the artifact root")
    for raw in ("", ".", "./", "a/..%2f", "%2e"):
        try:
            path = canonical_path(raw)
        except InvalidPath:
            continue
        with pytest.raises(InvalidParameter):
            entry_path(path, refusal)
    for raw in ("", "/", ".", "./"):
        with pytest.raises((InvalidParameter, InvalidPath)):
            file_path(raw)
    assert isinstance(multipart_target("", "C/model.bin"), EntryPath)
    assert entry_path(canonical_path("a/b/"), refusal) == EntryPath("a/b", trailing_slash=True)
    assert canonical_path("a").child("b") == EntryPath("a/b")
