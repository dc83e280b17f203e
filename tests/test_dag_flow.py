"""The Prefect flow end to end on a tiny toy world and a tiny CLIP, asserting on the MLflow runs it created.

One Prefect test server for the module (``prefect_test_harness``); the benchmark and the ablations share the
world, the model and the feature cache, and a second benchmark call must come entirely from cache.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

import open_clip  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.conftest import TINY_CONFIGS  # noqa: E402

EPOCHS = 2
OVERRIDES = {"features.views": 1, "features.num_workers": 0, "features.batch_size": 64,
             "train.batch_source": 8, "train.batch_target": 8, "prompt.m1": 2, "prompt.m2": 2,
             "prompt.init": None}  # M1 = 2: no init words, whatever the recipe sets


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A workdir with a tiny model (config JSON + seeded weights file) and isolated Prefect/MLflow state."""
    wd = tmp_path_factory.mktemp("dag")
    cfg_path = wd / "tiny-vit.json"
    cfg_path.write_text(json.dumps(TINY_CONFIGS["tiny-vit"]))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit")
    weights = wd / "tiny-vit.pt"
    torch.save(model.state_dict(), weights)
    old = os.environ.get("DAPL_RESULTS_DIR")
    os.environ["DAPL_RESULTS_DIR"] = str(wd / "results")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield {"wd": wd, "model": str(cfg_path), "weights": str(weights), "uri": f"sqlite:///{wd / 'mlflow.db'}"}
    if old is None:
        os.environ.pop("DAPL_RESULTS_DIR", None)
    else:
        os.environ["DAPL_RESULTS_DIR"] = old


def _run(env, kind: str, **kw) -> dict:
    from flows.dapl_flow import dapl

    params = {"dataset": "toy", "root": str(env["wd"] / "toy"), "toy": {"images_per_class": 3, "size": 32},
              "backbone": env["model"], "weights": env["weights"], "epochs": EPOCHS, "overrides": OVERRIDES,
              "workdir": str(env["wd"]), "tracking_uri": env["uri"]}
    return dapl(kind=kind, **(params | kw))


