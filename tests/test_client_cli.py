"""`artifact-proxy ls | cp | rm | verify` against the real service, run as a subprocess (and in-process with click's
runner where the output is all that matters). Faults come from tests/utils/faulty_proxy.py, in front of the service:
deterministic, nothing waits on a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from app.cli import main
from app.client.listing import lists_whole_tree
from app.client.uris import Remote, UriError, parse_remote
from app.signing import PART_ROUTE
from tests.servers import STARTUP_TIMEOUT, free_port, http_ok, start_process, stop_process, wait_until
from tests.utils.faulty_proxy import Fault, faulty_proxy
from tests.utils.mlflow_clients import MLFLOW_VENV
from tests.utils.proxy import Proxy, running_proxy

REPO = Path(__file__).resolve().parent.parent
UNICODE = "naïve ünïcode ?%.txt"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "PYTHONPATH": str(REPO), **(env or {})},
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "top.txt": b"top\n",
        "empty": b"",
        "a/b/c/deep.bin": os.urandom(300_000),
        f"ü/{UNICODE}": "ünï\n".encode(),
        "a/note.md": b"# note\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("client")
    with running_proxy(str(base / "root"), base / "proxy") as proxy:
        yield proxy


def test_a_tree_round_trips_verified(server: Proxy, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    up = cli("cp", "-r", "-j", "3", str(tmp_path / "src"), server.artifact_url("rt/run"), "--json")
    assert up.returncode == 0, up.stderr
    assert (summary(up)["files"], summary(up)["bytes"]) == (len(files), sum(map(len, files.values())))
    down = cli("cp", "-r", server.artifact_url("rt/run"), str(tmp_path / "out"), "--json")
    assert down.returncode == 0, down.stderr
    assert summary(down)["failures"] == [] and summary(down)["not_verified"] == []  # every file had a digest
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    assert not list((tmp_path / "out").rglob("*.part*"))
    verify = cli("verify", str(tmp_path / "src"), server.artifact_url("rt/run"), "--json")
    assert verify.returncode == 0, verify.stdout
    assert summary(verify)["same"] == len(files)


def test_a_single_file_up_and_down_by_name_and_into_a_directory(server: Proxy, tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(b"model")
    assert cli("cp", str(tmp_path / "m.pkl"), server.artifact_url("one/dir/")).returncode == 0
    assert cli("cp", str(tmp_path / "m.pkl"), server.artifact_url("one/renamed.pkl")).returncode == 0
    assert httpx.get(server.artifact_url("one/dir/m.pkl")).content == b"model"
    (tmp_path / "into").mkdir()
    assert cli("cp", server.artifact_url("one/renamed.pkl"), str(tmp_path / "into")).returncode == 0
    assert (tmp_path / "into" / "renamed.pkl").read_bytes() == b"model"
    directory = cli("cp", server.artifact_url("one"), str(tmp_path / "x"))
    assert directory.returncode == 1 and "is a directory (use -r" in directory.stderr


def test_ls_recursive_and_glob_agree_with_the_fallback_walk(server: Proxy, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    assert cli("cp", "-r", str(tmp_path / "src"), server.artifact_url("ls/run")).returncode == 0
    url = server.artifact_url("ls/run")
    for extra in ([], ["--no-server-recursive"]):
        listed = cli("ls", "-r", url, "--json", *extra)
        assert listed.returncode == 0, listed.stderr
        entries = json.loads(listed.stdout)["files"]
        assert [e["path"] for e in entries] == sorted(files)
        assert {e["path"]: e["file_size"] for e in entries} == {k: len(v) for k, v in files.items()}
        # The server's glob= on both paths: `*` stays within a name, `**` crosses directories.
        globbed = cli("ls", "-r", "--glob", "**/*.md", url, *extra)
        assert globbed.stdout.splitlines() == ["a/note.md"]
        assert cli("ls", "-r", "--glob", "*.md", url, *extra).stdout.splitlines() == []
        deep = cli("ls", "-r", "--glob", "a/b/**", url, *extra)
        assert deep.stdout.splitlines() == ["a/b/c/deep.bin"]
        assert cli("ls", "-r", "--glob", "a/b/*", url, *extra).stdout.splitlines() == []
    top = CliRunner().invoke(main, ["ls", url])
    assert top.exit_code == 0 and top.output.splitlines() == ["a/", "empty", "top.txt", "ü/"]


def test_recursive_detection_on_real_answers(server: Proxy, tmp_path: Path) -> None:
    """Whatever this server does with recursive=true, the detection reads its answer correctly: an answer with
    directories in it is one level (walk on), and one without is the whole tree."""
    make_tree(tmp_path / "src")
    assert cli("cp", "-r", str(tmp_path / "src"), server.artifact_url("det")).returncode == 0
    listing = f"{server.api}/artifacts"
    answer = httpx.get(listing, params={"path": "det", "recursive": "true"}).json()["files"]
    nested = any("/" in entry["path"] for entry in answer)
    assert lists_whole_tree(answer) == nested  # either the server recursed, or it named directories
    one_level = httpx.get(listing, params={"path": "det"}).json()["files"]
    assert not lists_whole_tree(one_level)  # MLflow's answer: basenames and is_dir entries
    leaf = httpx.get(listing, params={"path": "det/a/b/c", "recursive": "true"}).json()["files"]
    assert lists_whole_tree(leaf) and [e["path"] for e in leaf] == ["deep.bin"]  # both kinds agree here


def test_multipart_upload_retries_a_failed_part(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    with running_proxy(str(tmp_path / "root"), tmp_path / "proxy") as service, faulty_proxy(service.url) as front:
        front.faults.append(Fault("PUT", lambda p: PART_ROUTE in p and p.endswith("/2"), status=500))
        args = ["--multipart-threshold", "1MiB", "--part-size", "1MiB", "--retries", "2"]
        result = cli("cp", str(tmp_path / "big.bin"), front.artifact_url("mp/big.bin"), *args, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        parts = front.requests("PUT", PART_ROUTE)
        assert len(parts) == 5 and [s.faulted for s in parts if s.path.endswith("/2")] == [True, False]
        assert front.requests("POST", "mpu/complete") and not front.requests("PUT", "artifacts/mp")
        assert (tmp_path / "root" / "mp" / "big.bin").read_bytes() == data


def test_a_multipart_upload_that_fails_for_good_is_aborted(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as service, faulty_proxy(service.url) as front:
        front.faults.append(Fault("PUT", lambda p: PART_ROUTE in p and p.endswith("/2"), status=500, times=None))
        args = ["--multipart-threshold", "1MiB", "--part-size", "1MiB", "--retries", "1"]
        result = cli("cp", str(tmp_path / "big.bin"), front.artifact_url("mp/big.bin"), *args)
        assert result.returncode == 1
        assert "upload part 2 of" in result.stderr and "server error 500" in result.stderr
        assert "Traceback" not in result.stderr
        assert front.requests("POST", "mpu/abort") and not front.requests("POST", "mpu/complete")
        assert list((root / ".artifact.uploading.mpu").iterdir()) == []  # the staging is gone
        assert not (root / "mp" / "big.bin").exists()


def test_a_cut_download_resumes_with_a_range_on_rerun_and_on_retry(server: Proxy, tmp_path: Path) -> None:
    data = os.urandom(400_000)
    assert httpx.put(server.artifact_url("res/f.bin"), content=data).status_code == 200
    with faulty_proxy(server.url) as front:
        front.faults.append(Fault("GET", lambda p: p.endswith("res/f.bin"), cut_after=150_000))
        target = tmp_path / "f.bin"
        first = cli("cp", "--retries", "0", front.artifact_url("res/f.bin"), str(target))
        assert first.returncode == 1 and "after 150000 bytes" in first.stderr
        assert not target.exists() and (tmp_path / "f.bin.part").stat().st_size == 150_000
        again = cli("cp", front.artifact_url("res/f.bin"), str(target), "--json")
        assert again.returncode == 0, again.stderr
        resumed = front.requests("GET", "res/f.bin")[-1]
        assert resumed.headers["range"] == "bytes=150000-" and resumed.headers["if-range"]
        assert target.read_bytes() == data and not list(tmp_path.glob("*.part*"))

        # Within one run: the retry continues where the cut left off.
        front.faults.append(Fault("GET", lambda p: p.endswith("res/f.bin"), cut_after=99_999))
        once = cli("cp", "--retries", "1", front.artifact_url("res/f.bin"), str(tmp_path / "g.bin"))
        assert once.returncode == 0, once.stderr
        assert front.requests("GET", "res/f.bin")[-1].headers["range"] == "bytes=99999-"
        assert (tmp_path / "g.bin").read_bytes() == data


def test_a_download_that_does_not_match_its_digest_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_proxy(str(root), tmp_path / "proxy") as service:
        assert httpx.put(service.artifact_url("d/f.txt"), content=b"original").status_code == 200
        with open(root / "d" / "f.txt", "r+b") as stored:  # behind the server's back: the recorded digest stays
            stored.write(b"tampered")
        result = cli("cp", service.artifact_url("d/f.txt"), str(tmp_path / "f.txt"))
        assert result.returncode == 1
        assert "SHA-256 mismatch" in result.stderr and "Traceback" not in result.stderr
        assert list(tmp_path.glob("f.txt*")) == []


def test_verify_reports_missing_extra_and_different(server: Proxy, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    url = server.artifact_url("ver/run")
    assert cli("cp", "-r", str(tmp_path / "src"), url).returncode == 0
    assert httpx.put(server.artifact_url("ver/run/only-there.txt"), content=b"x").status_code == 200
    (tmp_path / "src" / "top.txt").write_bytes(b"TOP\n")  # same size, other bytes
    (tmp_path / "src" / "a" / "note.md").write_bytes(b"longer than before\n")
    (tmp_path / "src" / "new.txt").write_bytes(b"not uploaded")
    result = cli("verify", str(tmp_path / "src"), url, "--json")
    assert result.returncode == 1
    report = summary(result)
    assert (report["missing"], report["extra"]) == (["new.txt"], ["only-there.txt"])
    assert [(d["path"], d["why"].split()[0]) for d in report["different"]] == [
        ("a/note.md", "size"),
        ("top.txt", "SHA-256"),
    ]  # type: ignore[attr-defined]
    text = cli("verify", str(tmp_path / "src"), url)
    assert "missing: new.txt" in text.stdout and "different: top.txt" in text.stdout


def test_rm_file_and_tree(server: Proxy, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    assert cli("cp", "-r", str(tmp_path / "src"), server.artifact_url("rm/run")).returncode == 0
    assert cli("rm", server.artifact_url("rm/run/top.txt")).returncode == 0
    assert httpx.head(server.artifact_url("rm/run/top.txt")).status_code == 404
    refused = cli("rm", server.artifact_url("rm/run"))
    assert refused.returncode == 1 and "use -r" in refused.stderr
    assert cli("rm", "-r", server.artifact_url("rm/run")).returncode == 0
    assert httpx.get(f"{server.api}/artifacts", params={"path": "rm"}).json() == {}


def test_credentials_basic_and_token(tmp_path: Path) -> None:
    from tests.test_auth import CI_TOKEN, PASSWORDS, auth_config

    with running_proxy(
        str(tmp_path / "root"), tmp_path / "proxy", extra_args=["--auth-config", str(auth_config(tmp_path))]
    ) as service:
        (tmp_path / "f.txt").write_bytes(b"secured")
        url = service.artifact_url("1/f.txt")
        anonymous = cli("cp", str(tmp_path / "f.txt"), url)
        assert anonymous.returncode == 1 and "authentication required (401)" in anonymous.stderr
        alice = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PASSWORDS["alice"]}
        assert cli("cp", str(tmp_path / "f.txt"), url, env=alice).returncode == 0
        ci = {"MLFLOW_TRACKING_TOKEN": CI_TOKEN}
        assert cli("cp", url, str(tmp_path / "back.txt"), env=ci).returncode == 0
        assert (tmp_path / "back.txt").read_bytes() == b"secured"
        bob = {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": PASSWORDS["bob"]}
        denied = cli("rm", url, env=bob)
        assert denied.returncode == 1 and "permission denied (403)" in denied.stderr


def test_not_found_and_connection_refused_are_one_line(server: Proxy, tmp_path: Path) -> None:
    missing = cli("cp", server.artifact_url("no/such.txt"), str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [f"Error: {server.artifact_url('no/such.txt')}: not found (404)"]
    port = free_port()
    refused = cli("ls", "--retries", "0", f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/x")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"Error: cannot connect to http://127.0.0.1:{port}: connection refused"


def test_mlflow_artifacts_uris_resolve_as_mlflow_does() -> None:
    assert parse_remote("mlflow-artifacts://h:5000/1/r/artifacts", None) == Remote("http://h:5000", "1/r/artifacts")
    assert parse_remote("mlflow-artifacts://h:5000/x", "https://t.example") == Remote("https://h:5000", "x")
    assert parse_remote("mlflow-artifacts:/1/x", "https://t.example/mlflow/") == Remote(
        "https://t.example/mlflow", "1/x"
    )
    prefixed = parse_remote("https://h/pre/api/2.0/mlflow-artifacts/artifacts/a%20b/c", None)
    assert (
        prefixed == Remote("https://h/pre", "a b/c")
        and prefixed.url() == "https://h/pre/api/2.0/mlflow-artifacts/artifacts/a%20b/c"
    )
    assert parse_remote("http://h:1/api/2.0/mlflow-artifacts/artifacts", None).path == ""
    for bad in ("http://h/elsewhere/x", "mlflow-artifacts://5000/x", "http://h/api/2.0/mlflow-artifacts/artifactsx"):
        with pytest.raises(UriError):
            parse_remote(bad, None)


def test_a_large_download_comes_in_presigned_ranges_from_a_store_and_a_cut_range_continues(tmp_path: Path) -> None:
    """A presigned URL on another origin (a store's, as S3's would be) is fetched in parallel ranges, without the
    server's credentials. The store here is the service's own signed route published under another origin: its
    public URL is the intercepting proxy in front of it, while the client talks to the service directly."""
    port = free_port()
    data = os.urandom(1024 * 1024 + 3)
    with (
        faulty_proxy(f"http://127.0.0.1:{port}") as store,
        running_proxy(
            str(tmp_path / "root"), tmp_path / "proxy", env={"ARTIFACT_PROXY_PUBLIC_URL": store.url}, port=port
        ) as service,
    ):
        assert httpx.put(service.artifact_url("pre/big.bin"), content=data).status_code == 200
        store.faults.append(Fault("GET", lambda p: "signed-artifacts" in p, cut_after=1000))
        args = ["--multipart-threshold", "1MiB", "--part-size", "256KiB", "-j", "2", "--retries", "1", "--json"]
        token = {"MLFLOW_TRACKING_TOKEN": "not-for-the-store"}
        result = cli("cp", service.artifact_url("pre/big.bin"), str(tmp_path / "big.bin"), *args, env=token)
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary(result)["not_verified"] == []
        assert (tmp_path / "big.bin").read_bytes() == data
        ranges = sorted(s.headers["range"] for s in store.requests("GET", "signed-artifacts"))
        assert len(ranges) == 6 and len(store.seen) == 6  # 5 ranges, one continued; nothing else went there
        assert not any("authorization" in s.headers for s in store.seen)
        cut = next(s for s in store.seen if s.faulted).headers["range"]
        start = int(cut.split("=")[1].split("-")[0])
        assert f"bytes={start + 1000}-{cut.split('-')[1]}" in ranges


def test_a_presigned_url_back_at_the_server_itself_is_not_ranged(server: Proxy, tmp_path: Path) -> None:
    """A local destination signs its own URLs: ranges from the same host bring nothing and cost a second read to
    hash, so the download is the streamed GET (undecoded: what the server hashed), which also resumes across runs."""
    data = os.urandom(1024 * 1024 + 3)
    assert httpx.put(server.artifact_url("self/big.bin"), content=data).status_code == 200
    with faulty_proxy(server.url) as front:
        args = ["--multipart-threshold", "1MiB", "--part-size", "256KiB", "--json"]
        result = cli("cp", front.artifact_url("self/big.bin"), str(tmp_path / "big.bin"), *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary(result)["not_verified"] == [] and (tmp_path / "big.bin").read_bytes() == data
        assert front.requests("GET", "mlflow-artifacts/presigned/self/big.bin")  # asked: the URL is the server's
        assert not front.requests("GET", "signed-artifacts")
        streamed = front.requests("GET", "mlflow-artifacts/artifacts/self/big.bin")
        assert [(s.headers.get("range"), s.headers["accept-encoding"]) for s in streamed] == [(None, "identity")]


def test_against_mlflow_server_artifacts_only(tmp_path: Path) -> None:
    """MLflow's own server lists one level and ignores recursive=true: the client walks, and round trips a tree."""
    mlflow = MLFLOW_VENV / "bin" / "mlflow"
    if not mlflow.exists():  # a missing server fails, never skips: `make test` creates the venv
        pytest.fail(f"no MLflow server venv at {MLFLOW_VENV} (deploy/setup-mlflow-venv.sh makes it)", pytrace=False)
    port = free_port()
    args = [str(mlflow), "server", "--artifacts-only", "--artifacts-destination", str(tmp_path / "root")]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = start_process(args, tmp_path / "mlflow.log", cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{url}/health"), STARTUP_TIMEOUT, "mlflow server --artifacts-only", process)
        files = make_tree(tmp_path / "src")
        root = f"{url}/api/2.0/mlflow-artifacts/artifacts/exp/run"
        assert cli("cp", "-r", str(tmp_path / "src"), root).returncode == 0
        listed = cli("ls", "-r", root)
        assert listed.stdout.splitlines() == sorted(files), listed.stderr
        down = cli("cp", "-r", root, str(tmp_path / "out"), "--json")
        assert down.returncode == 0, down.stderr
        assert all((tmp_path / "out" / rel).read_bytes() == data for rel, data in files.items())
        assert len(summary(down)["not_verified"]) == len(files)  # type: ignore[arg-type]  # MLflow sends no digest
    finally:
        stop_process(process)


def test_ls_of_a_file_and_of_nothing(server: Proxy) -> None:
    assert httpx.put(server.artifact_url("lsf/x.txt"), content=b"12345").status_code == 200
    one = CliRunner().invoke(main, ["ls", "-l", server.artifact_url("lsf/x.txt")])
    assert one.exit_code == 0 and one.output.split() == ["5", "x.txt"]
    nothing = CliRunner().invoke(main, ["ls", server.artifact_url("lsf/none")])
    assert nothing.exit_code == 1 and "not found (404)" in nothing.output
