"""Download header rules: MLflow's text types, safe Content-Disposition, Range parsing."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from app.downloads import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    content_type,
    if_range_matches,
    last_suffixes,
    parse_range,
)
from app.storage.base import ObjectMeta


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.txt", "text/plain"),
        ("a.js", "text/plain"),
        ("a.JSON", "text/plain"),
        ("MLmodel", "text/plain"),
        ("MLproject", "text/plain"),
        ("conda.yaml", "text/plain"),
        ("a.html", "text/html"),
        ("a.png", "image/png"),
        ("a.pdf", "application/pdf"),
        ("a.pkl", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_type(name: str, mime: str) -> None:
    assert content_type(name) == mime


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("model.pkl", "attachment; filename=model.pkl"),
        ("with space.txt", 'attachment; filename="with space.txt"'),
        ("日本語.txt", "attachment; filename=.txt; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"),
        ('a";x=.txt', "attachment; filename=ax.txt; filename*=UTF-8''a%22%3Bx%3D.txt"),
        ("a\r\nSet-Cookie: x", "attachment; filename=aSet-Cookiex; filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x"),
    ],
)
def test_content_disposition(name: str, header: str) -> None:
    assert content_disposition(name) == header
    assert "\r" not in header and "\n" not in header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", ByteRange(0, 1)),
        ("bytes=5-", ByteRange(5, 10)),
        ("bytes=-3", ByteRange(7, 10)),
        ("bytes=-30", ByteRange(0, 10)),
        ("bytes=2-100", ByteRange(2, 10)),
        ("bytes=1-2,4-5", None),
        ("bytes=5-2", None),
        ("bytes=a-b", None),
        ("lines=1-2", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 10)


def test_if_range() -> None:
    meta = ObjectMeta(size=1, etag='"abc"', last_modified=1_700_000_000)
    assert if_range_matches(None, meta)
    assert if_range_matches('"abc"', meta)
    assert not if_range_matches('"other"', meta)
    assert not if_range_matches('W/"abc"', meta)
    assert if_range_matches("Tue, 14 Nov 2023 22:13:20 GMT", meta)
    assert not if_range_matches("Tue, 14 Nov 2023 22:13:21 GMT", meta)
    # Not a date this file was written at, however far out of range: the whole file, never a 500.
    assert not if_range_matches("Sun, 06 Nov 99999999999999999999 08:49:37 GMT", meta)
    assert not if_range_matches("Sun, 06 Nov 1994 08:49:37 +9999999999999999999999", meta)
    assert not if_range_matches("Sun, 06 Nov 1994 08:49:37 +99999999999", meta)


@pytest.mark.parametrize(
    "name", ["f0.bin", "a.tar.gz", "x.y.tar.gz", ".bashrc", "..a.b", "noext", "a.", "...", "a..b", ".a.b.c", "é.PNG"]
)
def test_content_types_are_guessed_from_the_suffixes_pathlib_sees(name: str) -> None:
    assert last_suffixes(name) == "".join(PurePosixPath(name).suffixes[-2:])
