#!/usr/bin/env bash
# Creates the full MLflow (tracking server + pyfunc client) in its own venv, `.venv-mlflow` at the repo root.
# Idempotent and cheap when already done, so `make test` and `make stack` can call it every time.
#
# Why a separate venv: the project's .venv holds mlflow-skinny (the client the contract tests drive); `mlflow server`
# and pyfunc models need the full `mlflow` package (numpy, pandas, sqlalchemy, alembic, ...), about 850 MB that must
# not disturb the project's own pins (aiobotocore's botocore pin).
#
#   MLFLOW_VENV   where to create it           [default: <repo>/.venv-mlflow]
#   MLFLOW_SPEC   what to install              [default: mlflow>=3,<4]
#   PYTHON        the interpreter for the venv [default: python3]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MLFLOW_VENV=${MLFLOW_VENV:-$ROOT/.venv-mlflow}
MLFLOW_SPEC=${MLFLOW_SPEC:-mlflow>=3,<4}
PYTHON=${PYTHON:-python3}
# psycopg (3) lets the tracking server use PostgreSQL (deploy/stack.sh does when PostgreSQL is installed); SQLAlchemy
# 2.1 picks it for postgresql:// URIs, and the stack names it explicitly (postgresql+psycopg://).
PACKAGES=("$MLFLOW_SPEC" "psycopg[binary]")
STAMP=$MLFLOW_VENV/.artifact-proxy-installed
PY=$MLFLOW_VENV/bin/python

version() { "$PY" -c "import importlib.metadata as m; print(m.version('mlflow'))"; }

ready() {  # fast: no `import mlflow` (2-6 s); the full import check runs once, right after installing
    [ -x "$MLFLOW_VENV/bin/mlflow" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PACKAGES[*]}" ] \
        && version >/dev/null 2>&1
}

if ready; then
    echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $(version))"
    exit 0
fi

# Two callers at once (make test and make stack in two terminals) must not install into one venv concurrently.
mkdir -p "$MLFLOW_VENV"
exec 9>"$MLFLOW_VENV/.setup.lock"
if command -v flock >/dev/null; then flock 9; fi
if ready; then echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $(version))"; exit 0; fi

echo "setup-mlflow-venv: installing ${PACKAGES[*]} into $MLFLOW_VENV (about 850 MB, a few minutes the first time)"
[ -x "$PY" ] || "$PYTHON" -m venv "$MLFLOW_VENV"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
"$PY" -c "import mlflow, mlflow.server, mlflow.pyfunc, pandas, cloudpickle, psycopg"
echo "${PACKAGES[*]}" > "$STAMP"
echo "setup-mlflow-venv: ok ($MLFLOW_VENV, mlflow $(version))"
