#!/usr/bin/env bash
# Set up .venv (exact pins) and PostgreSQL (for tests/test_scale.py; as root: apt, idempotent, no system cluster),
# then run the checks: ruff, then the whole pytest suite (CPU only, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ]; then bash scripts/pg.sh install; fi  # else: `sudo bash scripts/pg.sh install` once
source scripts/env.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
