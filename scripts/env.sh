# Sourced by every script: telemetry off, project-local state, offline hub. The Python side applies the same values
# (dapl/paths.py ENV_DEFAULTS, apply_env_defaults; tests/test_plan.py checks they agree). PYTHONPATH: this checkout
# first (tasks/ and flows/ are also installed with dapl, so an installed project needs no PYTHONPATH).
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
export PREFECT_LOGGING_EXTRA_LOGGERS="${PREFECT_LOGGING_EXTRA_LOGGERS:-dapl}"
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="${PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW:-ignore}"
export PREFECT_CLIENT_RETRY_EXTRA_CODES="${PREFECT_CLIENT_RETRY_EXTRA_CODES:-500}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
