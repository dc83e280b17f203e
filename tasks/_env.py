"""Safe defaults set before Prefect or MLflow is imported: project-local Prefect state, telemetry off.

Importing prefect creates ``$PREFECT_HOME`` (default ``~/.prefect``); the project keeps it in ``<repo>/.prefect``.
Values already in the environment (scripts/env.sh, CI, the user) win.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _k, _v in {
    "PREFECT_HOME": str(_ROOT / ".prefect"),
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_k, _v)
