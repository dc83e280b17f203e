#!/usr/bin/env bash
# Fault check: SIGKILL the flow (and its process group) in the middle of a training, start it again, and assert
#   - finished tasks (fetch/index/features/zero-shot, the finished runs) come from the Prefect cache,
#   - the killed training resumes from its last epoch checkpoint (and its MLflow run holds every epoch),
#   - the MLflow runs of the killed process are marked FAILED, none is left RUNNING,
#   - no process of the killed flow is left.
# The script starts, kills and restarts; the assertions are tests/test_pipeline_checks.py.
# Scratch state in .prefect/killtest/ (removed first).  E2E_WEIGHTS: the toy CLIP (default dapl/assets/toy-clip.pt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
t0=$(date +%s)
W="$ROOT/.prefect/killtest"
WEIGHTS="${E2E_WEIGHTS:-$ROOT/dapl/assets/toy-clip.pt}"
EPOCHS=12
[ -f "$WEIGHTS" ] || { echo "kill_rerun: no toy CLIP checkpoint at $WEIGHTS (set E2E_WEIGHTS)" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W"
export DAPL_RESULTS_DIR="$W/results"
cat >"$W/params.json" <<JSON
{"root": "$W/toy", "toy": {"images_per_class": 12}, "weights": "$WEIGHTS", "epochs": $EPOCHS,
 "pairs": ["real->art", "art->real"], "methods": ["zero_shot", "dapl"],
 "overrides": {"features.views": 1, "features.num_workers": 0, "train.batch_source": 16, "train.batch_target": 16},
 "workdir": "$W", "tracking_uri": "sqlite:///$W/mlflow.db"}
JSON
run_flow() {  # LOGNAME: the flow in its own process group (so the kill takes its ephemeral API server too)
  setsid .venv/bin/python -m flows --workers 1 run full-benchmark --params-file "$W/params.json" \
    --out "$W/$1.json" >"$W/$1.log" 2>&1 </dev/null &
  echo $!
}

echo "== first run; SIGKILL once one DAPL run has finished and another is mid-training"
pid=$(run_flow first)
state=$(.venv/bin/python scripts/kill_mid_training.py "$W" "$EPOCHS" "$pid") || { tail -30 "$W/first.log"; kill -KILL -- "-$pid" 2>/dev/null; exit 1; }
read -r killed_pair killed_epoch <<<"$state"
if ! group_gone "$pid" 20; then echo "FAIL: processes of the killed flow survive" >&2; exit 1; fi
echo "killed the flow (process group $pid) while $killed_pair dapl was at epoch $killed_epoch; no process left"

echo "== second run (same parameters)"
pid2=$(run_flow second)
while kill -0 "$pid2" 2>/dev/null; do sleep 1; done  # (not our child: started in a command substitution)
group_gone "$pid2" 20 || { echo "FAIL: processes of the second run survive" >&2; exit 1; }
grep -q "Finished in state Completed" "$W/second.log" || { tail -40 "$W/second.log"; exit 1; }
grep "resuming from the epoch" "$W/second.log" | sed 's/^.*Task run/  Task run/'
grep -c "Cached(type=COMPLETED)" "$W/second.log" | sed 's/^/  tasks from cache: /'

echo "$killed_pair $killed_epoch" >"$W/killed.txt"
DAPL_CHECK=kill_rerun DAPL_CHECK_DIR="$W" DAPL_CHECK_EPOCHS=$EPOCHS .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_pipeline_checks.py -k kill_rerun -rs
echo "OK: kill-and-rerun passed in $(($(date +%s) - t0)) s"
