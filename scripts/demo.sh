#!/usr/bin/env bash
# The one-command demo, from a fresh clone:
#   bash scripts/demo.sh
# installs .venv (scripts/setup.sh), generates the toy world into data/toy (the bytes data.dvc records), runs the
# toy full benchmark (12 pairs x zero-shot/source-only/DAPL) and the ablations (five prompt settings, an M1xM2
# grid, tau 0.4-0.7) as Prefect flows (ephemeral API: no server needed), logs everything to MLflow
# (sqlite:///mlflow.db unless MLFLOW_TRACKING_URI is set), prints the results tables and how to open the UI.
# The configuration is params.yaml (the same as `dvc repro`); optional knobs: DEMO_EPOCHS, DEMO_VIEWS, DEMO_SEEDS
# (JSON list, default [1]), DEMO_WORKERS (concurrent runs, default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
t0=$(date +%s)
bash scripts/setup.sh
source scripts/env.sh
WORKDIR="${DEMO_WORKDIR:-$ROOT}"
WEIGHTS="${DEMO_WEIGHTS:-$ROOT/dapl/assets/toy-clip.pt}"
SEEDS="${DEMO_SEEDS:-[1]}" WORKERS="${DEMO_WORKERS:-2}"
over=()
[ -n "${DEMO_EPOCHS:-}" ] && over+=("\"train.epochs\": $DEMO_EPOCHS")
[ -n "${DEMO_VIEWS:-}" ] && over+=("\"features.views\": $DEMO_VIEWS")
over="{$(IFS=,; echo "${over[*]}")}"
if [ ! -f "$WEIGHTS" ]; then
  echo "note: $WEIGHTS is missing; the flow will pretrain the toy CLIP first (slow: see dapl toy pretrain)" >&2
fi
if [ ! -d data/toy ]; then
  echo "== generating the toy world into data/toy"
  .venv/bin/dapl data fetch toy --root data/toy
fi
URI="${MLFLOW_TRACKING_URI:-sqlite:///$WORKDIR/mlflow.db}"
common=$(cat <<JSON
{"config": "$ROOT/params.yaml", "root": "$ROOT/data/toy", "weights": "$WEIGHTS", "seeds": $SEEDS,
 "workdir": "$WORKDIR", "tracking_uri": "$URI", "overrides": $over}
JSON
)
mkdir -p "$WORKDIR/runs/demo"
echo "$common" >"$WORKDIR/runs/demo/params.json"
for kind in full-benchmark ablations; do
  echo "== Prefect flow dapl, $kind"
  .venv/bin/python -m flows --workers "$WORKERS" run "$kind" --params-file "$WORKDIR/runs/demo/params.json" \
    --out "$WORKDIR/runs/demo/$kind.json" 2>&1 | grep -v -E "it/s\]|img/s\]|batch/s\]|view/s\]" \
    >"$WORKDIR/runs/demo/$kind.log" || { tail -40 "$WORKDIR/runs/demo/$kind.log"; exit 1; }
  grep -E "Finished in state (Completed|Cached)" -c "$WORKDIR/runs/demo/$kind.log" | sed 's/^/   tasks finished: /'
done
.venv/bin/python -m flows.report "$WORKDIR/runs/demo"  # the tables, recipes and warnings
cat <<MSG

Demo finished in $(($(date +%s) - t0)) s.
Open the MLflow UI:   bash scripts/mlflow_ui.sh     (then the address above; Ctrl-C stops it)
Serve the deployments: bash scripts/serve.sh, then prefect deployment run dapl/full-benchmark (docs/PIPELINE.md)
MSG
