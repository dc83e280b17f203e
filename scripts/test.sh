#!/usr/bin/env bash
# Set up .venv (exact pins) and run the checks: ruff, then the whole pytest suite (CPU only, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
