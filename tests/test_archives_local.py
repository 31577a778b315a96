"""Archives on a local destination (issue 17): links in the tree, authorization per file, flat memory over a 2 GiB
tree, and a client that hangs up stopping the reads. The format and listing contract is tests/contract/."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.passwords import hash_password
from tests.test_http_limits import tree_rss_kib
from tests.utils.proxy import PATIENCE, Proxy, running_proxy

MiB, GiB = 1024 * 1024, 1024 * 1024 * 1024
SPARSE = 2 * GiB


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("archives")
    root = base / "root"
    (root / "links").mkdir(parents=True)
    (root / "links" / "a.txt").write_bytes(b"kept")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "secret.txt").write_bytes(b"reached only through a link")
    os.symlink("/etc", root / "links" / "escape-dir")
    os.symlink("/etc/passwd", root / "links" / "escape-file")
    os.symlink("../elsewhere", root / "links" / "inside-dir")
    os.symlink("../elsewhere/secret.txt", root / "links" / "inside-file")
    os.mkfifo(root / "links" / "fifo")
    for name in ("big", "cut", "vanish"):
        (root / name).mkdir()
        with open(root / name / "sparse.bin", "wb") as sparse:
            sparse.truncate(SPARSE)  # 2 GiB of holes: nothing on disk, every byte read
    (root / "vanish" / "then.txt").write_bytes(b"deleted before its turn")
    with running_proxy(str(root), base / "proxy") as proxy:
        yield proxy


def test_links_in_the_tree_are_not_followed(local: Proxy) -> None:
    """Links leaving the root, and links inside it, are neither archived nor listed; nor are FIFOs."""
    with httpx.Client(base_url=local.api, timeout=PATIENCE) as http:
        for fmt in ("zip", "tar"):
            response = http.get("/artifacts/links", params={"archive": fmt})
            assert response.status_code == 200
            if fmt == "zip":
                names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
            else:
                names = tarfile.open(fileobj=io.BytesIO(response.content)).getnames()
            assert names == ["a.txt"]
        recursive = http.get("/artifacts", params={"path": "links", "recursive": "true"}).json()
        assert recursive == {"files": [{"path": "a.txt", "is_dir": False, "file_size": 4}]}


def test_memory_stays_flat_over_a_2_gib_archive(local: Proxy) -> None:
    before = tree_rss_kib(local.pid)
    received = 0
    with httpx.Client(timeout=PATIENCE) as http:
        with http.stream("GET", local.artifact_url("big"), params={"archive": "zip"}) as response:
            assert response.status_code == 200
            length = int(response.headers["content-length"])
            for chunk in response.iter_raw():
                received += len(chunk)
    assert received == length > SPARSE
    grown = tree_rss_kib(local.pid) - before
    assert grown < 64 * 1024, f"the server grew by {grown} KiB over a {SPARSE} byte archive"


def test_a_client_that_hangs_up_stops_the_reads(local: Proxy) -> None:
    """Read 4 MiB of a 2 GiB archive and close the socket: the request ends (its access line is written once the
    response is over) having sent a small part of the archive, not the rest into the void."""
    host, port = local.url.removeprefix("http://").split(":")
    target = "/api/2.0/mlflow-artifacts/artifacts/cut?archive=tar"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        got = 0
        while got < 4 * MiB:
            data = sock.recv(MiB)
            assert data, "the server closed the connection early"
            got += len(data)
    line = f'"GET {target} HTTP/1.1" 200'
    assert local.logged(line), "the archive request never ended"
    sent = int(re.findall(re.escape(line) + r" in=\d+ out=(\d+)", local.log())[-1])
    assert 4 * MiB <= sent < 256 * MiB, f"{sent} bytes sent after the client went away"


def test_a_file_deleted_before_its_turn_aborts_the_archive(local: Proxy) -> None:
    """The listing promised `then.txt` (it is in the length and will be in the central directory): once it is gone,
    the stream stops short of its length, a failed download, rather than a complete-looking archive without it.
    It is deleted after the first MiB arrives, while 2 GiB of `sparse.bin` (sorted first) still stand before it."""
    with httpx.Client(timeout=PATIENCE) as http:
        with http.stream("GET", local.artifact_url("vanish"), params={"archive": "tar"}) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            received = len(next(chunks))
            while received < MiB:
                received += len(next(chunks))
            (Path(local.destination) / "vanish" / "then.txt").unlink()
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in chunks:
                    received += len(chunk)
    assert received < int(response.headers["content-length"])
    assert local.logged("archive of 'vanish' aborted: 'vanish/then.txt' vanished since it was listed")


# authorization per file ------------------------------------------------------------------------------------------
PASSWORD = "alice-archive-pw"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("archives-auth")
    root = base / "root"
    for name in ("1/a/x.txt", "1/b/y.txt", "3/public/p.txt", "3/secret/s.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    config = base / "auth.toml"
    config.write_text(f"""
