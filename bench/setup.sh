#!/usr/bin/env bash
# Installs what `bench/run.py` needs. Idempotent: every step checks before it installs.
#   - nginx, hey and wrk from apt (wrk: URLs that change per request, bench/wrk/)
#   - psutil and py-spy into the project venv (.venv)
#   - MLflow 3.x in its own venv, .venv-mlflow (shared with the stack tests; deploy/setup-mlflow-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_PY=${VENV_PY:-$ROOT/.venv/bin/python}
MLFLOW_VENV=${MLFLOW_VENV:-$ROOT/.venv-mlflow}

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v hey >/dev/null || need_apt+=(hey)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The stock nginx package starts a default server on :80 on some systems; the bench runs its own instance.

# Project venv: psutil (RSS sampling) and py-spy (profiling). Only install what is missing.
if ! "$VENV_PY" -c "import psutil" 2>/dev/null; then
    echo "setup: pip install psutil into .venv"
    "$VENV_PY" -m pip install -q psutil
fi
if [ ! -x "$(dirname "$VENV_PY")/py-spy" ]; then
    echo "setup: pip install py-spy into .venv"
    "$VENV_PY" -m pip install -q py-spy || echo "setup: py-spy unavailable (optional), continuing"
fi

# MLflow peer in its own venv, the one `make test` already builds for the stack tests.
MLFLOW_VENV="$MLFLOW_VENV" bash deploy/setup-mlflow-venv.sh
echo "setup: ok (mlflow $("$MLFLOW_VENV/bin/python" -c 'import mlflow; print(mlflow.__version__)'))"
