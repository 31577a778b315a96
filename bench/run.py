"""`make bench`: artifact-proxy side by side with `mlflow server --artifacts-only`, nginx and a raw PUT sink.

Run after `bash bench/setup.sh`:

    .venv/bin/python bench/run.py [--big/--no-big] [--reps N] [--duration SECONDS] [--out docs/benchmarks.md]

One server at a time is started on 127.0.0.1 (free port), measured, and stopped (its whole process group, then any
survivor of its process tree, also on failure or Ctrl-C). All data lives in one temp dir that is removed at the end.
The report goes to docs/benchmarks.md; progress goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
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

import psutil

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
    MLFLOW_VENV,
    NGINX_BIN,
    PROXY_BIN,
    ROOT,
    S3_KEYS,
    Settings,
)
from bench.data import Payloads, make_list_dir  # noqa: E402
from bench.load import hey, time_list, transfer  # noqa: E402
from bench.procs import Server, running  # noqa: E402
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


# --------------------------------------------------------------------------------------------------------------
# Report


def machine(proxy_workers: int | None) -> dict[str, str]:
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"

    cpu = "n/a"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "artifact-proxy": version([str(PROXY_BIN), "--version"]),
        "mlflow": version(
            [str(MLFLOW_VENV / "bin/python"), "-c", "import mlflow; print('mlflow', mlflow.__version__)"]
        ),
        "nginx": version([NGINX_BIN, "-v"]),
        "curl": version(["curl", "--version"]),
        "hey": "hey (Debian package " + version(["dpkg-query", "-W", "-f=${Version}", "hey"]) + ")",
        "proxy workers": str(proxy_workers or "default (" + str(max(1, min(os.cpu_count() or 1, 4))) + ")"),
    }


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def g(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def report(results: dict[str, Any], settings: Settings, commands: list[str], started: float) -> str:
    m = machine(settings.proxy_workers)
    L = results["large"]
    names = {
        "proxy": "artifact-proxy",
        "proxy-nofsync": "artifact-proxy, fsync off (diagnostic)",
        "mlflow": "MLflow --artifacts-only",
        "nginx": "nginx (WebDAV PUT, sendfile)",
        "sink": "raw PUT sink (asyncio)",
    }
    out: list[str] = []
    w = out.append
    w("# Benchmarks: artifact-proxy vs `mlflow server --artifacts-only` vs nginx\n")
    w(
        f"Generated by `make bench` (`bash bench/setup.sh && .venv/bin/python bench/run.py`) on "
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; the run took {(time.time() - started) / 60:.1f} min. "
        "Single runs on a shared 2-core VM where other test suites were running: read the ratios, not the absolute "
        "numbers. Large transfers are the median of "
        f"{settings.reps} runs; small requests run {settings.duration:g} s each after a 256-request warm-up.\n"
    )
    w("## Machine and settings\n")
    w("| | |\n|---|---|")
    for k, v in m.items():
        w(f"| {k} | {v} |")
    w("| MLflow workers | default (4 uvicorn workers + job runner) |")
    w("| nginx | `worker_processes auto`, `sendfile on`, `access_log off`, WebDAV PUT |")
    w("| access logs | off everywhere (`--no-access-log`; MLflow logs at its default level) |")
    w("")

    # ---- large
    w("## 1 GiB upload and download (local disk)\n")
    w(
        "Upload: `curl -T FILE URL`; download: `curl -o /dev/null URL`. Peak RSS is sampled every 50 ms over the "
        "server's whole process tree: *per process* is the largest single process, *tree* the largest sum.\n"
    )
    w(
        "| Server | upload s | upload peak RSS MB (process / tree) | download s | download peak RSS MB "
        "(process / tree) |"
    )
    w("|---|---:|---:|---:|---:|")
    for key in ("proxy", "proxy-nofsync", "mlflow", "nginx", "sink"):
        if key not in L:
            continue
        up, down = L[key].get("upload"), L[key].get("download")
        cells = []
        for t in (up, down):
            if t:
                cells += [fmt_s(t["seconds"]), f"{mb(t['rss']['proc_max'])} / {mb(t['rss']['tree_max'])}"]
            else:
                cells += ["n/a", "n/a"]
        w(f"| {names[key]} | " + " | ".join(cells) + " |")
    w("")
    pu, mu, nu, su = (g(L, k, "upload", "seconds") for k in ("proxy", "mlflow", "nginx", "sink"))
    pd, md, nd = (g(L, k, "download", "seconds") for k in ("proxy", "mlflow", "nginx"))
    w(
        f"Ratios: upload ours/sink {ratio(pu, su)}, ours/nginx {ratio(pu, nu)}, MLflow/ours {ratio(mu, pu)}; "
        f"download ours/nginx {ratio(pd, nd)}, MLflow/ours {ratio(md, pd)}.\n"
    )
    w(
        "All runs (s): "
        + "; ".join(
            f"{k} {op} " + ", ".join(f"{x:.2f}" for x in L[k][op]["all"])
            for k in L
            for op in ("upload", "download")
            if L[k].get(op)
        )
        + "\n"
    )
    w(
        "Note: artifact-proxy's local store fsyncs each upload before renaming it into place (durable, atomic); "
        "the raw sink, nginx and MLflow do not fsync, so ours pays the disk writeback inside the timed upload. The "
        "*fsync off* row (`ARTIFACT_PROXY_FSYNC_UPLOADS=false`) is a diagnostic showing that cost; the targets are "
        "judged on the default configuration.\n"
    )

    # ---- big
    B = results.get("big") or {}
    if B:
        w("## 4 GiB upload and download through artifact-proxy (memory stays flat)\n")
        w("| | seconds | peak RSS MB (process / tree) |\n|---|---:|---:|")
        for op in ("upload", "download"):
            t = B.get(op)
            if t:
                w(f"| {op} | {fmt_s(t['seconds'])} | {mb(t['rss']['proc_max'])} / {mb(t['rss']['tree_max'])} |")
        w("")

    # ---- small
    S = results["small"]
    w(f"## 16 KiB PUT, GET and LIST at concurrency {CONCURRENCY} (hey)\n")
    w(
        f"`hey -z {settings.duration:g}s -c {CONCURRENCY}`. PUT sends the same 16 KiB body to the **same path** every "
        "time (hey cannot vary the URL), so it measures overwrite. GET fetches one 16 KiB file. LIST lists a directory "
        "of 10 files (`GET artifacts?path=bench/small`; nginx: `autoindex_format json` on the directory). Errors are "
        "non-2xx responses plus transport errors.\n"
    )
    w("| Server | op | req/s | p50 ms | p99 ms | errors |\n|---|---|---:|---:|---:|---:|")
    for key in ("proxy", "proxy-nofsync", "mlflow", "nginx"):
        for op in ("PUT", "GET", "LIST"):
            r = g(S, key, op)
            if r:
                w(f"| {names[key]} | {op} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    w("")
    w(
        "Ratios (req/s): "
        + "; ".join(
            f"{op} ours/MLflow {ratio(g(S, 'proxy', op, 'rps'), g(S, 'mlflow', op, 'rps'))}, "
            f"nginx/ours {ratio(g(S, 'nginx', op, 'rps'), g(S, 'proxy', op, 'rps'))}"
            for op in ("PUT", "GET", "LIST")
        )
        + ".\n"
    )

    # ---- list and idle
    listing, idle = results["list"], results["idle"]
    w(f"## Listing a directory of {LIST_N:,} files, and idle memory\n")
    w("| Server | list 10,000 files, s (median of 5) | idle RSS of the process tree MB | processes |")
    w("|---|---:|---:|---:|")
    for key in ("proxy", "mlflow", "nginx", "sink"):
        if key in listing or key in idle:
            lt = g(listing, key, "seconds")
            w(
                f"| {names[key]} | {fmt_s(lt) if lt is not None else '-'} | {mb(g(idle, key, 'tree'))} | "
                f"{g(idle, key, 'nprocs') or 'n/a'} |"
            )
    w("")

    # ---- s3
    S3 = results.get("s3") or {}
    w("## S3 backend through SeaweedFS (`weed mini`)\n")
    if "skipped" in S3:
        w(S3["skipped"] + "\n")
    elif S3:
        w(
            "Proxy: `artifact-proxy server --artifacts-destination s3://bench/proxy` with `MLFLOW_S3_ENDPOINT_URL` "
            "pointing at SeaweedFS, driven by curl as above. Direct: `bench/s3_direct.py` (aiobotocore, multipart "
            "with 8 MiB parts and 4 in flight for upload; one streamed GET for download) against the same server.\n"
        )
        w("| | direct aiobotocore s | through artifact-proxy s | proxy/direct | proxy peak RSS MB (process / tree) |")
        w("|---|---:|---:|---:|---:|")
        for op in ("upload", "download"):
            d, p = g(S3, "direct", op), g(S3, "proxy", op)
            if p:
                w(
                    f"| 1 GiB {op} | {fmt_s(d)} | {fmt_s(p['seconds'])} | {ratio(p['seconds'], d)} | "
                    f"{mb(p['rss']['proc_max'])} / {mb(p['rss']['tree_max'])} |"
                )
        w("")
    else:
        w("Not measured (see errors below).\n")

    # ---- targets
    w("## Targets\n")
    w("| Target | measured | result |\n|---|---|---|")

    def tgt(name: str, measured: str, ok: bool | None) -> None:
        w(f"| {name} | {measured} | {verdict(ok)} |")

    def le(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    tgt(
        "upload 1 GiB <= 1.5x raw-sink time",
        f"{fmt_s(pu)} s vs sink {fmt_s(su)} s = {ratio(pu, su)}",
        le(pu, 1.5 * su) if pu and su else None,
    )
    tgt(
        "upload 1 GiB >= 3x faster than MLflow",
        f"MLflow {fmt_s(mu)} s / ours {fmt_s(pu)} s = {ratio(mu, pu)}",
        le(3 * pu, mu) if pu and mu else None,
    )
    tgt(
        "download 1 GiB <= 2.5x nginx",
        f"{fmt_s(pd)} s vs nginx {fmt_s(nd)} s = {ratio(pd, nd)}",
        le(pd, 2.5 * nd) if pd and nd else None,
    )
    tgt(
        "download 1 GiB >= 3x faster than MLflow",
        f"MLflow {fmt_s(md)} s / ours {fmt_s(pd)} s = {ratio(md, pd)}",
        le(3 * pd, md) if pd and md else None,
    )
    for op in ("PUT", "GET", "LIST"):
        ours, theirs = g(S, "proxy", op), g(S, "mlflow", op)
        if ours and theirs:
            tgt(
                f"16 KiB {op} c=32 >= 6x MLflow req/s",
                f"{ours['rps']:.0f} vs {theirs['rps']:.0f} = {ratio(ours['rps'], theirs['rps'])}",
                ours["rps"] >= 6 * theirs["rps"],
            )
        else:
            tgt(f"16 KiB {op} c=32 >= 6x MLflow req/s", "n/a", None)
        tgt(
            f"16 KiB {op} c=32 p99 <= 30 ms, no errors",
            f"p99 {ours['p99_ms']:.1f} ms, {ours['errors']} errors" if ours else "n/a",
            (ours["p99_ms"] <= 30 and ours["errors"] == 0) if ours else None,
        )
    for op in ("upload", "download"):
        r = g(L, "proxy", op, "rss")
        tgt(
            f"peak RSS per serving process <= 100 MB, 1 GiB {op}",
            f"{mb(r['proc_max'])} MB ({r['proc_max_label']})" if r else "n/a",
            r["proc_max"] <= 100e6 if r else None,
        )
    for op in ("upload", "download"):
        r = g(B, op, "rss")
        tgt(
            f"peak RSS per serving process <= 100 MB, 4 GiB {op}",
            f"{mb(r['proc_max'])} MB ({r['proc_max_label']})" if r else "not run (--no-big)" if not B else "n/a",
            r["proc_max"] <= 100e6 if r else None,
        )
    pi, mi = g(idle, "proxy", "tree"), g(idle, "mlflow", "tree")
    tgt(
        "idle RSS of the tree <= 1/10 of MLflow's",
        f"{mb(pi)} MB vs {mb(mi)} MB = {ratio(pi, mi)}",
        le(10 * pi, mi) if pi and mi else None,
    )
    for op in ("upload", "download"):
        r = g(S3, "proxy", op, "rss")
        if r:
            tgt(
                f"(informational) peak RSS per serving process <= 100 MB, S3 1 GiB {op}",
                f"{mb(r['proc_max'])} MB ({r['proc_max_label']})",
                r["proc_max"] <= 100e6,
            )
    for op in ("upload", "download"):
        d, p = g(S3, "direct", op), g(S3, "proxy", op, "seconds")
        tgt(
            f"S3 1 GiB {op} <= 1.3x direct",
            f"{ratio(p, d)}" if p and d else S3.get("skipped", "n/a"),
            le(p, 1.3 * d) if p and d else None,
        )
    w("")

    if results["errors"]:
        w("## Errors during this run\n")
        for e in results["errors"]:
            w(f"- {e}")
        w("")

    w("## Exact commands\n")
    w(
        "`$TMP` is the run's temp dir, `$PORT` a free port picked per server. Setup: `bash bench/setup.sh` "
        "(apt: nginx, hey, wrk; .venv: psutil, py-spy; `.venv-mlflow`: deploy/setup-mlflow-venv.sh).\n"
    )
    w("```")
    out.extend(commands)
    w("```\n")
    w(
        "nginx config: `bench/nginx.conf.template`; raw sink: `bench/sink.py`; direct S3 client: "
        "`bench/s3_direct.py`. Raw figures: `bench/results.json` (not committed).\n"
    )
    return "\n".join(out) + "\n"


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
    settings.out.write_text(report(bench.results, settings, transcript.commands, started))
    (BENCH / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    log(f"wrote {settings.out} and bench/results.json in {(time.time() - started) / 60:.1f} min")
    return 1 if bench.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
