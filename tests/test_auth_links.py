"""Links inside the destination cannot carry a request across authorization prefixes (issue 13, case 3): the rules
are checked on what an operation really touches, and DELETE removes a link, never what it points at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_auth import PASSWORDS, auth_config
from tests.utils.proxy import Proxy, running_proxy

ALICE = ("alice", PASSWORDS["alice"])  # read and write on 1/, nothing on 2/
BOB = ("bob", PASSWORDS["bob"])  # read on 2/


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    root = tmp_path / "root"
    (root / "1").mkdir(parents=True)
    (root / "2").mkdir()
    (root / "1" / "seed.txt").write_text("seed")
    (root / "2" / "private.txt").write_text("private")
    (root / "1" / "in").symlink_to("../2", target_is_directory=True)
    (root / "1" / "alias.txt").symlink_to("seed.txt")
    (root / "1" / "secret-alias.txt").symlink_to("../2/private.txt")
    args = ["--auth-config", str(auth_config(tmp_path))]
    with running_proxy(str(root), tmp_path / "proxy", extra_args=args) as proxy:
        yield proxy, root


def test_reads_through_a_link_into_a_refused_prefix_are_403(linked: tuple[Proxy, Path]) -> None:
    proxy, _ = linked
    with httpx.Client(auth=ALICE) as alice:
        for response in (
            alice.get(proxy.artifact_url("1/in/private.txt")),
            alice.head(proxy.artifact_url("1/in/private.txt")),
            alice.get(proxy.artifact_url("1/secret-alias.txt")),
            alice.get(f"{proxy.api}/artifacts", params={"path": "1/in"}),
            alice.get(f"{proxy.api}/presigned/1/in/private.txt"),
        ):
            assert response.status_code == 403, (response.request.url, response.text)
            assert response.content != b"private"
            assert b"2/private" not in response.content  # nor where the link leads
        assert alice.get(proxy.artifact_url("1/alias.txt")).content == b"seed"  # a link within the prefix is fine
    with httpx.Client(auth=BOB) as bob:
        assert bob.get(proxy.artifact_url("2/private.txt")).content == b"private"


def test_writes_through_a_link_into_a_refused_prefix_are_403(linked: tuple[Proxy, Path]) -> None:
    proxy, root = linked
    with httpx.Client(auth=ALICE) as alice:
        for response in (
            alice.put(proxy.artifact_url("1/in/new.txt"), content=b"planted"),
            alice.put(proxy.artifact_url("1/in/deeper/new.txt"), content=b"planted"),
            alice.put(proxy.artifact_url("1/in/private.txt"), content=b"overwritten"),
            alice.post(f"{proxy.api}/mpu/create/1/in", json={"path": "m.bin", "num_parts": 1}),
        ):
            assert response.status_code == 403, (response.request.url, response.text)
        assert alice.put(proxy.artifact_url("1/ok.txt"), content=b"mine").status_code == 200
    assert sorted(path.name for path in (root / "2").iterdir()) == ["private.txt"]
    assert (root / "2" / "private.txt").read_text() == "private"


def test_deleting_a_link_removes_the_link_not_its_target(linked: tuple[Proxy, Path]) -> None:
    proxy, root = linked
    with httpx.Client(auth=ALICE) as alice:
        assert alice.delete(proxy.artifact_url("1/in/private.txt")).status_code == 403
        assert alice.delete(proxy.artifact_url("1/in")).status_code == 200
        assert alice.delete(proxy.artifact_url("1/secret-alias.txt")).status_code == 200
    assert not (root / "1" / "in").exists() and not (root / "1" / "in").is_symlink()
    assert (root / "2" / "private.txt").read_text() == "private"
