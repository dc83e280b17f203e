#!/usr/bin/env bash
# The MLflow UI on 127.0.0.1 over the project's tracking store ($MLFLOW_TRACKING_URI or sqlite:///mlflow.db).
#   bash scripts/mlflow_ui.sh               # foreground, Ctrl-C stops it
#   bash scripts/mlflow_ui.sh --background  # own process group, pid in .prefect/run/; stop with --stop or stop.sh
#   bash scripts/mlflow_ui.sh --stop
# One worker and no job execution: ~0.5 GB instead of ~3.5 GB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
PORT="${DAPL_MLFLOW_PORT:-5000}"
URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
cmd=(.venv/bin/mlflow server --backend-store-uri "$URI" --artifacts-destination "$ROOT/mlruns" --host 127.0.0.1
     --port "$PORT" --workers 1)
case "${1:-}" in
  --stop) stop_group mlflow-ui 20 && echo "MLflow UI stopped" ;;
  --background)
    if is_running mlflow-ui; then echo "MLflow UI already running: http://127.0.0.1:$PORT"; exit 0; fi
    start_group mlflow-ui "${cmd[@]}"
    if wait_http "http://127.0.0.1:$PORT/health" 120; then
      echo "MLflow UI: $(.venv/bin/python -m tasks.mlflow_links "http://127.0.0.1:$PORT") ($URI)"
      echo "stop: bash scripts/mlflow_ui.sh --stop"
    else
      tail -20 "$RUN_DIR/mlflow-ui.log" >&2; stop_group mlflow-ui; exit 1
    fi ;;
  "") echo "MLflow UI: http://127.0.0.1:$PORT ($URI); Ctrl-C to stop"
      echo "  training runs: open the experiment from a link the flow printed, or pick 'Model training' in the sidebar"
      exec "${cmd[@]}" ;;
  *) echo "usage: $0 [--background|--stop]" >&2; exit 2 ;;
esac
