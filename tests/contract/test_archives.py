"""Directory archives (`?archive=`), recursive and `glob=` listings (issue 17), run unchanged against every backend."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import StorageServer
from tests.utils.proxy import PATIENCE, Proxy, held_body, running_proxy

KiB, MiB = 1024, 1024 * 1024
FORMATS = ["zip", "tar", "tar.gz"]

# A tree with nesting, a file bigger than a read chunk, an empty file and names that sort differently by segment.
TREE = {
    "a.txt": b"alpha",
    "b/c.png": b"\x89PNG" + os.urandom(3000),
    "b/d/e.png": os.urandom(100),
    "b/d/f.txt": b"",
    "b.txt": b"sorted between b and b/",
    "big/weights.bin": os.urandom(3 * MiB + 17),
    "z/deep/er/still/x.png": b"deep",
}


def seed(http: httpx.Client, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert http.put(f"/artifacts/{prefix}/{name}", content=data).status_code == 200


def members(fmt: str, body: bytes) -> dict[str, bytes]:
    """Every member of an archive and its bytes; directory members are refused: archives hold files only."""
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert archive.testzip() is None
            assert not [info for info in archive.infolist() if info.is_dir()]
            return {info.filename: archive.read(info) for info in archive.infolist()}
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz" if fmt == "tar.gz" else "r:") as archive:
        found = {}
        for member in archive.getmembers():
            assert member.isfile(), member.name
            extracted = archive.extractfile(member)
            assert extracted is not None
            found[member.name] = extracted.read()
        return found


def listing(http: httpx.Client, **params: str) -> list[dict[str, object]]:
    response = http.get("/artifacts", params=params)
    assert response.status_code == 200, response.text
    files: list[dict[str, object]] = response.json().get("files", [])
    return files


@pytest.mark.parametrize("fmt", FORMATS)
def test_archive_holds_every_file_byte_for_byte(http: httpx.Client, prefix: str, fmt: str) -> None:
    seed(http, prefix, TREE)
    response = http.get(f"/artifacts/{prefix}?archive={fmt}")
    assert response.status_code == 200, response.text
    assert members(fmt, response.content) == TREE
    suffix = {"zip": "zip", "tar": "tar", "tar.gz": "tar.gz"}[fmt]
    assert response.headers["content-disposition"] == f"attachment; filename={prefix}.{suffix}"
    if fmt == "tar.gz":
        assert "content-length" not in response.headers
    else:  # stored members: the length follows from the listing, and is sent
        assert response.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize("fmt", FORMATS)
def test_archive_paths_are_relative_to_the_directory(http: httpx.Client, prefix: str, fmt: str) -> None:
    seed(http, prefix, TREE)
    response = http.get(f"/artifacts/{prefix}/b?archive={fmt}")
    assert response.status_code == 200
    assert members(fmt, response.content) == {
        "c.png": TREE["b/c.png"],
        "d/e.png": TREE["b/d/e.png"],
        "d/f.txt": b"",
    }
    assert f"filename=b.{fmt}" in response.headers["content-disposition"]


def test_head_of_an_archive_announces_the_get(http: httpx.Client, prefix: str) -> None:
    seed(http, prefix, TREE)
    head = http.head(f"/artifacts/{prefix}?archive=zip")
    get = http.get(f"/artifacts/{prefix}?archive=zip")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("**/*.png", {"b/c.png", "b/d/e.png", "z/deep/er/still/x.png"}),
        ("*.txt", {"a.txt", "b.txt"}),
        ("b/**", {"b/c.png", "b/d/e.png", "b/d/f.txt"}),
        ("b/*/*.txt", {"b/d/f.txt"}),
        ("**/[ab].txt", {"a.txt", "b.txt"}),
        ("nothing-*", set()),
    ],
)
def test_glob_filters_archives_and_recursive_listings(
    http: httpx.Client, prefix: str, glob: str, expected: set[str]
) -> None:
    seed(http, prefix, TREE)
    listed = listing(http, path=prefix, recursive="true", glob=glob)
    assert {entry["path"] for entry in listed} == expected
    response = http.get(f"/artifacts/{prefix}", params={"archive": "tar", "glob": glob})
    assert response.status_code == 200
    assert members("tar", response.content) == {name: TREE[name] for name in expected}


def test_recursive_listing_is_every_file_sorted_with_sizes(http: httpx.Client, prefix: str) -> None:
    seed(http, prefix, TREE)
    listed = listing(http, path=prefix, recursive="true")
    assert listed == [{"path": name, "is_dir": False, "file_size": len(TREE[name])} for name in sorted(TREE)]
    below = listing(http, path=f"{prefix}/b/d", recursive="true")
    assert below == [
        {"path": "e.png", "is_dir": False, "file_size": 100},
        {"path": "f.txt", "is_dir": False, "file_size": 0},
    ]


def test_one_level_listing_is_unchanged(http: httpx.Client, prefix: str) -> None:
    """What an unmodified MLflow client sends (path only) gets exactly today's one-level listing."""
    seed(http, prefix, TREE)
    assert listing(http, path=prefix) == [
        {"path": "a.txt", "is_dir": False, "file_size": 5},
        {"path": "b", "is_dir": True},
        {"path": "b.txt", "is_dir": False, "file_size": len(TREE["b.txt"])},
        {"path": "big", "is_dir": True},
        {"path": "z", "is_dir": True},
    ]
    assert listing(http, path=prefix, recursive="false") == listing(http, path=prefix)
    assert [e["path"] for e in listing(http, path=prefix, glob="b*")] == ["b", "b.txt", "big"]


