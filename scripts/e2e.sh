#!/usr/bin/env bash
# End-to-end check (CI): start the Prefect server, serve the deployments, run
# `prefect deployment run dapl/full-benchmark` with tiny parameters, wait for Completed, check the MLflow runs
# (tests/test_pipeline_checks.py), stop everything and assert that no process is left. Scratch state in .prefect/e2e/ (removed first).
#   E2E_WEIGHTS=/path/to/toy-clip.pt   weights to use (default dapl/assets/toy-clip.pt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
t0=$(date +%s)
E2E="$ROOT/.prefect/e2e"
WEIGHTS="${E2E_WEIGHTS:-$ROOT/dapl/assets/toy-clip.pt}"
[ -f "$WEIGHTS" ] || { echo "e2e: no toy CLIP checkpoint at $WEIGHTS (set E2E_WEIGHTS)" >&2; exit 1; }
rm -rf "$E2E" && mkdir -p "$E2E"
export DAPL_RESULTS_DIR="$E2E/results"  # a cold task cache: every stage really runs
for name in prefect-server prefect-serve; do
  if is_running "$name"; then echo "e2e: $name is already running; stop it first (scripts/stop.sh)" >&2; exit 1; fi
done
cleanup() { bash scripts/stop.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT

bash scripts/serve.sh --workers 2
export PREFECT_API_URL="http://127.0.0.1:${DAPL_PREFECT_PORT:-4200}/api"
params=$(cat <<JSON
{"root": "$E2E/toy", "toy": {"images_per_class": 4}, "weights": "$WEIGHTS", "epochs": 2,
 "pairs": ["real->art", "art->real"], "overrides": {"features.views": 1, "features.num_workers": 0},
 "workdir": "$E2E", "tracking_uri": "sqlite:///$E2E/mlflow.db"}
JSON
)
echo "== prefect deployment run dapl/full-benchmark (tiny parameters)"
.venv/bin/prefect deployment run dapl/full-benchmark --params "$params" --watch --watch-timeout 900 \
  >"$E2E/deployment-run.log" 2>&1 || { tail -30 "$E2E/deployment-run.log"; tail -40 "$RUN_DIR/prefect-serve.log"; exit 1; }
tail -1 "$E2E/deployment-run.log"
grep -q "Flow run finished successfully in 'Completed'" "$E2E/deployment-run.log"

echo "== checks (tests/test_pipeline_checks.py): one finished parent run with 6 finished nested runs"
DAPL_CHECK=e2e DAPL_CHECK_DIR="$E2E" .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_pipeline_checks.py -k e2e -rs
cat "$E2E"/runs/benchmark/*/benchmark_table.md

echo "== stop everything"
pgids="$(cat "$RUN_DIR/prefect-server.pid") $(cat "$RUN_DIR/prefect-serve.pid")"
tree=""
for g in $pgids; do tree="$tree $g $(descendants "$g" | tr '\n' ' ')"; done
bash scripts/stop.sh
trap - EXIT
left=""
for p in $tree; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
for g in $pgids; do kill -0 -- "-$g" 2>/dev/null && left="$left group:$g"; done
if [ -n "$left" ]; then ps -o pid,args -p "${left// group:*/}" || true; echo "FAIL: processes left:$left" >&2; exit 1; fi
echo "OK: e2e passed in $(($(date +%s) - t0)) s; no process left"
