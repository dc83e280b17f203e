#!/usr/bin/env bash
# Fault check: SIGKILL the flow (and its process group) in the middle of a training, start it again, and assert
#   - finished tasks (fetch/index/features/zero-shot, the finished runs) come from the Prefect cache,
#   - the killed training resumes from its last epoch checkpoint (and its MLflow run holds every epoch),
#   - the MLflow runs of the killed process are marked FAILED, none is left RUNNING,
#   - no process of the killed flow is left.
# Scratch state in .prefect/killtest/ (removed first).  E2E_WEIGHTS: the toy CLIP (default dapl/assets/toy-clip.pt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
source scripts/_procs.sh
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
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
state=$(.venv/bin/python - "$W" "$EPOCHS" "$pid" <<'PY'
import os, sys, time
from pathlib import Path
import torch
w, epochs, pid = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
end = time.time() + 900
while time.time() < end:
    if not Path(f"/proc/{pid}").exists():
        sys.exit("the flow ended before it could be killed")
    done = [d for d in w.glob("runs/full-benchmark/*/*/dapl/seed1") if (d / "metrics.json").exists()]
    for d in w.glob("runs/full-benchmark/*/*/dapl/seed1"):
        ck = d / "checkpoint.pt"
        if done and not (d / "metrics.json").exists() and ck.exists():
            try:
                e = torch.load(ck, map_location="cpu", weights_only=False)["epoch"]
            except Exception:
                continue
            if 2 <= e < epochs:
                os.killpg(pid, 9)
                print(f"{d.parent.parent.name} {e}")
                sys.exit(0)
    time.sleep(0.1)
sys.exit("timed out waiting for a training to kill")
PY
) || { tail -30 "$W/first.log"; kill -KILL -- "-$pid" 2>/dev/null; exit 1; }
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

.venv/bin/python - "$W" "$killed_pair" "$killed_epoch" "$EPOCHS" <<'PY'
import json, sys
from pathlib import Path
import polars as pl
from mlflow import MlflowClient
w, pair_dir, killed_epoch, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = json.loads((w / "second.json").read_text())
pair = pair_dir.replace("_", "->")
assert res["cached"] >= 3, f"expected the zero-shot runs and the finished DAPL run from cache: {res['cached']}"
rows = pl.read_csv(Path(res["files"]["runs_csv"]))
row = rows.filter((pl.col("pair") == pair) & (pl.col("method") == "dapl")).row(0, named=True)
assert row["resumed_from_epoch"] >= killed_epoch, row
c = MlflowClient(res["tracking_uri"])
runs = list(c.search_runs([res["experiment_id"]], max_results=200))
running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
assert not running, f"runs left RUNNING: {running}"
failed = [r for r in runs if r.info.status == "FAILED"]
assert len(failed) == 2 and all("killed" in r.data.tags.get("dapl.failure", "") for r in failed), \
    [(r.info.run_name, r.info.status) for r in failed]
assert res["orphans_marked_failed"] and set(res["orphans_marked_failed"]) == {r.info.run_id for r in failed}
new = c.get_run(row["run_id"])
steps = sorted(m.step for m in c.get_metric_history(new.info.run_id, "target_acc"))
assert steps == list(range(1, epochs + 1)), steps
print(f"ok: {res['cached']} of {res['runs']} runs from cache; {pair} dapl resumed from epoch "
      f"{row['resumed_from_epoch']} (killed at {killed_epoch}) and logged epochs 1..{epochs}; "
      f"killed runs marked FAILED: {', '.join(sorted(r.info.run_name for r in failed))}")
PY
echo "OK: kill-and-rerun passed in $(($(date +%s) - t0)) s"