def test_empty_and_missing_directories(http: httpx.Client, prefix: str) -> None:
    assert http.get("/artifacts", params={"path": f"{prefix}/none", "recursive": "true"}).json() == {}
    for fmt in FORMATS:
        response = http.get(f"/artifacts/{prefix}/none?archive={fmt}")
        assert response.status_code == 200
        assert members(fmt, response.content) == {}


def test_archive_of_a_file_is_refused(http: httpx.Client, prefix: str) -> None:
    seed(http, prefix, {"only.txt": b"x"})
    response = http.get(f"/artifacts/{prefix}/only.txt?archive=zip")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_plain_get_of_a_directory_keeps_its_answer(http: httpx.Client, prefix: str) -> None:
    seed(http, prefix, {"d/x.txt": b"x"})
    before = http.get(f"/artifacts/{prefix}/d")
    assert before.status_code in (400, 404)
    assert before.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"archive": "rar"}, "archive"),
        ({"archive": "zip", "glob": "../*"}, "glob"),
        ({"archive": "zip", "glob": "a/../../etc/*"}, "glob"),
        ({"archive": "zip", "glob": "/etc/*"}, "glob"),
        ({"archive": "zip", "glob": "a\x00b"}, "glob"),
        ({"archive": "zip", "glob": "*" * 5000}, "glob"),
    ],
)
def test_hostile_parameters_are_refused(http: httpx.Client, prefix: str, params: dict[str, str], word: str) -> None:
    seed(http, prefix, {"x.txt": b"x"})
    response = http.get(f"/artifacts/{prefix}", params=params)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert word in response.json()["message"]
    if "glob" in params:
        listed = http.get("/artifacts", params={"path": prefix, "recursive": "true", "glob": params["glob"]})
        assert listed.status_code == 400


def test_a_pattern_built_to_backtrack_answers_at_once(http: httpx.Client, prefix: str) -> None:
    """`*a*a*a...b` against a long name is exponential for a backtracking matcher; here it is linear."""
    seed(http, prefix, {"a" * 200: b"x"})
    assert listing(http, path=prefix, recursive="true", glob="*a" * 200 + "b") == []
    assert listing(http, path=prefix, recursive="true", glob="**/" * 100 + "a*") != []


