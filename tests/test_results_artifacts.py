"""The flow run's Prefect artifacts without a flow: keys, rows, MLflow links, and that publishing never raises."""

from __future__ import annotations

import pytest

pytest.importorskip("prefect")

from tasks import artifacts, mlflow_links  # noqa: E402

TABLE = [{"method": "zero_shot", "real->art": 57.21, "avg": 57.21},
         {"method": "dapl", "real->art": 65.26, "avg": 65.26}]
ROWS = [{"pair": "real->art", "method": "zero_shot", "seed": 1, "run_id": "aaa"},
        {"pair": "real->art", "method": "dapl", "seed": 1, "run_id": "bbb"}]
TRACK = {"uri": "http://127.0.0.1:5000/", "experiment_id": "7", "parent_run_id": "ppp"}


def test_keys_are_prefect_keys():
    assert artifacts.artifact_key("full-benchmark") == "dapl-full-benchmark-results"
    assert artifacts.artifact_key("Ablations_2", "report") == "dapl-ablations-2-report"


def test_table_rows_one_per_method_rounded():
    assert artifacts.table_rows(TABLE) == [{"method": "zero_shot", "real->art": 57.2, "avg": 57.2},
                                           {"method": "dapl", "real->art": 65.3, "avg": 65.3}]


def test_report_links_runs_of_a_server():
    md = artifacts.results_markdown("ablations", "recipe (toy): train.lr=0.0015", "| method |", TRACK, ROWS,
                                    {"table_md": "/r/ablations_table.md"}, ["/r/plots/accuracy_vs_tau.png"])
    assert md.index("recipe (toy): train.lr=0.0015") < md.index("| method |")
    assert "[the experiment's runs](http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning)" in md
    assert "[this flow run](http://127.0.0.1:5000/#/experiments/7/runs/ppp?workflowType=machine_learning)" in md
    assert "[real->art dapl seed1](http://127.0.0.1:5000/#/experiments/7/runs/bbb?workflowType=machine_learning)" in md
    assert "`/r/plots/accuracy_vs_tau.png`" in md and "`/r/ablations_table.md`" in md


def test_report_of_a_local_store_names_the_command_and_ids():
    track = {**TRACK, "uri": "sqlite:////w/mlflow.db"}
    md = artifacts.results_markdown("full-benchmark", "recipe", "table", track, ROWS, {}, [])
    assert "MLFLOW_TRACKING_URI=sqlite:////w/mlflow.db bash scripts/mlflow_ui.sh" in md
    assert "then http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in md
    assert "real->art zero_shot seed1: `aaa`" in md and "this flow run: `ppp`" in md and "](http" not in md


def test_ui_base_only_for_servers():
    assert mlflow_links.ui_base("https://mlflow.example/") == "https://mlflow.example"
    assert mlflow_links.ui_base("sqlite:///mlflow.db") is None and mlflow_links.ui_base("file:///m") is None


def test_a_refused_artifact_is_one_warning_not_an_error(monkeypatch, caplog):
    import prefect.artifacts

    def refuse(*a, **k):
        raise RuntimeError("HTTP 422: key must only contain lowercase letters, numbers, and dashes")

    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", refuse)
    with caplog.at_level("WARNING", logger="dapl.artifacts"):
        ok = artifacts.publish("full-benchmark", "recipe", {"markdown": "md", "table": TABLE, "files": {"t": "/r/x.md"},
                                                            "plots": []}, TRACK, ROWS)
    assert ok is False
    assert [r.getMessage() for r in caplog.records] == [
        "Prefect artifacts not published (RuntimeError: HTTP 422: key must only contain lowercase letters, "
        "numbers, and dashes); the results are in /r"]


def test_every_address_opens_the_training_runs():
    assert mlflow_links.runs_address("http://10.0.0.5:5000", "4") == \
        "http://10.0.0.5:5000/#/experiments/4/runs?workflowType=machine_learning"
    assert mlflow_links.runs_address("sqlite:///m.db", "4") == \
        "http://127.0.0.1:5000/#/experiments/4/runs?workflowType=machine_learning (after bash scripts/mlflow_ui.sh)"
    assert mlflow_links.where("http://h:1/", "4", "r") == "http://h:1/#/experiments/4/runs/r?workflowType=machine_learning"
    assert mlflow_links.where("sqlite:///m.db", "4", "r") == "r in sqlite:///m.db"
