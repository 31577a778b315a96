"""`skills/` is immutable, as in MLflow 3.18 (wire spec §10): an MLflow tracking server registers skill versions
there, so PUT, DELETE and `mpu/*` are refused with 403 for everyone, while reads and listings work. One rule
(app/policy.py), applied wherever a write or delete is authorized, with auth on or off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import hash_token
from tests.utils import multipart
from tests.utils.proxy import Proxy, running_proxy

IMMUTABLE = {
    "error_code": "PERMISSION_DENIED",
    "message": "Skill upload content is immutable; register a new version instead",
}
SKILL_PATHS = [
    "skills/summarize/0123abcd/SKILL.md",
    "Skills/summarize/x.md",
    "SKILLS/x",
    "skills",  # the tree's own name, as a file at the root
    "%73kills/encoded.md",  # decoded as every path is: `skills/...`
    "workspaces/team-a/skills/s/x.md",
    "WorkSpaces/team-a/sKiLLs/s/x.md",  # the workspaces prefix matches in any case too
]
ORDINARY_PATHS = ["1/skills/x.md", "workspaces/skills", "skillset/x.md", "workspaces/team-a/1/skills/x.md"]
TOKEN = "skills-writer-token-0123"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    root = tmp_path_factory.mktemp("root")
    with running_proxy(str(root), tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy, root


def on_disk(root: Path, path: str) -> Path:
    return root / path.replace("%73kills", "skills")


def seed(root: Path, path: str, content: bytes = b"registered") -> None:
    """What a tracking server wrote: straight into the destination, never through this API."""
    target = on_disk(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


@pytest.mark.parametrize("path", SKILL_PATHS)
def test_put_is_refused_and_writes_nothing(local: tuple[Proxy, Path], path: str) -> None:
    proxy, root = local
    response = httpx.put(proxy.artifact_url(path), content=b"new bytes", timeout=60)
    assert (response.status_code, response.json()) == (403, IMMUTABLE)
    assert not on_disk(root, path).exists()


@pytest.mark.parametrize("path", [p for p in SKILL_PATHS if p != "skills"])
def test_delete_is_refused_and_reads_work(local: tuple[Proxy, Path], path: str) -> None:
    proxy, root = local
    seed(root, path)
    refused = httpx.delete(proxy.artifact_url(path), timeout=60)
    assert (refused.status_code, refused.json()) == (403, IMMUTABLE)
    directory = path.rsplit("/", 1)[0]
    refused = httpx.delete(proxy.artifact_url(directory), timeout=60)
    assert (refused.status_code, refused.json()) == (403, IMMUTABLE)
    assert on_disk(root, path).read_bytes() == b"registered"
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == b"registered"
    assert httpx.head(proxy.artifact_url(path), timeout=60).status_code == 200
    listing = httpx.get(f"{proxy.api}/artifacts", params={"path": directory}, timeout=60).json()
    assert path.rsplit("/", 1)[1] in [f["path"] for f in listing["files"]]
    presigned = httpx.get(f"{proxy.api}/presigned/{path}", timeout=60).json()
    assert httpx.get(presigned["url"], timeout=60).content == b"registered"


@pytest.mark.parametrize(
    ("directory", "body_path"),
    [("skills/s/0123", "SKILL.md"), ("", "skills"), ("workspaces/ws", "Skills"), ("workspaces/ws/skills", "x.md")],
)
def test_multipart_is_refused(local: tuple[Proxy, Path], directory: str, body_path: str) -> None:
    proxy, root = local
    created = multipart.create(proxy.api, directory, body_path)
    assert (created.status_code, created.json()) == (403, IMMUTABLE)
    fake = {"upload_id": "u"}
    completed = multipart.complete(proxy.api, directory, body_path, fake, [{"part_number": 1, "etag": "e"}])
    assert (completed.status_code, completed.json()) == (403, IMMUTABLE)
    aborted = multipart.abort(proxy.api, directory, body_path, fake)
    assert (aborted.status_code, aborted.json()) == (403, IMMUTABLE)
    assert not (root / directory / body_path).is_file()


@pytest.mark.parametrize("path", ORDINARY_PATHS)
def test_skills_deeper_down_is_an_ordinary_path(local: tuple[Proxy, Path], path: str) -> None:
    proxy, root = local
    assert httpx.put(proxy.artifact_url(path), content=b"run file", timeout=60).status_code == 200
    assert (root / path).read_bytes() == b"run file"
    directory, name = path.rsplit("/", 1)
    assert multipart.upload(proxy.api, directory, f"mpu-{name}", [b"parts"]).status_code == 200
    assert httpx.delete(proxy.artifact_url(path), timeout=60).status_code == 200
    assert not (root / path).exists()


def test_a_user_allowed_to_write_everything_is_refused_too(tmp_path: Path) -> None:
    config = tmp_path / "auth.toml"
    config.write_text(f"""
[users.writer]
tokens = ["{hash_token(TOKEN)}"]

[[rules]]
prefix = ""
delete = ["writer"]
""")
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy", extra_args=["--auth-config", str(config)]) as proxy:
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        anonymous = httpx.put(proxy.artifact_url("skills/s/x.md"), content=b"x", timeout=60)
        assert anonymous.status_code == 401  # who asks is settled first
        refused = httpx.put(proxy.artifact_url("skills/s/x.md"), content=b"x", headers=authorized, timeout=60)
        assert (refused.status_code, refused.json()) == (403, IMMUTABLE)
        refused = httpx.delete(proxy.artifact_url("skills"), headers=authorized, timeout=60)
        assert (refused.status_code, refused.json()) == (403, IMMUTABLE)
        allowed = httpx.put(proxy.artifact_url("1/skills/x.md"), content=b"x", headers=authorized, timeout=60)
        assert allowed.status_code == 200
