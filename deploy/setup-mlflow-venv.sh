#!/usr/bin/env bash
# Creates the full MLflow (tracking server, pyfunc, and the second MLflow client the tests drive) in its own venv,
# `.venv-mlflow` at the repo root. Idempotent and cheap when already done, so `make test` and `make stack` can call it
# every time; it reinstalls when a pin changes.
#
# Why a separate venv: the project's .venv holds mlflow-skinny (the client the contract tests import in-process);
# `mlflow server` and pyfunc models need the full `mlflow` package (numpy, pandas, sqlalchemy, alembic, ...), about
# 850 MB that must not disturb the project's own pins (aiobotocore's botocore pin). The tests run every real-client
# test twice: with .venv's mlflow-skinny and, through tests/utils/mlflow_worker.py, with this venv's mlflow.
#
# Versions, both pinned in constraints.txt: `mlflow-skinny==` is .venv's client, `mlflow==` this venv's.
# mlflow-skinny and mlflow-tracing 3.18.0 are not published yet, so `pip install mlflow==3.18.0` does not resolve.
# The mlflow wheel holds the whole Python tree (the skinny and tracing wheels only repeat parts of it), so until
# they are: install mlflow==$MLFLOW_DEPS_FROM (every dependency), remove its three mlflow distributions, and put
# mlflow==$MLFLOW_VERSION in with --no-deps. Once mlflow-skinny $MLFLOW_VERSION is published, set MLFLOW_DEPS_FROM
# below to "" for a plain install.
#
#   MLFLOW_VENV       where to create it                        [default: <repo>/.venv-mlflow]
#   MLFLOW_VERSION    the mlflow to install                     [default: the mlflow== pin in constraints.txt]
#   MLFLOW_DEPS_FROM  the mlflow whose dependencies it gets     [default: 3.17.2; "" installs MLFLOW_VERSION's own]
#   PYTHON            the interpreter for the venv              [default: python3]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MLFLOW_VENV=${MLFLOW_VENV:-$ROOT/.venv-mlflow}
PINNED=$(sed -n 's/^mlflow==\([^ ;]*\).*/\1/p' "$ROOT/constraints.txt")
MLFLOW_VERSION=${MLFLOW_VERSION:-$PINNED}
MLFLOW_DEPS_FROM=${MLFLOW_DEPS_FROM-3.17.2}
PYTHON=${PYTHON:-python3}
[ -n "$MLFLOW_VERSION" ] || { echo "setup-mlflow-venv: constraints.txt pins no mlflow==VERSION" >&2; exit 1; }
if [ "$MLFLOW_DEPS_FROM" = "$MLFLOW_VERSION" ]; then MLFLOW_DEPS_FROM=""; fi
# psycopg (3) lets the tracking server use PostgreSQL (deploy/stack.sh does when PostgreSQL is installed); SQLAlchemy
# 2.1 picks it for postgresql:// URIs, and the stack names it explicitly (postgresql+psycopg://).
EXTRA=("psycopg[binary]")
STAMP=$MLFLOW_VENV/.artifact-proxy-installed
WANTED="mlflow==$MLFLOW_VERSION${MLFLOW_DEPS_FROM:+ (--no-deps over the dependencies of mlflow==$MLFLOW_DEPS_FROM)} ${EXTRA[*]}"
PY=$MLFLOW_VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check --quiet)

version() {  # the installed mlflow distribution's version, read from its metadata
    local dist
    for dist in "$MLFLOW_VENV"/lib/python3*/site-packages/mlflow-*.dist-info; do
        [ -f "$dist/METADATA" ] && sed -n 's/^Version: //p' "$dist/METADATA" && return 0
    done
    return 1
}

ready() {  # fast: no Python start at all (an `import mlflow` takes 2-6 s); the full check runs once, after installing
    [ -x "$MLFLOW_VENV/bin/mlflow" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ] \
        && [ "$(version 2>/dev/null)" = "$MLFLOW_VERSION" ]
}

if ready; then
    echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $MLFLOW_VERSION)"
    exit 0
fi

# Two callers at once (make test and make stack in two terminals) must not install into one venv concurrently.
mkdir -p "$MLFLOW_VENV"
exec 9>"$MLFLOW_VENV/.setup.lock"
if command -v flock >/dev/null; then flock 9; fi
if ready; then echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $MLFLOW_VERSION)"; exit 0; fi

echo "setup-mlflow-venv: installing $WANTED into $MLFLOW_VENV (about 850 MB, a few minutes the first time)"
rm -f "$STAMP"  # a failure below leaves no stamp, so the next run starts over
[ -x "$PY" ] || "$PYTHON" -m venv "$MLFLOW_VENV"
"${PIP[@]}" install --upgrade pip
if [ -n "$MLFLOW_DEPS_FROM" ]; then
    "${PIP[@]}" install "mlflow==$MLFLOW_DEPS_FROM" "${EXTRA[@]}"
    # The three distributions share one file tree: remove them all, then lay the new tree down alone, so no stale
    # module survives and no mlflow-skinny/mlflow-tracing metadata makes `import mlflow` warn of a version mismatch.
    "${PIP[@]}" uninstall --yes mlflow mlflow-skinny mlflow-tracing
    rm -rf "$MLFLOW_VENV"/lib/python3*/site-packages/mlflow
    "${PIP[@]}" install --no-deps "mlflow==$MLFLOW_VERSION"
else
    "${PIP[@]}" install "mlflow==$MLFLOW_VERSION" "${EXTRA[@]}"
fi
"$PY" - "$MLFLOW_VERSION" <<'EOF'
import importlib.metadata as metadata
import sys

import cloudpickle, pandas, psycopg  # noqa: E401,F401 (what the stack's client and server need)
import mlflow, mlflow.pyfunc, mlflow.server  # noqa: E401,F401
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository  # noqa: F401

assert mlflow.__version__ == sys.argv[1], f"mlflow {mlflow.__version__} is installed, not {sys.argv[1]}"
EOF
echo "$WANTED" > "$STAMP"
echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $MLFLOW_VERSION)"
