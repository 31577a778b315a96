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
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/run.py` (the Makefile's command) puts bench/ on sys.path, not the repo: add the repo so the
    # sibling modules import as the `bench` package, as they do for `import bench.run` and bench/profile.py.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import ALL_SERVERS, BENCH, MLFLOW_BIN, ROOT, Settings  # noqa: E402
from bench.context import Context  # noqa: E402
from bench.data import Payloads  # noqa: E402
from bench.layers import END as LAYERS_END  # noqa: E402
from bench.layers import START as LAYERS_START  # noqa: E402
from bench.machine import machine  # noqa: E402
from bench.report import report  # noqa: E402
from bench.scenarios import run_all  # noqa: E402
from bench.transcript import Transcript, log  # noqa: E402
from bench.trees import END as TREES_END  # noqa: E402
from bench.trees import START as TREES_START  # noqa: E402


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--big",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also move 4 GiB through artifact-proxy to show memory stays flat (default on)",
    )
    parser.add_argument("--reps", type=int, default=3, help="runs per large transfer; the median is reported")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per hey or wrk workload")
    parser.add_argument(
        "--mixed-duration", type=float, default=60.0, help="seconds of the mixed GET/PUT/LIST workload (0: none)"
    )
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
    return Settings.from_args(parser.parse_args(argv))


# What the figures mean and what bounds each missed target, written by hand from profiles: a run keeps it as it is.
ANALYSIS_START = "<!-- analysis: written by hand, kept by bench/run.py -->"
ANALYSIS_END = "<!-- end of analysis -->"


def kept_sections(out: Path) -> str:
    """The sections bench/trees.py and bench/layers.py write, and the analysis written by hand, which this run does
    not measure: kept as they were."""
    old = out.read_text() if out.exists() else ""
    kept = ""
    for start, end in ((TREES_START, TREES_END), (LAYERS_START, LAYERS_END), (ANALYSIS_START, ANALYSIS_END)):
        if start in old and end in old:
            heading = old.rfind("\n## ", 0, old.index(start))
            kept += old[heading : old.index(end) + len(end)] + "\n"
    return kept


def write_outputs(ctx: Context, started: float) -> None:
    settings = ctx.settings
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    host = machine(settings.proxy_workers)  # after the run, as before: its subprocesses must not load a measurement
    minutes = (time.time() - started) / 60
    text = report(ctx.results, settings, host, ctx.transcript.commands, dt.datetime.now(), minutes)
    settings.out.write_text(text + kept_sections(settings.out))
    (BENCH / "results.json").write_text(json.dumps(ctx.results, indent=2, default=str))
    log(f"wrote {settings.out} and bench/results.json in {(time.time() - started) / 60:.1f} min")


def main() -> int:
    settings = parse_args()
    for tool in ("curl", "hey", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `bash bench/setup.sh` first")
    if not MLFLOW_BIN.exists():
        sys.exit(f"{MLFLOW_BIN} not found: run `bash bench/setup.sh` first")
    started = time.time()
    transcript = Transcript(Path(tempfile.mkdtemp(prefix="artifact-proxy-bench-", dir=settings.tmp)))
    log(f"temp dir {transcript.tmp}")
    ctx = Context(settings, transcript, Payloads.create(transcript.tmp))

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so SIGTERM, like Ctrl-C, stops the servers and removes $TMP

    signal.signal(signal.SIGTERM, on_signal)
    try:
        run_all(ctx)
    finally:
        shutil.rmtree(transcript.tmp, ignore_errors=True)
        log(f"removed {transcript.tmp}")
    write_outputs(ctx, started)
    return 1 if ctx.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
