"""Dask done right: a tiny flow on a 2-process LocalCluster; its workers report to the flow's Prefect API and see
the MLflow URI the flow resolved (before, every worker process started a temporary Prefect server of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("prefect_dask")
pytest.importorskip("distributed")

from prefect import flow, task  # noqa: E402

from flows import runners  # noqa: E402
from tests import processes  # noqa: E402

pytestmark = pytest.mark.slow


@task
def where() -> dict:
    return {"pid": os.getpid(), "api": os.environ.get("PREFECT_API_URL"),
            "mlflow": os.environ.get("MLFLOW_TRACKING_URI")}


def test_dask_workers_use_the_flows_api_and_mlflow_uri(monkeypatch, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setenv(runners.RUNNER_ENV, "dask")
    monkeypatch.setenv(runners.WORKERS_ENV, "2")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    @flow(task_runner=runners.task_runner())
    def tiny() -> tuple[str | None, list[dict]]:
        with runners.worker_env(uri):
            futures = [where.submit() for _ in range(4)]
        return runners.flow_api_url(), [f.result() for f in futures]

    try:
        with prefect_test_harness(server_startup_timeout=180):
            api, seen = tiny()
    except OSError as e:  # no loopback networking in this sandbox
        pytest.skip(f"a LocalCluster cannot start here: {e}")
    assert api and all(s["pid"] != os.getpid() for s in seen)  # ran in worker processes
    assert {s["api"] for s in seen} == {api}  # ... that report to the flow's API
    assert {s["mlflow"] for s in seen} == {uri}
    assert "PREFECT_API_URL" not in os.environ  # the flow process's environment is restored


@task
def slow_where(i: int) -> dict:
    import time

    time.sleep(0.5)  # long enough that one worker cannot take all 8 before the other asks (not asserted)
    return where.fn() | {"i": i}


def test_a_real_scheduler_and_two_worker_processes(monkeypatch, tmp_path):
    """`dask scheduler` and two `dask worker` processes (127.0.0.1, free port, no dashboard) started with the
    Prefect API and MLflow URI (docs/SCALE.md), the flow pointed at them with DAPL_DASK_ADDRESS: tasks run in both
    workers, which report to the flow's API and start no Prefect server of their own; every process is gone
    afterwards."""
    from distributed import Client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.services import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dask = str(Path(sys.executable).with_name("dask"))
    monkeypatch.setenv(runners.ADDRESS_ENV, address)
    monkeypatch.setenv(runners.RUNNER_ENV, "dask")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    procs: list[subprocess.Popen] = []

    @flow(task_runner=runners.task_runner())
    def tiny() -> tuple[str | None, list[dict]]:
        with runners.worker_env(uri):
            futures = [slow_where.submit(i) for i in range(8)]
        return runners.flow_api_url(), [f.result() for f in futures]

    try:
        with prefect_test_harness(server_startup_timeout=180):
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                       PREFECT_API_URL=PREFECT_API_URL.value(), MLFLOW_TRACKING_URI=uri)
            procs.append(processes.spawn(dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                         "--no-dashboard", env=env))
            procs += [processes.spawn(dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                      "--no-dashboard", "--name", f"w{i}", env=env) for i in (1, 2)]
            with Client(address, timeout=120) as c:
                c.wait_for_workers(2, timeout=120)
            api, seen = tiny()
            servers = processes.servers_below([p.pid for p in procs])
    finally:
        survivors = processes.stop_groups(procs)
    assert sorted(s["i"] for s in seen) == list(range(8))
    assert len({s["pid"] for s in seen}) == 2 and os.getpid() not in {s["pid"] for s in seen}
    assert api and {s["api"].rstrip("/") for s in seen} == {api.rstrip("/")} and {s["mlflow"] for s in seen} == {uri}
    assert servers == []  # no worker started a Prefect API of its own
    assert survivors == []  # every group left within 30 s of SIGTERM (the nannies' worker processes included)