def test_recursive_flag_must_be_a_boolean(http: httpx.Client, prefix: str) -> None:
    response = http.get("/artifacts", params={"path": prefix, "recursive": "maybe"})
    assert response.status_code == 400


def test_an_upload_in_progress_is_never_included(proxy: Proxy, http: httpx.Client, prefix: str) -> None:
    seed(http, prefix, {"done.txt": b"complete"})
    data = os.urandom(8 * MiB)
    release = threading.Event()
    url = proxy.artifact_url(f"{prefix}/pending.bin")
    headers = {"content-length": str(len(data))}
    with httpx.Client(timeout=PATIENCE) as uploader:
        thread = threading.Thread(
            target=lambda: uploader.put(url, content=held_body(data, 6 * MiB, release), headers=headers)
        )
        thread.start()
        try:
            proxy.wait_in_flight(1)
            if "://" not in proxy.destination:
                # Local uploads stream into an O_TMPFILE, nameless until published; on NFS it is a named temp file
                # beside the target: plant one, at two depths, as a crash would leave them.
                for where in (Path(proxy.destination) / prefix, Path(proxy.destination) / prefix / "sub"):
                    where.mkdir(exist_ok=True)
                    (where / ".artifact.uploading.0123456789abcdef").write_bytes(b"partial")
            assert [e["path"] for e in listing(http, path=prefix, recursive="true")] == ["done.txt"]
            archive = http.get(f"/artifacts/{prefix}?archive=zip")
            assert members("zip", archive.content) == {"done.txt": b"complete"}
        finally:
            release.set()
            thread.join(PATIENCE)
    assert [e["path"] for e in listing(http, path=prefix, recursive="true")] == ["done.txt", "pending.bin"]


# limits: a second service in front of the same storage server, with small ones -----------------------------------
@pytest.fixture(scope="module")
def limited(
    backend: str, storage_server_for: Callable[[str], StorageServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    server = storage_server_for(backend)
    env = {**server.env, "ARTIFACT_PROXY_ARCHIVE_MAX_FILES": "3", "ARTIFACT_PROXY_ARCHIVE_MAX_BYTES": "1KiB"}
    with running_proxy(server.destination, tmp_path_factory.mktemp(f"limited-{backend}"), env=env) as running:
        with httpx.Client(base_url=running.api, timeout=60) as client:
            yield client


def test_archive_limits_answer_400_before_any_byte(limited: httpx.Client, prefix: str) -> None:
    seed(limited, prefix, {"1.txt": b"1", "2.txt": b"2", "3.txt": b"3", "sub/4.txt": b"4"})
    too_many = limited.get(f"/artifacts/{prefix}?archive=zip")
    assert too_many.status_code == 400
    assert too_many.headers["content-type"] == "application/json"
    assert "ARTIFACT_PROXY_ARCHIVE_MAX_FILES" in too_many.json()["message"]
    listed = limited.get("/artifacts", params={"path": prefix, "recursive": "true"})
    assert listed.status_code == 400
    assert "ARTIFACT_PROXY_ARCHIVE_MAX_FILES" in listed.json()["message"]
    # Within the count once narrowed by glob; the one-level listing has no such bound.
    assert limited.get(f"/artifacts/{prefix}?archive=tar&glob=*.txt").status_code == 200
    assert len(limited.get("/artifacts", params={"path": prefix}).json()["files"]) == 4

    seed(limited, f"{prefix}-big", {"big.bin": os.urandom(2 * KiB)})
    too_big = limited.get(f"/artifacts/{prefix}-big?archive=tar")
    assert too_big.status_code == 400
    assert "ARTIFACT_PROXY_ARCHIVE_MAX_BYTES" in too_big.json()["message"]
    # The byte limit is for archives: listing the same files is fine.
    assert limited.get("/artifacts", params={"path": f"{prefix}-big", "recursive": "true"}).status_code == 200
