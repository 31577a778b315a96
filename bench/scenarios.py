"""The measured scenarios: each server, started alone, under the same workloads, in a fixed order.

Local disk: the raw sink, nginx, artifact-proxy (with its fsync-off diagnostic) and MLflow, all reached with
mlflow-artifacts URLs. S3: artifact-proxy in front of SeaweedFS against a client talking to SeaweedFS directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import API, BENCH, CONCURRENCY, GIB, LIST_N, ROOT, S3_KEYS
from bench.context import Context
from bench.data import make_list_dir
from bench.load import hey, time_list, transfer, wrk
from bench.procs import Server, running
from bench.results import mb
from bench.rss import idle_rss
from bench.servers import mlflow_server, nginx_server, proxy_server, seaweedfs, sink_server
from bench.transcript import log

OPS = ("PUT", "PUT-new", "GET", "LIST")
MIXED_CONCURRENCY = 256


@dataclass(frozen=True)
class HttpScenario:
    """One server on local disk; the flags say which workloads it takes."""

    key: str  # in the results, and in its root dir's name
    title: str  # the section's name in the log and in the errors
    make: Callable[[Context, Path], Server]  # the server, over a root dir
    small: bool = True  # 16 KiB requests with hey
    listing: bool = True  # listing a directory of LIST_N files
    download: bool = True  # besides the 1 GiB upload
    idle: bool = True  # idle RSS before any workload
    ops: tuple[str, ...] = OPS
    nginx_layout: bool = False  # nginx serves files at their URL path under its root
    keeps_files: bool = True  # the raw sink writes every body to one file, not at its path: nothing to check
    big: bool = False  # 4 GiB as well, last
    mixed: bool = True  # GET, PUT and LIST together at MIXED_CONCURRENCY, after the small requests
    start_timeout: float = 60
    idle_settle: float = 3.0


def _proxy(ctx: Context, root: Path) -> Server:
    return proxy_server(ctx.transcript, root, ctx.settings.proxy_workers)


def _proxy_nofsync(ctx: Context, root: Path) -> Server:
    return proxy_server(ctx.transcript, root, ctx.settings.proxy_workers, {"ARTIFACT_PROXY_FSYNC_UPLOADS": "false"})


SINK = HttpScenario(
    "sink",
    "raw sink",
    lambda ctx, root: sink_server(ctx.transcript, root),
    small=False,
    listing=False,
    download=False,
    keeps_files=False,
)
NGINX = HttpScenario("nginx", "nginx", lambda ctx, root: nginx_server(ctx.transcript, root), nginx_layout=True)
PROXY = HttpScenario("proxy", "artifact-proxy", _proxy)
# Uploads and PUTs only: what the fsync of each upload costs; the targets are judged on the default.
PROXY_NOFSYNC = HttpScenario(
    "proxy-nofsync",
    "artifact-proxy, fsync off (diagnostic)",
    _proxy_nofsync,
    listing=False,
    download=False,
    ops=("PUT", "PUT-new"),
    idle=False,
    mixed=False,
)
# MLflow starts 4 uvicorn workers and a job runner: it takes longer to answer, and to settle before idle RSS.
MLFLOW = HttpScenario(
    "mlflow", "mlflow", lambda ctx, root: mlflow_server(ctx.transcript, root), start_timeout=120, idle_settle=8.0
)


def run_all(ctx: Context) -> None:
    only, settings = ctx.settings.only, ctx.settings
    ctx.files.write_large(settings.big)
    if "sink" in only:
        http_section(ctx, SINK)
    if "nginx" in only:
        http_section(ctx, NGINX)
    if "proxy" in only:
        http_section(ctx, dataclasses.replace(PROXY, big=settings.big))
    ctx.files.four_gib.unlink(missing_ok=True)  # only that run moves 4 GiB: give the disk back
    if "proxy" in only and settings.fsync_variant:
        http_section(ctx, PROXY_NOFSYNC)
    if "mlflow" in only:
        http_section(ctx, MLFLOW)
    if "s3" in only:
        ctx.section("s3", lambda: run_s3(ctx))


def http_section(ctx: Context, sc: HttpScenario) -> None:
    ctx.section(sc.title, lambda: run_http(ctx, sc))


def run_http(ctx: Context, sc: HttpScenario) -> None:
    key, results = sc.key, ctx.results
    root = ctx.tmp / f"root-{key}"
    root.mkdir()
    # nginx serves files at their URL path under its root; the others map `artifacts/<path>` to <root>/<path>.
    files = root / API.lstrip("/") if sc.nginx_layout else root
    server = sc.make(ctx, root)
    with running(server, sc.start_timeout):
        if sc.idle:
            results["idle"][key] = idle_rss(server.pid, settle=sc.idle_settle)
            log(f"  idle tree RSS {mb(results['idle'][key]['tree'])} MB ({results['idle'][key]['nprocs']} processes)")
        url = f"{server.base}{API}/bench/large.bin"

        def check_size() -> None:
            if sc.keeps_files and (files / "bench/large.bin").stat().st_size != GIB:
                raise RuntimeError(f"{key}: stored file has the wrong size")

        reps = ctx.settings.reps
        large: dict[str, Any] = {}
        large["upload"] = ctx.guard(
            f"{key} upload", lambda: transfer(server, "upload", url, ctx.files.one_gib, GIB, reps, check_size)
        )
        if sc.download:
            large["download"] = ctx.guard(f"{key} download", lambda: transfer(server, "download", url, None, GIB, reps))
        results["large"][key] = large
        if sc.keeps_files:
            (files / "bench/large.bin").unlink(missing_ok=True)
        if sc.small:
            small_requests(ctx, sc, server, files)
        if sc.listing:
            listing(ctx, key, server, files, sc.nginx_layout)
        if sc.big:
            # Last: freeing 4 GiB keeps the disk busy for a while, which only this server's later workloads
            # would pay for.
            big_transfers(ctx, server, files)
    shutil.rmtree(root, ignore_errors=True)


def small_requests(ctx: Context, sc: HttpScenario, server: Server, files: Path) -> None:
    # The GiB transfers before this leave gigabytes of dirty pages; every server starts its small requests on
    # a disk that has finished writing them, or the first one measured pays for the writeback.
    os.sync()
    listdir = files / "bench/small"
    listdir.mkdir(parents=True, exist_ok=True)
    for i in range(10):
        (listdir / f"f{i}.bin").write_bytes(ctx.files.small.read_bytes())
    get_url = f"{server.base}{API}/bench/small/f0.bin"
    put_url = f"{server.base}{API}/bench/small/put.bin"
    list_url = f"{server.base}{API}/bench/small/" if sc.nginx_layout else f"{server.base}{API}?path=bench/small"
    t, d = ctx.transcript, ctx.settings.duration
    new_args = [str(ctx.files.small), f"{API}/bench/distinct"]
    jobs = {
        "PUT": lambda: hey(t, put_url, "PUT", d, ctx.files.small),
        "PUT-new": lambda: wrk(t, server.base, "distinct_put.lua", new_args, d),
        "GET": lambda: hey(t, get_url, "GET", d),
        "LIST": lambda: hey(t, list_url, "GET", d),
    }
    res = {op: ctx.guard(f"{sc.key} hey {op}", jobs[op]) for op in sc.ops}
    for op, r in res.items():
        if r:
            log(
                f"  {op} c={CONCURRENCY}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.1f} ms "
                f"p99 {r['p99_ms']:.1f} ms errors {r['errors']}"
            )
    ctx.results["small"][sc.key] = res
    if sc.mixed and ctx.settings.mixed_duration > 0:
        list_path = list_url.removeprefix(server.base)
        mixed_args = [str(ctx.files.small), f"{API}/bench/small", list_path]
        mixed = ctx.guard(
            f"{sc.key} mixed",
            lambda: wrk(
                t, server.base, "mixed.lua", mixed_args, ctx.settings.mixed_duration, MIXED_CONCURRENCY, server.pid
            ),
        )
        if mixed:
            log(
                f"  mixed c={MIXED_CONCURRENCY}: {mixed['rps']:.0f} req/s p99 {mixed['p99_ms']:.1f} ms errors "
                f"{mixed['errors']} RSS {mb(mixed['rss_first'])} -> {mb(mixed['rss_last'])} MB"
            )
        ctx.results.setdefault("mixed", {})[sc.key] = mixed


def listing(ctx: Context, key: str, server: Server, files: Path, nginx_layout: bool) -> None:
    make_list_dir(files / "bench/list10k")
    os.sync()
    count: Callable[[Any], int]
    if nginx_layout:  # autoindex_format json: a JSON array of entries
        url, count = f"{server.base}{API}/bench/list10k/", len
    else:
        url, count = f"{server.base}{API}?path=bench/list10k", lambda j: len(j.get("files", []))
    ctx.results["list"][key] = ctx.guard(f"{key} list", lambda: time_list(ctx.transcript, url, LIST_N, count))
    if ctx.results["list"][key]:
        log(f"  list {LIST_N}: {ctx.results['list'][key]['seconds'] * 1000:.0f} ms")


def big_transfers(ctx: Context, server: Server, files: Path) -> None:
    url = f"{server.base}{API}/bench/big.bin"
    size = 4 * GIB
    big = ctx.results["big"]
    big["upload"] = ctx.guard("4 GiB upload", lambda: transfer(server, "upload", url, ctx.files.four_gib, size, 1))
    big["download"] = ctx.guard("4 GiB download", lambda: transfer(server, "download", url, None, size, 1))
    (files / "bench/big.bin").unlink(missing_ok=True)


def run_s3(ctx: Context) -> None:
    # The S3 backend is an optional extra: without it the report says why instead of failing the section.
    probe = subprocess.run([sys.executable, "-c", "import app.storage.s3"], cwd=ROOT, capture_output=True, text=True)
    if probe.returncode != 0:
        log("skipped: S3 backend not available")
        reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        ctx.results["s3"] = {"skipped": "skipped: S3 backend not available (" + reason + ")"}
        return
    weed = seaweedfs(ctx.transcript)
    env = {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{weed.port}"}
    direct = [sys.executable, str(BENCH / "s3_direct.py")]
    full_env = {**os.environ, **env}

    def run_direct(op: str, key: str) -> dict[str, Any]:
        c = [*direct, op, str(ctx.files.one_gib), "bench", key]
        ctx.transcript.record(c)
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
        reps = ctx.settings.reps
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
        log(f"  direct aiobotocore: upload {res['direct']['upload']:.2f} s, download {res['direct']['download']:.2f} s")
        proxy = proxy_server(ctx.transcript, "s3://bench/proxy", ctx.settings.proxy_workers, env)
        with running(proxy, 60):
            url = f"{proxy.base}{API}/bench/large.bin"
            res["proxy"] = {
                "upload": transfer(proxy, "upload", url, ctx.files.one_gib, GIB, reps),
                "download": transfer(proxy, "download", url, None, GIB, reps),
            }
        ctx.results["s3"] = res
