#!/usr/bin/env bash
# Start a local Prefect server (127.0.0.1, database in .prefect/) and serve the `dapl` deployments
# (full-benchmark, ablations, adapt). Both run in their own process groups; pids and logs in .prefect/run/.
#   bash scripts/serve.sh [--runner dask] [--workers N] [--dask-address tcp://host:8786]
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   prefect deployment run dapl/full-benchmark --watch
# Stop everything with: bash scripts/stop.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
PORT="${DAPL_PREFECT_PORT:-4200}"
API="http://127.0.0.1:$PORT/api"

if is_running prefect-server; then
  echo "Prefect server already running (pid $(cat "$RUN_DIR/prefect-server.pid"))"
else
  unset PREFECT_API_URL
  start_group prefect-server .venv/bin/prefect server start --host 127.0.0.1 --port "$PORT" --analytics-off
  echo "starting the Prefect server on $API (database in $PREFECT_HOME; log $RUN_DIR/prefect-server.log) ..."
  if ! wait_http "$API/health" 180; then
    tail -20 "$RUN_DIR/prefect-server.log" >&2; stop_group prefect-server; exit 1
  fi
fi
export PREFECT_API_URL="$API"
if is_running prefect-serve; then
  echo "deployments already served (pid $(cat "$RUN_DIR/prefect-serve.pid"))"
else
  start_group prefect-serve .venv/bin/python -m flows "$@" serve
  echo "serving the dapl deployments (log $RUN_DIR/prefect-serve.log) ..."
  for _ in $(seq 120); do
    if .venv/bin/prefect deployment inspect dapl/ablations >/dev/null 2>&1 \
        && .venv/bin/prefect deployment inspect dapl/full-benchmark >/dev/null 2>&1; then
      break
    fi
    if ! is_running prefect-serve; then tail -20 "$RUN_DIR/prefect-serve.log" >&2; exit 1; fi
    sleep 1
  done
fi
cat <<MSG
Ready. Prefect UI: http://127.0.0.1:$PORT
  export PREFECT_API_URL=$API
  .venv/bin/prefect deployment run dapl/full-benchmark --watch
  .venv/bin/prefect deployment run dapl/ablations --param seeds='[1,2]' --watch
Stop: bash scripts/stop.sh
MSG
