#!/usr/bin/env bash
# Prefect workers of the process work pool `dapl` (prefect.yaml), each in its own process group; on a GPU host run
# one worker with --limit 1, so the host trains one run at a time (docs/SCALE.md).
#   source .prefect/run/servers.env            # or export PREFECT_API_URL / MLFLOW_TRACKING_URI yourself
#   bash scripts/workers.sh start NAME [LIMIT]  # a worker named NAME (default limit 1 flow run at a time)
#   bash scripts/workers.sh stop                # every worker this checkout started (and the runs they spawned)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
POOL="${DAPL_WORK_POOL:-dapl}"

case "${1:-}" in
  start)
    name="${2:?usage: workers.sh start NAME [LIMIT]}"
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "workers.sh: worker name '$name': use letters, digits, - and _" >&2; exit 2; }
    [ -n "${PREFECT_API_URL:-}" ] || { echo "workers.sh: PREFECT_API_URL is not set (source .prefect/run/servers.env)" >&2; exit 2; }
    if is_running "worker-$name"; then echo "worker $name already running"; exit 0; fi
    start_group "worker-$name" .venv/bin/prefect worker start --pool "$POOL" --type process --name "$name" \
      --limit "${3:-1}"
    echo "worker $name polling pool $POOL (log $RUN_DIR/worker-$name.log)" ;;
  stop)
    status=0
    for f in "$RUN_DIR"/worker-*.pid; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .pid)
      stop_group "$name" 10 || status=1  # an idle worker ignores SIGTERM for ~30 s; its group is killed after 10
    done
    exit $status ;;
  *) echo "usage: bash scripts/workers.sh start NAME [LIMIT] | stop" >&2; exit 2 ;;
esac