def _children(client, result: dict) -> list:
    runs = client.search_runs([result["experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    return list(runs)


@pytest.fixture(scope="module")
def benchmark(env):
    return _run(env, "full-benchmark", pairs=["real->art"])


def test_benchmark_runs_in_mlflow(env, benchmark):
    from mlflow import MlflowClient

    from dapl.config import DaplConfig

    c = MlflowClient(env["uri"])
    parent = c.get_run(benchmark["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dataset"] == "toy" and parent.data.tags["data_version"].startswith("manifest:")
    assert parent.data.tags["git_commit"]
    kids = {r.info.run_name: r for r in _children(c, benchmark)}
    assert set(kids) == {"real->art zero_shot seed1", "real->art source_only seed1", "real->art dapl seed1"}
    run = kids["real->art dapl seed1"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["pair"] == "real->art" and run.data.tags["method"] == "dapl"
    # params: the run's whole configuration
    meta = json.loads(Path(c.download_artifacts(run.info.run_id, "prompts/prompts.json")).read_text())
    cfg = DaplConfig.model_validate(meta["config"])
    sweep = {"sweep.method": "dapl", "sweep.axis": "method", "sweep.label": "dapl", "sweep.setting": "unified_domain",
             "sweep.m1": "2", "sweep.m2": "2", "sweep.tau": "0.5", "sweep.pair": "real->art", "sweep.seed": "1",
             "sweep.refresh": "none", "sweep.templates": "manual"}
    assert set(run.data.params) == (set(cfg.flat()) - {"output_dir"}) | set(sweep)  # a path: a tag, not a param
    assert run.data.tags["output_dir"] == cfg.output_dir.as_posix()
    logged = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config.yaml")).read_text())
    assert DaplConfig.model_validate(logged) == cfg  # the whole config, output_dir included
    for kid in kids.values():  # MLflow's compare view plots the first metric a run logged: target accuracy
        assert next(iter(kid.data.metrics)) == "target_acc", kid.info.run_name
    assert {k: run.data.params[k] for k in sweep} == sweep  # the axes, first-class for MLflow's charts
    assert run.data.params["train.epochs"] == str(EPOCHS) and run.data.params["data.target"] == "['art']"
    # metrics per epoch
    for key in ("loss_source", "loss_target", "pl_coverage", "target_acc", "target_mean_per_class"):
        hist = c.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, EPOCHS + 1)), key
    assert "final.target_acc" in run.data.metrics
    # artifacts present and loadable
    prompts = load_file(c.download_artifacts(run.info.run_id, "prompts/prompts.safetensors"))
    assert prompts and all(t.ndim >= 2 for t in prompts.values())
    assert Path(c.download_artifacts(run.info.run_id, "prompts/nearest_tokens.txt")).read_text().strip()
    Image.open(c.download_artifacts(run.info.run_id, "evaluation/confusion.png")).verify()
    Image.open(c.download_artifacts(run.info.run_id, "evaluation/per_class.png")).verify()
    assert pl.read_csv(c.download_artifacts(run.info.run_id, "evaluation/per_class.csv")).height == 12
    # the parent holds the results table and the plots
    table = Path(c.download_artifacts(parent.info.run_id, "results/benchmark_table.md")).read_text()
    assert "dapl" in table and "real->art" in table
    Image.open(c.download_artifacts(parent.info.run_id, "plots/benchmark.png")).verify()
    assert pl.read_csv(c.download_artifacts(parent.info.run_id, "results/benchmark_table.csv")).height == 3
    # the flow warns about exactly the runs MLflow tags as diverged (the CLI prints the same list)
    tagged = sorted(n.replace(" seed", " seed ") for n, r in kids.items() if r.data.tags.get("dapl.diverged"))
    assert sorted(benchmark["diverged"]) == tagged


def test_second_call_comes_from_cache(env, benchmark):
    again = _run(env, "full-benchmark", pairs=["real->art"])
    assert again["runs"] == 3 and again["cached"] == 3
    assert again["table"] == benchmark["table"]


def test_deleted_run_folder_is_made_again(env, benchmark):
    import shutil

    out = Path(benchmark["runs_dir"]) / "real_art" / "dapl" / "seed1"
    shutil.rmtree(out)
    again = _run(env, "full-benchmark", pairs=["real->art"])
    assert again["cached"] == 2 and (out / "metrics.json").is_file() and (out / "prompts.safetensors").is_file()
    assert again["table"] == benchmark["table"]


def test_ablations_parent_plots(env, benchmark):
    """Eight configurations under nine labels (pseudo:refresh the eighth): τ 0.5 is the unified+domain setting (one
    result, two MLflow runs), which is the benchmark's DAPL run (copied from the run store, not trained again)."""
    from mlflow import MlflowClient

    res = _run(env, "ablations", m1m2=["2x4"], taus=[0.3, 0.5], pseudo=["refresh"])
    c = MlflowClient(env["uri"])
    kids = {r.info.run_name: r for r in _children(c, res)}
    assert len(kids) == 9 and "real->art setting:class_specific_domain seed1" in kids
    refresh = kids["real->art pseudo:refresh seed1"]
    assert (refresh.data.params["sweep.refresh"], refresh.data.params["sweep.templates"]) == ("linear", "manual")
    weights = sorted(c.get_metric_history(refresh.info.run_id, "pl_weight"), key=lambda m: m.step)
    assert [m.value for m in weights] == pytest.approx([e / EPOCHS for e in range(EPOCHS)], abs=1e-9)
    arts = {a.path for a in c.list_artifacts(res["parent_run_id"], "plots")}
    assert arts == {"plots/accuracy_vs_tau.png", "plots/m1m2_heatmap.png", "plots/prompt_settings.png"}
    trained = Path(benchmark["runs_dir"]) / "real_art" / "dapl" / "seed1"
    setting, tau = kids["real->art setting:unified_domain seed1"], kids["real->art tau:0.5 seed1"]
    assert setting.data.tags["reused_from"] == trained.as_posix()
    assert tau.data.tags["reused_from"] == str(Path(res["runs_dir"]) / "real_art" / "setting_unified_domain" / "seed1")
    assert tau.data.tags["reused_run_id"] == setting.info.run_id and tau.data.tags["method"] == "tau:0.5"
    assert tau.data.params["sweep.label"] == "tau:0.5" and tau.data.params["sweep.axis"] == "tau"
    for run in (setting, tau):
        assert run.info.status == "FINISHED" and "final.target_acc" in run.data.metrics
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "target_acc"))
        assert steps == list(range(1, EPOCHS + 1))
    acc = c.get_run(_children_named(c, benchmark)["real->art dapl seed1"]).data.metrics["final.target_acc"]
    assert abs(setting.data.metrics["final.target_acc"] - acc) < 1e-9
    rows = pl.read_csv(Path(res["files"]["runs_csv"]))
    shared = rows.filter(pl.col("method").is_in(["setting:unified_domain", "tau:0.5"]))
    assert shared.height == 2 and shared["output_dir"].n_unique() == 1 and shared["accuracy"].n_unique() == 1
    assert rows.height == 9 and "tau:0.5" in res["table"] and "setting:unified_domain" in res["table"]


def test_adapt_deployment_on_unlabelled_folders(env, benchmark):
    """The adapt kind (deployment dapl/adapt): your class folders -> a flat folder, the same runs as `dapl adapt`,
    the label-free report with the labelled sample's accuracy; a target with class folders is one clear failure."""
    import shutil

    from prefect.states import State

    toy, flat = env["wd"] / "toy", env["wd"] / "flat_art"
    flat.mkdir(exist_ok=True)
    truth = {}
    for f in sorted((toy / "art").rglob("*.png")):
        shutil.copyfile(f, flat / f"{f.parent.name}-{f.name}")
        truth[f"{f.parent.name}-{f.name}"] = f.parent.name
    sample = env["wd"] / "sample.csv"
    sample.write_text("path,label\n" + "".join(f"{n},{c}\n" for n, c in list(truth.items())[::3]))
    res = _run(env, "adapt", dataset=None, root=None, toy=None, source_dir=str(toy / "real"), target_dir=str(flat),
               labelled_sample=str(sample))
    report = json.loads((Path(res["runs_dir"]) / "adapt_report.json").read_text())
    assert [m["method"] for m in report["methods"]] == ["zero_shot", "source_only", "dapl"]
    assert all(m["labelled_sample"]["n"] == len(list(truth)[::3]) for m in report["methods"])
    assert "labelled-sample accuracy" in res["table"] and res["runs"] == 3
    bad = _run(env, "adapt", dataset=None, root=None, toy=None, source_dir=str(toy / "real"),
               target_dir=str(toy / "art"), return_state=True)
    assert isinstance(bad, State) and bad.is_failed() and "flat folder" in bad.message


def _children_named(client, result: dict) -> dict[str, str]:
    return {r.info.run_name: r.info.run_id for r in _children(client, result)}


def test_unreachable_mlflow_fails_before_training(env):
    t0 = time.perf_counter()
    state = _run(env, "full-benchmark", pairs=["art->real"], tracking_uri="http://127.0.0.1:9", return_state=True)
    assert time.perf_counter() - t0 < 30
    assert state.is_failed() and "not reachable" in state.message
    assert not any((env["wd"] / "runs" / "benchmark").glob("*/art_real"))
    logs = _failed_run_logs(state)
    assert any("nothing was trained" in m and "not reachable" in m for m in logs), logs
    assert not any("Traceback" in m for m in logs), logs


def test_a_parent_run_refused_for_seconds_is_retried(env, benchmark, monkeypatch):
    """MLflow's backend restarting (HTTP 503 for a few seconds) as the flow starts its parent run costs nothing:
    the call is retried with the trainings' back-off (the rest of this flow run is cached)."""
    from tasks import tracking

    calls, real = [], tracking.start_run

    def flaky(uri, exp_id, name, tags, parent_run_id=None):
        calls.append(parent_run_id)
        if parent_run_id is None and calls.count(None) <= 2:
            raise ConnectionError("503 Service Unavailable")
        return real(uri, exp_id, name, tags, parent_run_id)

    monkeypatch.setattr(tracking, "start_run", flaky)
    monkeypatch.setenv(tracking.RETRY_ENV, "0.01,0.01,0.01")
    res = _run(env, "full-benchmark", pairs=["real->art"])
    assert calls.count(None) == 3
    assert res["table"] == benchmark["table"] and res["parent_run_id"] != benchmark["parent_run_id"]


def _failed_run_logs(state) -> list[str]:
    """The messages a flow run left in its Prefect log (what a user reads in the UI)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return [log.message for log in logs]


def test_dataset_error_fails_the_flow_with_one_line(env):
    """A registry dataset not on disk: the run fails with the fetch's message in state and log, no traceback."""
    state = _run(env, "full-benchmark", dataset="office_home", root=str(env["wd"] / "no_office_home"),
                 backbone=None, weights=None, overrides=None, return_state=True)
    assert state.is_failed()
    assert "OfficeHomeDataset_10072016.zip" in state.message
    logs = _failed_run_logs(state)
    assert any(state.message.splitlines()[0] in m for m in logs), logs
    assert not any("Traceback" in m or "NoneType: None" in m for m in logs), logs


def test_config_error_fails_the_flow_with_one_line(env):
    state = _run(env, "full-benchmark", pairs=["real->art"], overrides={**OVERRIDES, "train.lrr": 0.1},
                 return_state=True)
    assert state.is_failed() and "train.lrr" in state.message
    logs = _failed_run_logs(state)
    assert any("train.lrr" in m for m in logs), logs
    assert not any("Traceback" in m for m in logs), logs


def test_flow_run_publishes_results_artifacts(env, benchmark):
    """The flow run's Artifacts tab: the results table (one row per method, a column per pair) and a report with
    the recipe, the markdown table and every MLflow run."""
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    c = MlflowClient(env["uri"])
    flow_run_id = c.get_run(benchmark["parent_run_id"]).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key = {a.key: a for a in arts}
    assert set(by_key) == {"dapl-benchmark-results", "dapl-benchmark-report"}
    assert all(a.task_run_id is None for a in arts)  # the flow run's own (its tab lists task runs' apart)
    table = by_key["dapl-benchmark-results"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["method"] for r in rows] == ["zero_shot", "source_only", "dapl"]
    assert all(set(r) == {"method", "real->art", "avg"} for r in rows)
    runs = pl.read_csv(benchmark["files"]["runs_csv"])
    dapl_acc = runs.filter(pl.col("method") == "dapl")["accuracy"][0]
    assert rows[2]["real->art"] == pytest.approx(round(dapl_acc, 1))
    report = by_key["dapl-benchmark-report"]
    assert report.type == "markdown"
    assert "recipe (toy): " in report.data and benchmark["table"] in report.data
    for kid in _children(c, benchmark):  # a local store: the run ids and how to open the UI
        assert f"{kid.info.run_name}: `{kid.info.run_id}`" in report.data
    assert f"`{benchmark['parent_run_id']}`" in report.data and "scripts/mlflow_ui.sh" in report.data
    assert all(f"`{p}`" in report.data for p in benchmark["plots"])
