#!/usr/bin/env bash
# Creates `.venv-mlflow-prev`: the full MLflow at the version of constraints.txt's `mlflow-skinny==` pin (3.17.2, the
# previous MLflow), so that the browser test (tests/test_browser.py) can serve that version's web UI from its own
# tracking server next to .venv-mlflow's (3.18). Idempotent and cheap when already done: `make test` calls it every
# time, and it reinstalls when a pin, or .venv-mlflow, changes.
#
# Why it is small (about 95 MB and 20 s instead of another 850 MB): it holds only the three mlflow distributions
# (mlflow, mlflow-skinny, mlflow-tracing, installed --no-deps), and a .pth file puts .venv-mlflow's site-packages on
# sys.path after its own, for every dependency. Its own `mlflow` package shadows .venv-mlflow's. That is exact, not
# approximate: .venv-mlflow holds mlflow $MLFLOW_DEPS_FROM's dependencies (deploy/setup-mlflow-venv.sh), which are
# the previous version's own as long as the two are equal (3.17.2 today); the check below imports the server and
# `pip check` passes. The 3.18 wheel cannot stand in for it: its UI is 3.18's, whatever the tracking server.
#
#   MLFLOW_PREV_VENV     where to create it                       [default: <repo>/.venv-mlflow-prev]
#   MLFLOW_PREV_VERSION  the mlflow to install                    [default: the mlflow-skinny== pin in constraints.txt]
#   MLFLOW_VENV          the venv whose dependencies it borrows   [default: <repo>/.venv-mlflow; created if missing]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MLFLOW_VENV=${MLFLOW_VENV:-$ROOT/.venv-mlflow}
MLFLOW_PREV_VENV=${MLFLOW_PREV_VENV:-$ROOT/.venv-mlflow-prev}
PINNED=$(sed -n 's/^mlflow-skinny==\([^ ;]*\).*/\1/p' "$ROOT/constraints.txt")
VERSION=${MLFLOW_PREV_VERSION:-$PINNED}
[ -n "$VERSION" ] || { echo "setup-mlflow-prev-venv: constraints.txt pins no mlflow-skinny==VERSION" >&2; exit 1; }

MLFLOW_VENV=$MLFLOW_VENV bash "$ROOT/deploy/setup-mlflow-venv.sh"  # the dependencies (fast when in place)
BASE_SITE=$(echo "$MLFLOW_VENV"/lib/python3*/site-packages)
[ -d "$BASE_SITE" ] || { echo "setup-mlflow-prev-venv: no site-packages in $MLFLOW_VENV" >&2; exit 1; }
PTH_NAME=artifact-proxy-mlflow-deps.pth
STAMP=$MLFLOW_PREV_VENV/.artifact-proxy-installed
# What it was built from: the version, and .venv-mlflow's own stamp (a reinstall there changes the dependencies).
WANTED="mlflow==$VERSION mlflow-skinny==$VERSION mlflow-tracing==$VERSION (--no-deps) over $BASE_SITE: $(cat "$MLFLOW_VENV/.artifact-proxy-installed")"

ready() {  # no Python start: the full check runs once, after installing
    [ -x "$MLFLOW_PREV_VENV/bin/mlflow" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ] \
        && [ -f "$(echo "$MLFLOW_PREV_VENV"/lib/python3*/site-packages)/$PTH_NAME" ]
}

if ready; then
    echo "setup-mlflow-prev-venv: ok ($MLFLOW_PREV_VENV, mlflow $VERSION)"
    exit 0
fi

mkdir -p "$MLFLOW_PREV_VENV"
exec 9>"$MLFLOW_PREV_VENV/.setup.lock"  # two callers at once must not install into one venv concurrently
if command -v flock >/dev/null; then flock 9; fi
if ready; then echo "setup-mlflow-prev-venv: ok ($MLFLOW_PREV_VENV, mlflow $VERSION)"; exit 0; fi

echo "setup-mlflow-prev-venv: installing mlflow $VERSION into $MLFLOW_PREV_VENV (about 95 MB; dependencies from $MLFLOW_VENV)"
# Start from an empty venv every time (it is cheap), so no module of another version survives. Only remove what is
# ours: a venv, or the lock file just created.
if [ -e "$MLFLOW_PREV_VENV/pyvenv.cfg" ] || [ -f "$STAMP" ]; then
    find "$MLFLOW_PREV_VENV" -mindepth 1 -maxdepth 1 ! -name .setup.lock -exec rm -rf {} +
elif [ -n "$(ls -A "$MLFLOW_PREV_VENV" | grep -v '^\.setup\.lock$' || true)" ]; then
    echo "setup-mlflow-prev-venv: $MLFLOW_PREV_VENV exists and is not a venv: not touching it" >&2
    exit 1
fi
# The same interpreter as .venv-mlflow's, so that its compiled dependencies load.
"$MLFLOW_VENV/bin/python" -m venv "$MLFLOW_PREV_VENV"
PY=$MLFLOW_PREV_VENV/bin/python
# Installed before the .pth exists, so pip sees an empty venv and leaves .venv-mlflow alone.
"$PY" -m pip --disable-pip-version-check --quiet install --no-deps \
    "mlflow==$VERSION" "mlflow-skinny==$VERSION" "mlflow-tracing==$VERSION"
SITE=$(echo "$MLFLOW_PREV_VENV"/lib/python3*/site-packages)
# addsitedir, not a bare path: .venv-mlflow's own .pth files are processed too; it appends, so ours come first.
printf 'import site; site.addsitedir(%s)\n' "'$BASE_SITE'" >"$SITE/$PTH_NAME"
"$PY" - "$VERSION" "$SITE" <<'EOF'
import sys

import cloudpickle, pandas  # noqa: E401,F401 (dependencies, from .venv-mlflow)
import mlflow, mlflow.pyfunc, mlflow.server  # noqa: E401,F401

assert mlflow.__version__ == sys.argv[1], f"mlflow {mlflow.__version__} is imported, not {sys.argv[1]}"
assert mlflow.__file__.startswith(sys.argv[2]), f"mlflow is imported from {mlflow.__file__}, not {sys.argv[2]}"
EOF
"$PY" -m pip --disable-pip-version-check check >/dev/null
echo "$WANTED" >"$STAMP"
echo "setup-mlflow-prev-venv: ok ($MLFLOW_PREV_VENV, mlflow $VERSION)"
