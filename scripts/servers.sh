#!/usr/bin/env bash
# The shared servers of a multi-host setup (docs/SCALE.md), all on one database host, bound to 127.0.0.1 unless
# DAPL_SERVERS_HOST says otherwise: PostgreSQL (scripts/pg.sh), the Prefect server and the MLflow tracking server,
# both storing into PostgreSQL. Each in its own process group, pids and logs in .prefect/run/ ($DAPL_RUN_DIR).
#   bash scripts/servers.sh start   # ports: $DAPL_PREFECT_PORT, $DAPL_MLFLOW_PORT, $DAPL_PG_PORT, else free ones
#   source .prefect/run/servers.env # PREFECT_API_URL and MLFLOW_TRACKING_URI for clients and workers
#   bash scripts/servers.sh stop    # workers (scripts/workers.sh) first, then Prefect, MLflow, PostgreSQL
# MLflow artifacts go to $DAPL_ARTIFACTS (default .prefect/mlflow-artifacts); served through the MLflow server.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
HOST="${DAPL_SERVERS_HOST:-127.0.0.1}"
ENV_FILE="$RUN_DIR/servers.env"

free_port() { .venv/bin/python -m flows.services free-port; }

start_prefect() {
  local port="${DAPL_PREFECT_PORT:-$(free_port)}"
  PREFECT_API_DATABASE_CONNECTION_URL="$(bash scripts/pg.sh url prefect asyncpg)" \
    start_group shared-prefect env -u PREFECT_API_URL .venv/bin/prefect server start --host "$HOST" --port "$port" \
    --analytics-off
  echo "http://$HOST:$port/api"
}

start_mlflow() {
  local port="${DAPL_MLFLOW_PORT:-$(free_port)}" art="${DAPL_ARTIFACTS:-$ROOT/.prefect/mlflow-artifacts}"
  mkdir -p "$art"
  # the database URLs (with the password) travel in the environment, never on a command line others can read
  MLFLOW_BACKEND_STORE_URI="$(bash scripts/pg.sh url mlflow psycopg2)" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    start_group shared-mlflow .venv/bin/mlflow server --artifacts-destination "$art" --host "$HOST" --port "$port" \
    --workers 1
  echo "http://$HOST:$port"
}

start() {
  if [ -f "$ENV_FILE" ] && is_running shared-prefect; then echo "servers already running ($ENV_FILE)"; return 0; fi
  bash scripts/pg.sh start
  local api mlflow
  api=$(start_prefect)
  mlflow=$(start_mlflow)
  if ! wait_http "$api/health" 180; then tail -20 "$RUN_DIR/shared-prefect.log" >&2; stop; exit 1; fi
  if ! wait_http "$mlflow/health" 180; then tail -20 "$RUN_DIR/shared-mlflow.log" >&2; stop; exit 1; fi
  printf 'export PREFECT_API_URL=%s\nexport MLFLOW_TRACKING_URI=%s\n' "$api" "$mlflow" >"$ENV_FILE"
  echo "Prefect API $api, MLflow $mlflow (PostgreSQL); clients: source $ENV_FILE"
}

stop() {
  local status=0
  bash scripts/workers.sh stop || status=1
  for name in shared-prefect shared-mlflow; do
    stop_group "$name" 20 || status=1
  done
  bash scripts/pg.sh stop || status=1
  rm -f "$ENV_FILE"
  return $status
}

case "${1:-}" in
  start) start ;;
  stop) stop && echo "servers stopped; no process left" ;;
  *) echo "usage: bash scripts/servers.sh start|stop" >&2; exit 2 ;;
esac
