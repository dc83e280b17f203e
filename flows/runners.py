"""Which task runner fans the runs out: threads (default) or Dask, chosen by environment variables.

The choice is read when the flow module is imported, because a served deployment runs each flow run in a fresh
process that imports the flow from its entrypoint: ``DAPL_TASK_RUNNER=dask`` set for ``python -m flows serve``
(or ``run``) reaches every flow run it starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.common import PROJECT_ROOT

RUNNER_ENV, WORKERS_ENV, ADDRESS_ENV = "DAPL_TASK_RUNNER", "DAPL_WORKERS", "DAPL_DASK_ADDRESS"


def configure(runner: str | None = None, workers: int | None = None, address: str | None = None) -> None:
    """Record a runner choice in the environment (inherited by served flow runs and Dask workers)."""
    if runner:
        os.environ[RUNNER_ENV] = runner
    if workers:
        os.environ[WORKERS_ENV] = str(workers)
    if address:
        os.environ[ADDRESS_ENV] = address
        os.environ[RUNNER_ENV] = "dask"
    path = os.environ.get("PYTHONPATH", "")
    if str(PROJECT_ROOT) not in path.split(os.pathsep):  # a checkout whose tasks/flows are not installed
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p)


def task_runner():
    """``ThreadPoolTaskRunner(DAPL_WORKERS)``, or a ``DaskTaskRunner`` on ``DAPL_DASK_ADDRESS`` (a running
    scheduler) or on a LocalCluster of ``DAPL_WORKERS`` single-threaded worker processes bound to 127.0.0.1."""
    kind = os.environ.get(RUNNER_ENV, "thread").lower()
    workers = int(os.environ.get(WORKERS_ENV, "2"))
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise ValueError(f"{RUNNER_ENV}={kind!r}: choose 'thread' or 'dask'")
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(ADDRESS_ENV)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


def flow_api_url() -> str | None:
    """The Prefect API this flow run talks to (a served one, or the ephemeral server this process started)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = getattr(ctx, "client", None) if ctx else None
    url = getattr(client, "api_url", None)
    return str(url) if url else None


@contextlib.contextmanager
def worker_env(tracking_uri: str | None = None) -> Iterator[None]:
    """Environment that worker processes started inside this block inherit: the flow's Prefect API (so a Dask
    worker reports to it instead of starting its own temporary server) and the MLflow URI the flow resolved.

    ``DaskTaskRunner`` starts its LocalCluster at the first submission, so the flow wraps its first submissions
    in this block; the flow process's own environment is restored afterwards. Workers of a remote scheduler
    (``--dask-address``) cannot reach an ephemeral API on 127.0.0.1: serve one (scripts/serve.sh) and set
    ``PREFECT_API_URL`` on those workers.
    """
    api = flow_api_url() if os.environ.get(RUNNER_ENV, "thread").lower() == "dask" else None
    values = {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": tracking_uri}
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v and not os.environ.get(k):
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
