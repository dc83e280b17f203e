#!/usr/bin/env bash
# The DVC reproducibility check (CI, on a fresh clone): generate data/ byte-identically to data.dvc, check that
# the committed toy CLIP is what its stage's code produces (dvc.lock), run the whole pipeline offline with
# `dvc repro` (the pretraining stage is then skipped), assert data.dvc is unchanged, then assert a second
# `dvc repro` runs no stage at all.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
export PATH="$ROOT/.venv/bin:$PATH"
t0=$(date +%s)
if [ ! -d data/toy ]; then
  echo "== generating the toy world into data/toy (the bytes data.dvc records)"
  dapl data fetch toy --root data/toy
fi
echo "== the shipped toy CLIP matches the code that makes it (dvc.lock entry of toy_pretrain)"
st=$(dvc status toy_pretrain --json)
if [ "$st" != "{}" ]; then
  echo "$st"
  echo "FAIL: dapl/assets/toy-clip.pt or the toy pretraining code changed since dvc.lock was written: run" \
       "\`dvc repro toy_pretrain\` (about 10 min on 2 cores) and commit the checkpoint, its .json and dvc.lock" >&2
  exit 1
fi
echo "== dvc repro"
dvc repro
if ! git diff --quiet -- data.dvc; then
  git --no-pager diff -- data.dvc
  echo "FAIL: the generated data/ differs from data.dvc (dvc repro rewrote it): regenerate and commit data.dvc" \
       "after a change to the toy world generator" >&2
  exit 1
fi
t1=$(date +%s)
echo "== dvc repro again: every stage must be skipped"
out=$(dvc repro 2>&1)
echo "$out"
if grep -q "Running stage" <<<"$out" || [ "$(dvc status --json)" != "{}" ]; then
  echo "FAIL: the second dvc repro ran a stage" >&2
  exit 1
fi
echo "OK: pipeline reproduced in $((t1 - t0)) s; second repro skipped every stage ($(($(date +%s) - t1)) s)"
