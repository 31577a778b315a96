"""The load tools and how their output is read: curl for one large transfer, hey for many small requests at a
fixed concurrency, an httpx client for timing a listing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.config import BENCH, CONCURRENCY, GIB
from bench.procs import Server
from bench.results import mb
from bench.rss import RssSampler, merge_rss
from bench.transcript import Transcript, log


def curl(transcript: Transcript, args: list[str]) -> tuple[int, float, float]:
    """(HTTP code, curl's own time, bytes moved): the bytes let the caller check the whole file went through."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload} %{size_download}", *args]
    transcript.record(cmd)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) < 4:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()} {out.stdout.strip()}")
    code, secs, up, down = int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])
    if code >= 300:
        raise RuntimeError(f"{transcript.show(cmd)} -> HTTP {code}")
    return code, secs, max(up, down)


def transfer(
    server: Server,
    kind: str,
    url: str,
    file: Path | None,
    size: int,
    reps: int,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`reps` timed uploads (curl -T) or downloads (curl -o /dev/null), RSS of the server tree sampled throughout."""
    times: list[float] = []
    rss: list[dict[str, Any]] = []
    for i in range(reps):
        os.sync()  # start each run with no dirty pages from the previous one
        time.sleep(0.5)
        with RssSampler(server.pid) as sampler:
            start = time.perf_counter()
            if kind == "upload":
                _, _, moved = curl(server.transcript, ["-T", str(file), url])
            else:
                _, _, moved = curl(server.transcript, [url])
            elapsed = time.perf_counter() - start
        if int(moved) != size:
            raise RuntimeError(f"{kind} via {server.name} moved {moved} bytes, expected {size}")
        if check:
            check()
        times.append(elapsed)
        rss.append(sampler.result())
        log(
            f"  {server.name} {kind} {size / GIB:g} GiB run {i + 1}: {elapsed:.2f} s, "
            f"peak proc {mb(sampler.result()['proc_max'])} MB, tree {mb(sampler.result()['tree_max'])} MB"
        )
    return {"seconds": statistics.median(times), "all": times, "rss": merge_rss(rss)}


def hey(transcript: Transcript, url: str, method: str, duration: float, body: Path | None = None) -> dict[str, Any]:
    """`duration` seconds at CONCURRENCY after 256 unrecorded requests, so connections and caches are warm."""
    base = ["hey", "-c", str(CONCURRENCY), "-m", method, "-T", "application/octet-stream", "-t", "30"]
    if body is not None:
        base += ["-D", str(body)]
    subprocess.run([*base, "-n", "256", url], capture_output=True, timeout=120)  # warm-up
    cmd = [*base, "-z", f"{duration:g}s", url]
    transcript.record(cmd)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120).stdout
    return parse_hey(out)


def parse_hey(out: str) -> dict[str, Any]:
    """req/s, p50/p99 in ms, and errors: non-2xx responses plus transport errors (hey lists those apart)."""

    def grab(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    ok = errors = 0
    for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out):
        if 200 <= int(code) < 300:
            ok += int(count)
        else:
            errors += int(count)
    if "Error distribution:" in out:
        for count in re.findall(r"^\s+\[(\d+)\]\s+\D", out.split("Error distribution:", 1)[1], re.M):
            errors += int(count)
    p50, p99 = grab(r"50%+ in ([\d.]+) secs"), grab(r"99%+ in ([\d.]+) secs")
    return {
        "rps": grab(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": p50 * 1000 if p50 is not None else None,
        "p99_ms": p99 * 1000 if p99 is not None else None,
        "ok": ok,
        "errors": errors,
    }


def time_list(
    transcript: Transcript, url: str, expect: int, count: Callable[[Any], int], reps: int = 5
) -> dict[str, Any]:
    """Median of `reps` GETs of a listing, after one that checks it has `expect` entries (`count` reads them)."""
    transcript.record(f"curl -s '{url}'")
    with httpx.Client(timeout=120) as client:
        r = client.get(url)  # warm-up (dentry cache)
        r.raise_for_status()
        got = count(r.json())
        if got != expect:
            raise RuntimeError(f"listing {url} returned {got} entries, expected {expect}")
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            r = client.get(url)
            r.raise_for_status()
            r.json()
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "all": times, "entries": got}


def wrk(
    transcript: Transcript,
    base: str,
    script: str,
    args: list[str],
    duration: float,
    concurrency: int = CONCURRENCY,
    pid: int | None = None,
) -> dict[str, Any]:
    """wrk with one of bench/wrk/'s scripts (URLs that change per request, which hey cannot send): req/s, p50/p99
    in ms and errors (non-2xx/3xx plus socket errors); with `pid`, that tree's RSS in the first and last seconds."""
    cmd = ["wrk", "-t", "2", "-c", str(concurrency), "-d", f"{duration:g}s", "--timeout", "30s"]
    cmd += ["-s", f"bench/wrk/{script}", base, "--", *args]
    transcript.record(cmd)
    sampler = RssSampler(pid, interval=1.0) if pid else None
    with sampler or contextlib.nullcontext():
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, cwd=BENCH.parent)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-400:]} {out.stdout.strip()[-400:]}")
    r = json.loads(line.removeprefix("WRK-JSON "))
    result: dict[str, Any] = {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "ok": r["requests"] - r["status"],
        "errors": r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"],
    }
    if sampler:  # flat: the tree's largest RSS in the last tenth of the run against the first tenth's
        tenth = max(1, len(sampler.samples) // 10)
        result["rss_first"], result["rss_last"] = max(sampler.samples[:tenth]), max(sampler.samples[-tenth:])
    return result
