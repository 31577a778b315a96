"""`make bench`: artifact-proxy side by side with `mlflow server --artifacts-only`, nginx and a raw PUT sink.

Run after `bash bench/setup.sh`:

    .venv/bin/python bench/run.py [--big/--no-big] [--reps N] [--duration SECONDS] [--out docs/benchmarks.md]

One server at a time is started on 127.0.0.1 (free port), measured, and stopped (its whole process group, then any
survivor of its process tree, also on failure or Ctrl-C). All data lives in one temp dir that is removed at the end.
The report goes to docs/benchmarks.md; progress goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python bench/run.py` (the Makefile's command) puts bench/ on sys.path, not the repo: add the repo so the
    # sibling modules import as the `bench` package, as they do for `import bench.run` and bench/profile.py.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import (  # noqa: E402
    ALL_SERVERS,
    API,
    BENCH,
    CONCURRENCY,
    GIB,
    LIST_N,
    MLFLOW_BIN,
    ROOT,
    S3_KEYS,
    Settings,
)
from bench.data import Payloads, make_list_dir  # noqa: E402
from bench.load import hey, time_list, transfer  # noqa: E402
from bench.machine import machine  # noqa: E402
from bench.procs import Server, running  # noqa: E402
from bench.report import report  # noqa: E402
from bench.results import Results, mb, new_results  # noqa: E402
from bench.rss import idle_rss  # noqa: E402
from bench.servers import mlflow_server, nginx_server, proxy_server, seaweedfs, sink_server  # noqa: E402
from bench.transcript import Transcript, log  # noqa: E402

# --------------------------------------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, settings: Settings, transcript: Transcript) -> None:
        self.settings = settings
        self.transcript = transcript
        self.results: Results = new_results()
        self.files = Payloads.create(transcript.tmp)

    def section(self, name: str, fn: Callable[[], None]) -> None:
        log(f"== {name}")
        try:
            fn()
        except Exception as exc:  # keep going: one broken server must not lose the rest of the report
            log(f"!! {name} failed: {exc}")
            traceback.print_exc()
            self.results["errors"].append(f"{name}: {str(exc).splitlines()[0] if str(exc) else repr(exc)}")

    # ---- the four HTTP servers, all reached with mlflow-artifacts URLs

    def run_http(
        self,
        key: str,
        make: Callable[[Path], Server],
        *,
        small: bool,
        listing: bool,
        download: bool,
        nginx_layout: bool = False,
        big: bool = False,
        ops: tuple[str, ...] = ("PUT", "GET", "LIST"),
        idle: bool = True,
    ) -> None:
        root = self.transcript.tmp / f"root-{key}"
        root.mkdir()
        # nginx serves files at their URL path under its root; the others map `artifacts/<path>` to <root>/<path>.
        files = root / API.lstrip("/") if nginx_layout else root
        server = make(root)
        timeout = 120 if key == "mlflow" else 60
        with running(server, timeout):
            if idle:
                self.results["idle"][key] = idle_rss(server.pid, settle=8.0 if key == "mlflow" else 3.0)
                log(
                    f"  idle tree RSS {mb(self.results['idle'][key]['tree'])} MB "
                    f"({self.results['idle'][key]['nprocs']} processes)"
                )
            url = f"{server.base}{API}/bench/large.bin"

            def check_size() -> None:
                if key != "sink" and (files / "bench/large.bin").stat().st_size != GIB:
                    raise RuntimeError(f"{key}: stored file has the wrong size")

            large: dict[str, Any] = {}
            large["upload"] = self._guard(
                f"{key} upload",
                lambda: transfer(server, "upload", url, self.files.one_gib, GIB, self.settings.reps, check_size),
            )
            if download:
                large["download"] = self._guard(
                    f"{key} download", lambda: transfer(server, "download", url, None, GIB, self.settings.reps)
                )
            self.results["large"][key] = large
            if key != "sink":
                (files / "bench/large.bin").unlink(missing_ok=True)
            if small:
                self._small(key, server, files, nginx_layout, ops)
            if listing:
                make_list_dir(files / "bench/list10k")
                os.sync()
                if nginx_layout:
                    url, count = f"{server.base}{API}/bench/list10k/", len
                else:
                    url, count = f"{server.base}{API}?path=bench/list10k", lambda j: len(j.get("files", []))
                self.results["list"][key] = self._guard(
                    f"{key} list", lambda: time_list(self.transcript, url, LIST_N, count)
                )
                if self.results["list"][key]:
                    log(f"  list {LIST_N}: {self.results['list'][key]['seconds'] * 1000:.0f} ms")
            if big:
                # Last: freeing 4 GiB keeps the disk busy for a while, which only this server's later workloads
                # would pay for.
                self._big(server, files)
        shutil.rmtree(root, ignore_errors=True)

    def _guard(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log(f"!! {name} failed: {exc}")
            self.results["errors"].append(f"{name}: {str(exc).splitlines()[0]}")
            return None

    def _small(self, key: str, server: Server, files: Path, nginx_layout: bool, ops: tuple[str, ...]) -> None:
        # The GiB transfers before this leave gigabytes of dirty pages; every server starts its small requests on
        # a disk that has finished writing them, or the first one measured pays for the writeback.
        os.sync()
        listdir = files / "bench/small"
        listdir.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            (listdir / f"f{i}.bin").write_bytes(self.files.small.read_bytes())
        get_url = f"{server.base}{API}/bench/small/f0.bin"
        put_url = f"{server.base}{API}/bench/small/put.bin"
        list_url = f"{server.base}{API}/bench/small/" if nginx_layout else f"{server.base}{API}?path=bench/small"
        d = self.settings.duration
        jobs = {
            "PUT": lambda: hey(self.transcript, put_url, "PUT", d, self.files.small),
            "GET": lambda: hey(self.transcript, get_url, "GET", d),
            "LIST": lambda: hey(self.transcript, list_url, "GET", d),
        }
        res = {op: self._guard(f"{key} hey {op}", jobs[op]) for op in ops}
        for op, r in res.items():
            if r:
                log(
                    f"  {op} c={CONCURRENCY}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.1f} ms "
                    f"p99 {r['p99_ms']:.1f} ms errors {r['errors']}"
                )
        self.results["small"][key] = res

    def _big(self, server: Server, files: Path) -> None:
        url = f"{server.base}{API}/bench/big.bin"
        size = 4 * GIB
        self.results["big"]["upload"] = self._guard(
            "4 GiB upload", lambda: transfer(server, "upload", url, self.files.four_gib, size, 1)
        )
        self.results["big"]["download"] = self._guard(
            "4 GiB download", lambda: transfer(server, "download", url, None, size, 1)
        )
        (files / "bench/big.bin").unlink(missing_ok=True)

    # ---- S3 through SeaweedFS

    def run_s3(self) -> None:
        probe = subprocess.run(
            [sys.executable, "-c", "import app.storage.s3"], cwd=ROOT, capture_output=True, text=True
        )
        if probe.returncode != 0:
            log("skipped: S3 backend not available")
            self.results["s3"] = {
                "skipped": "skipped: S3 backend not available ("
                + (probe.stderr.strip().splitlines() or ["import failed"])[-1]
                + ")"
            }
            return
        weed = seaweedfs(self.transcript)
        env = {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{weed.port}"}
        direct = [sys.executable, str(BENCH / "s3_direct.py")]
        full_env = {**os.environ, **env}

        def run_direct(op: str, key: str) -> dict[str, Any]:
            c = [*direct, op, str(self.files.one_gib), "bench", key]
            self.transcript.record(c)
            out = subprocess.run(c, env=full_env, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"s3_direct {op} failed: {out.stderr.strip()[-500:]}")
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))

        with running(weed, 60):
            deadline = time.monotonic() + 60
            while True:  # the bucket and a volume exist once a small put succeeds
                try:
                    run_direct("put-small", "probe")
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            res: dict[str, Any] = {}
            reps = self.settings.reps
            ups, downs = [], []
            for _ in range(reps):
                os.sync()
                ups.append(run_direct("upload", "direct/large.bin")["seconds"])
                downs.append(run_direct("download", "direct/large.bin")["seconds"])
            res["direct"] = {
                "upload": statistics.median(ups),
                "download": statistics.median(downs),
                "upload_all": ups,
                "download_all": downs,
            }
            log(
                f"  direct aiobotocore: upload {res['direct']['upload']:.2f} s, "
                f"download {res['direct']['download']:.2f} s"
            )
            proxy = proxy_server(self.transcript, "s3://bench/proxy", self.settings.proxy_workers, env)
            with running(proxy, 60):
                url = f"{proxy.base}{API}/bench/large.bin"
                res["proxy"] = {
                    "upload": transfer(proxy, "upload", url, self.files.one_gib, GIB, reps),
                    "download": transfer(proxy, "download", url, None, GIB, reps),
                }
            self.results["s3"] = res

    # ---- main

    def run(self) -> None:
        only = set(self.settings.only)
        self.files.write_large(self.settings.big)
        if "sink" in only:
            self.section(
                "raw sink",
                lambda: self.run_http(
                    "sink", lambda root: sink_server(self.transcript, root), small=False, listing=False, download=False
                ),
            )
        if "nginx" in only:
            self.section(
                "nginx",
                lambda: self.run_http(
                    "nginx",
                    lambda root: nginx_server(self.transcript, root),
                    small=True,
                    listing=True,
                    download=True,
                    nginx_layout=True,
                ),
            )
        if "proxy" in only:
            self.section(
                "artifact-proxy",
                lambda: self.run_http(
                    "proxy",
                    lambda root: proxy_server(self.transcript, root, self.settings.proxy_workers),
                    small=True,
                    listing=True,
                    download=True,
                    big=self.settings.big,
                ),
            )
        self.files.four_gib.unlink(missing_ok=True)
        if "proxy" in only and self.settings.fsync_variant:
            env = {"ARTIFACT_PROXY_FSYNC_UPLOADS": "false"}
            self.section(
                "artifact-proxy, fsync off (diagnostic)",
                lambda: self.run_http(
                    "proxy-nofsync",
                    lambda root: proxy_server(self.transcript, root, self.settings.proxy_workers, env),
                    small=True,
                    listing=False,
                    download=False,
                    ops=("PUT",),
                    idle=False,
                ),
            )
        if "mlflow" in only:
            self.section(
                "mlflow",
                lambda: self.run_http(
                    "mlflow", lambda root: mlflow_server(self.transcript, root), small=True, listing=True, download=True
                ),
            )
        if "s3" in only:
            self.section("s3", self.run_s3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--big",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also move 4 GiB through artifact-proxy to show memory stays flat (default on)",
    )
    parser.add_argument("--reps", type=int, default=3, help="runs per large transfer; the median is reported")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per hey workload")
    parser.add_argument("--proxy-workers", type=int, default=None, help="default: the server's own default")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--fsync-variant",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time uploads/PUTs with ARTIFACT_PROXY_FSYNC_UPLOADS=false (diagnostic row)",
    )
    parser.add_argument(
        "--only",
        default=ALL_SERVERS,
        help="comma-separated subset of sink,nginx,proxy,mlflow,s3 (for quick checks)",
    )
    parser.add_argument("--tmp", type=Path, default=None, help="parent for the temp dir (default: system temp)")
    settings = Settings.from_args(parser.parse_args())
    for tool in ("curl", "hey"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `bash bench/setup.sh` first")
    if not MLFLOW_BIN.exists():
        sys.exit(f"{MLFLOW_BIN} not found: run `bash bench/setup.sh` first")
    started = time.time()
    transcript = Transcript(Path(tempfile.mkdtemp(prefix="artifact-proxy-bench-", dir=settings.tmp)))
    log(f"temp dir {transcript.tmp}")
    bench = Bench(settings, transcript)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.run()
    finally:
        shutil.rmtree(transcript.tmp, ignore_errors=True)
        log(f"removed {transcript.tmp}")
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    host = machine(settings.proxy_workers)  # after the run, as before: its subprocesses must not load a measurement
    minutes = (time.time() - started) / 60
    settings.out.write_text(report(bench.results, settings, host, transcript.commands, dt.datetime.now(), minutes))
    (BENCH / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    log(f"wrote {settings.out} and bench/results.json in {(time.time() - started) / 60:.1f} min")
    return 1 if bench.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
