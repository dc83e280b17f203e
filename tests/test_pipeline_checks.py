"""Assertions on what a scripted pipeline run left behind: ``scripts/e2e.sh`` and ``scripts/kill_rerun.sh`` start
and stop the processes, then run these tests on their scratch folder (``DAPL_CHECK_DIR``).

Without ``DAPL_CHECK_DIR`` (a plain ``pytest`` run) they are skipped: they need the scripts' processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def _dir(script: str) -> Path:
    d = os.environ.get("DAPL_CHECK_DIR")
    if not d or os.environ.get("DAPL_CHECK") != script:
        pytest.skip(f"run by scripts/{script}.sh on its scratch folder (DAPL_CHECK={script}, DAPL_CHECK_DIR)")
    return Path(d)


def test_e2e_deployment_run_logged_one_parent_and_its_runs():
    """e2e.sh: `prefect deployment run dapl/full-benchmark` (2 pairs x 3 methods) finished in MLflow."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    w = _dir("e2e")
    c = MlflowClient(f"sqlite:///{w / 'mlflow.db'}")
    exp = c.get_experiment_by_name("dapl")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = list(c.search_runs([exp.experiment_id], max_results=100))
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status)
                                                                        for r in parents]
    assert len(kids) == 6 and all(r.info.status == "FINISHED" for r in kids), [(r.info.run_name, r.info.status)
                                                                               for r in kids]
    assert {r.data.params["sweep.method"] for r in kids} == {"zero_shot", "source_only", "dapl"}
    assert "recipe" in parents[0].data.tags
    tables = list(w.glob("runs/benchmark/*/benchmark_table.md"))
    assert len(tables) == 1 and "dapl" in tables[0].read_text()


def test_kill_rerun_resumed_from_cache_and_checkpoint():
    """kill_rerun.sh: the rerun took finished work from cache, resumed the killed training from its checkpoint
    (its MLflow run holds every epoch), and the killed process's MLflow runs are FAILED, none RUNNING."""
    pytest.importorskip("mlflow")
    import polars as pl
    from mlflow import MlflowClient

    w = _dir("kill_rerun")
    pair_dir, killed_epoch = (w / "killed.txt").read_text().split()
    killed_epoch, epochs = int(killed_epoch), int(os.environ["DAPL_CHECK_EPOCHS"])
    res = json.loads((w / "second.json").read_text())
    pair = pair_dir.replace("_", "->")
    assert res["cached"] >= 3, f"expected the zero-shot runs and the finished DAPL run from cache: {res['cached']}"
    rows = pl.read_csv(Path(res["files"]["runs_csv"]))
    row = rows.filter((pl.col("pair") == pair) & (pl.col("method") == "dapl")).row(0, named=True)
    assert row["resumed_from_epoch"] >= killed_epoch, row
    c = MlflowClient(res["tracking_uri"])
    runs = list(c.search_runs([res["experiment_id"]], max_results=200))
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 2 and all("killed" in r.data.tags.get("dapl.failure", "") for r in failed), \
        [(r.info.run_name, r.info.status) for r in failed]
    assert res["orphans_marked_failed"] and set(res["orphans_marked_failed"]) == {r.info.run_id for r in failed}
    steps = sorted(m.step for m in c.get_metric_history(row["run_id"], "target_acc"))
    assert steps == list(range(1, epochs + 1)), steps