[users.alice]
password = "{hash_password(PASSWORD, iterations=1000)}"

[[rules]]
prefix = "1/a"
read = ["alice"]

[[rules]]
prefix = "3"
read = ["alice"]

[[rules]]
prefix = "3/secret"
read = ["nobody"]
""")
    with running_proxy(str(root), base / "proxy", extra_args=["--auth-config", str(config)]) as proxy:
        yield proxy


def alice() -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}


def test_a_user_authorized_on_a_sub_prefix_only(secured: Proxy) -> None:
    with httpx.Client(base_url=secured.api, headers=alice(), timeout=PATIENCE) as http:
        whole = http.get("/artifacts/1", params={"archive": "zip"})
        assert whole.status_code == 403
        assert whole.json()["error_code"] == "PERMISSION_DENIED"
        assert http.get("/artifacts", params={"path": "1", "recursive": "true"}).status_code == 403
        mine = http.get("/artifacts/1/a", params={"archive": "zip"})
        assert mine.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(mine.content)).namelist() == ["x.txt"]


def test_one_unreadable_file_refuses_the_whole_archive(secured: Proxy) -> None:
    """`3` is readable but `3/secret` is not: the archive is refused, never handed out without the file; a glob
    that leaves the unreadable file out is served."""
    with httpx.Client(base_url=secured.api, headers=alice(), timeout=PATIENCE) as http:
        refused = http.get("/artifacts/3", params={"archive": "tar"})
        assert refused.status_code == 403
        assert "3/secret/s.txt" in refused.json()["message"]
        assert http.get("/artifacts", params={"path": "3", "recursive": "true"}).status_code == 403
        narrowed = http.get("/artifacts/3", params={"archive": "tar", "glob": "public/**"})
        assert narrowed.status_code == 200
        assert tarfile.open(fileobj=io.BytesIO(narrowed.content)).getnames() == ["public/p.txt"]
        # The one-level listing is what it was: the directory's rule decides.
        assert http.get("/artifacts", params={"path": "3"}).status_code == 200


def test_anonymous_archives_are_refused(secured: Proxy) -> None:
    assert httpx.get(secured.artifact_url("1/a"), params={"archive": "zip"}, timeout=PATIENCE).status_code == 401


def test_sparse_fixture_is_sparse(local: Proxy) -> None:
    """The 2 GiB files cost no disk: the memory and hang-up tests would otherwise need 4 GiB free."""
    st = (Path(local.destination) / "big" / "sparse.bin").stat()
    assert st.st_size == SPARSE and st.st_blocks * 512 < MiB


@pytest.mark.parametrize("value", ["1", "True", "true"])
def test_recursive_accepts_the_described_true_values(local: Proxy, value: str) -> None:
    with httpx.Client(base_url=local.api, timeout=PATIENCE) as http:
        listed = http.get("/artifacts", params={"path": "links", "recursive": value})
    assert listed.status_code == 200
    assert [entry["path"] for entry in listed.json()["files"]] == ["a.txt"]


@pytest.mark.parametrize("value", ["", "yes", "TRUE", "2", " true"])
def test_recursive_refuses_what_the_description_does_not_list(local: Proxy, value: str) -> None:
    """The description lists the accepted values; anything else is 400 (schemathesis checks the description holds)."""
    with httpx.Client(base_url=local.api, timeout=PATIENCE) as http:
        refused = http.get("/artifacts", params={"path": "links", "recursive": value})
    assert refused.status_code == 400
    assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "recursive must be true or false" in refused.json()["message"]
