"""Safe defaults set before Prefect or MLflow is imported: project-local Prefect state, telemetry off.

The values live in :data:`dapl.paths.ENV_DEFAULTS` (scripts/env.sh sets the same); the environment wins.
"""

from dapl.paths import apply_env_defaults

apply_env_defaults()
