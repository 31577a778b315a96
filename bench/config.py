"""What is fixed about the benchmark (where the tools are, the workload sizes) and what its command line chooses."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# The bench runs with the project venv's python, so the server under test is the one installed beside it.
VENV_BIN = Path(sys.executable).parent
PROXY_BIN = VENV_BIN / "artifact-proxy"
MLFLOW_VENV = Path(os.environ.get("MLFLOW_VENV", BENCH.parent / ".venv-mlflow"))
MLFLOW_BIN = MLFLOW_VENV / "bin" / "mlflow"
WEED_BIN = Path(shutil.which("weed", path=str(VENV_BIN)) or VENV_BIN / "weed")
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"

API = "/api/2.0/mlflow-artifacts/artifacts"
GIB = 1024**3
SMALL = 16 * 1024
LIST_N = 10_000
CONCURRENCY = 32
S3_KEYS = {"AWS_ACCESS_KEY_ID": "benchAK", "AWS_SECRET_ACCESS_KEY": "benchSK", "AWS_DEFAULT_REGION": "us-east-1"}
ALL_SERVERS = "sink,nginx,proxy,mlflow,s3"


@dataclass(frozen=True)
class Settings:
    """The run's command-line choices, read once; nothing changes them while the run goes on."""

    big: bool = True
    reps: int = 3
    duration: float = 8.0
    mixed_duration: float = 60.0
    proxy_workers: int | None = None
    out: Path = ROOT / "docs" / "benchmarks.md"
    fsync_variant: bool = True
    only: frozenset[str] = frozenset(ALL_SERVERS.split(","))
    tmp: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            big=args.big,
            reps=args.reps,
            duration=args.duration,
            mixed_duration=args.mixed_duration,
            proxy_workers=args.proxy_workers,
            out=args.out,
            fsync_variant=args.fsync_variant,
            only=frozenset(args.only.split(",")),
            tmp=args.tmp,
        )
