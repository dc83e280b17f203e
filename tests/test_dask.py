"""Dask done right: a tiny flow on a 2-process LocalCluster; its workers report to the flow's Prefect API and see
the MLflow URI the flow resolved (before, every worker process started a temporary Prefect server of its own)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("prefect")
pytest.importorskip("prefect_dask")
pytest.importorskip("distributed")

from prefect import flow, task  # noqa: E402

from flows import runners  # noqa: E402

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
