"""Safe defaults set before Prefect or MLflow is imported: project-local Prefect state, telemetry off, dapl's
log lines in the flow run's log; and refused inputs logged without an empty traceback.

The values live in :data:`dapl.paths.ENV_DEFAULTS` (scripts/env.sh sets the same); the environment wins.
"""

import logging

from dapl.paths import apply_env_defaults

apply_env_defaults()


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task that *returned* a Failed state with ``exc_info=True`` outside any ``except``, which
    prints a stray ``NoneType: None``; a refused input (``tasks.common.refuse_user_errors``) stays one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())
# dapl's INFO lines (progress of index, extraction, training) belong in a flow run's log: Prefect hands the
# "dapl" logger its API handler (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves its level at the root's WARNING
if logging.getLogger("dapl").level == logging.NOTSET:
    logging.getLogger("dapl").setLevel(logging.INFO)
