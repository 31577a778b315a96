"""Profile artifact-proxy's workers with py-spy during one bench workload; print the top frames.

    .venv/bin/python bench/profile.py put|get|list|upload|download [--seconds N] [--workers N]

Starts the server (local destination in a temp dir), runs the workload with hey or curl while
`py-spy record --format raw --nonblocking` samples every worker, then prints self time per leaf frame and
inclusive time per frame, summed over workers. Flame graphs (speedscope JSON is not written; the raw collapsed
stacks are kept in bench/profiles/<workload>-<pid>.txt for `flamegraph.pl` or speedscope).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

if __package__ in (None, ""):
    # `python bench/profile.py` puts bench/ on sys.path, not the repo: add the repo for the `bench` package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import API, BENCH, SMALL  # noqa: E402
from bench.load import curl, hey  # noqa: E402
from bench.procs import running  # noqa: E402
from bench.servers import proxy_server  # noqa: E402
from bench.transcript import Transcript  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


def summarize(files: list[Path], top: int) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack:
                continue
            count = int(n)
            frames = stack.split(";")
            if any(fr.startswith("Queue.get (queue.py") for fr in frames):
                continue  # an idle anyio worker thread waiting for a job
            total += count
            self_t[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    out = [
        f"{total} samples (busy threads; idle anyio pool threads dropped) over {len(files)} worker(s)",
        "",
        "self time (leaf frames):",
    ]
    out += [f"  {c / total:6.1%}  {fr}" for fr, c in self_t.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {c / total:6.1%}  {fr}" for fr, c in incl.most_common(top * 2)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["put", "get", "list", "upload", "download"])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    transcript = Transcript(Path(tempfile.mkdtemp(prefix="artifact-proxy-profile-")))
    tmp = transcript.tmp
    outdir = BENCH / "profiles"
    outdir.mkdir(exist_ok=True)
    try:
        root = tmp / "root"
        (root / "bench/small").mkdir(parents=True)
        small = tmp / "16k.bin"
        small.write_bytes(os.urandom(SMALL))
        for i in range(10):
            (root / f"bench/small/f{i}.bin").write_bytes(small.read_bytes())
        big = tmp / "1g.bin"
        if args.workload in ("upload", "download"):
            with open(big, "wb") as f:
                for _ in range(16):
                    f.write(os.urandom(64 * 1024 * 1024))
            if args.workload == "download":
                shutil.copy(big, root / "bench/large.bin")
        server = proxy_server(transcript, root, args.workers)
        with running(server):
            pids = [
                pid for pid in server.worker_pids() if "resource_tracker" not in " ".join(psutil.Process(pid).cmdline())
            ]
            files = [outdir / f"{args.workload}-{pid}.txt" for pid in pids]
            spies = [
                subprocess.Popen(
                    [
                        str(PY_SPY),
                        "record",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "-r",
                        "250",
                        "-d",
                        str(int(args.seconds)),
                        "-p",
                        str(pid),
                        "-o",
                        str(f),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid, f in zip(pids, files, strict=True)
            ]
            base = f"{server.base}{API}"
            stop = threading.Event()
            if args.workload in ("put", "get", "list"):
                url = {
                    "put": f"{base}/bench/small/put.bin",
                    "get": f"{base}/bench/small/f0.bin",
                    "list": f"{base}?path=bench/small",
                }[args.workload]
                res = hey(
                    transcript,
                    url,
                    "PUT" if args.workload == "put" else "GET",
                    args.seconds - 1,
                    small if args.workload == "put" else None,
                )
                print("hey:", res)
            else:
                n = 0
                while not stop.is_set() and n < 100:
                    if args.workload == "upload":
                        _, secs, _ = curl(transcript, ["-T", str(big), f"{base}/bench/large.bin"])
                    else:
                        _, secs, _ = curl(transcript, [f"{base}/bench/large.bin"])
                    print(f"{args.workload}: {secs:.2f} s")
                    n += 1
                    if all(s.poll() is not None for s in spies):
                        break
            for s in spies:
                s.wait()
        print(summarize([f for f in files if f.exists()], args.top))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
