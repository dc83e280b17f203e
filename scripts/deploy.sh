#!/usr/bin/env bash
# The work pool's side of the shared Prefect server (docs/SCALE.md), idempotent: the process work pool `dapl`, the
# deployments of prefect.yaml (`prefect deploy --all`) and the automations that hand a dead worker's flow run to
# another worker (flows/recovery.py).
#   source .prefect/run/servers.env && bash scripts/deploy.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
POOL=dapl  # the pool prefect.yaml deploys to
[ -n "${PREFECT_API_URL:-}" ] || { echo "deploy.sh: PREFECT_API_URL is not set (source .prefect/run/servers.env)" >&2; exit 2; }
if .venv/bin/prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
  echo "work pool $POOL exists"
else
  .venv/bin/prefect work-pool create "$POOL" --type process
fi
.venv/bin/prefect --no-prompt deploy --all
.venv/bin/python -m flows automations
