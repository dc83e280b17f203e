#!/usr/bin/env bash
# GPU check (issue 13 part 4), prepared for a CUDA machine; not yet run on one. Under 10 minutes on one modern GPU:
#   1. bench.run on CUDA: equivalence of our step with the released structure (stops with status 1 on a mismatch),
#      then step/epoch timings for RN50 and RN101 at K = 65 and 12            -> block `cuda` of docs/PERFORMANCE.md
#   2. extraction throughput, fp32 path vs `auto` (= fp16 on CUDA: the AMP path the released code ran) with 16
#      DataLoader workers, incl. the feature cosine of fp16/bf16 to fp32       -> block `cuda-extraction`
#   3. the toy benchmark (params.yaml, 3 seeds) on CUDA at `auto` and at fp32  -> block `cuda-toy`
# Usage: bash scripts/gpu_check.sh            (GPU_CHECK_QUICK=1: fewer images and seeds, for a first look)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1 DAPL_OFFLINE=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
PY=.venv/bin/python
t0=$(date +%s)
$PY -m bench.gpu_check  # names the device, or stops at once without one
QUICK="${GPU_CHECK_QUICK:-0}"
IMAGES=$([ "$QUICK" = 1 ] && echo 256 || echo 2048)
SEEDS=$([ "$QUICK" = 1 ] && echo 1 || echo 1,2,3)

echo "== 1/3 bench.run --device cuda (equivalence first, then timings)"
timeout 300 $PY -m bench.run --device cuda --models RN50,RN101 --classes 65,12 --scaling none --tag cuda

echo "== 2/3 extraction throughput, 16 loader workers"
timeout 180 $PY -m bench.features --device cuda --workers 16 --images "$IMAGES" --skip-processes --tag cuda-extraction

echo "== 3/3 toy benchmark on CUDA"
if [ ! -f artifacts/manifests/toy.parquet ]; then
  .venv/bin/dapl data fetch toy --root data/toy
  .venv/bin/dapl data index toy --root data/toy --out artifacts/manifests/toy.parquet
fi
timeout 240 $PY -m bench.precision --device cuda --seeds "$SEEDS" --precisions auto,fp32 --tag cuda-toy \
  --runs-dir runs/gpu-check-toy
echo "gpu_check: done in $(( $(date +%s) - t0 )) s; results in docs/PERFORMANCE.md (blocks cuda, cuda-extraction, cuda-toy)"
