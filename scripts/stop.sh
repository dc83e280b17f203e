#!/usr/bin/env bash
# Stop what serve.sh and mlflow_ui.sh started: the serving process (and any flow run it spawned) first, then the
# Prefect server, then the MLflow UI. Exits non-zero if any of their processes is still alive afterwards.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/_procs.sh
status=0
for name in prefect-serve prefect-server mlflow-ui; do
  if [ -f "$RUN_DIR/$name.pid" ]; then
    echo "stopping $name (pid $(cat "$RUN_DIR/$name.pid"))"
    stop_group "$name" 20 || status=1
  fi
done
[ $status = 0 ] && echo "stopped; no process left" || echo "some processes survived (see warnings)" >&2
exit $status
