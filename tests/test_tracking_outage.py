"""MLflow dies in the middle of a flow run: no training is lost, and the next flow run completes the tracking.

A real ``mlflow server`` (one worker, job execution off, its own session so its process group can be killed)
on a free 127.0.0.1 port, a tiny toy benchmark, and a SIGKILL of the server right after the first DAPL epoch
was logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

import open_clip  # noqa: E402
import torch  # noqa: E402

from tests.conftest import TINY_CONFIGS  # noqa: E402

EPOCHS = 3
OVERRIDES = {"features.views": 1, "features.num_workers": 0, "features.batch_size": 64,
             "train.batch_source": 8, "train.batch_target": 8, "prompt.m1": 2, "prompt.m2": 2, "prompt.init": None}


class MlflowServer:
    """``mlflow server`` in its own session on a sqlite store; stopped by killing its process group."""

    def __init__(self, wd: Path) -> None:
        self.wd = wd
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.wd / "mlflow-server.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.wd / 'mlflow.db'}",
             "--artifacts-destination", str(self.wd / "mlartifacts")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError((self.wd / "mlflow-server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group: uvicorn workers included
            self.proc.wait(timeout=30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def test_retry_with_back_off_then_journal(tmp_path, monkeypatch):
    """Transient failures are retried; a call that keeps failing marks the run lost once, later calls are skipped,
    and the journal on disk keeps what a replay needs."""
    from tasks import tracking

    monkeypatch.setenv(tracking.RETRY_ENV, "0.01,0.02")
    calls = []

    def flaky(n_fail):
        calls.append(1)
        if len(calls) <= n_fail:
            raise ConnectionError("refused")
        return "ok"

    assert tracking.with_retry("x", flaky, 2) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(tracking.TrackingLost, match="x: ConnectionError: refused"):
        tracking.with_retry("x", flaky, 5)
    assert len(calls) == 3  # one try + one per delay

    monkeypatch.setattr(tracking, "start_run", lambda *a, **k: "run-1")
    monkeypatch.setattr(tracking, "log_params", lambda *a, **k: None)
    rl = tracking.RunLog("http://nowhere", "0", tmp_path, "a->b dapl seed1", {"pair": "a->b"}, {"train.lr": 0.1})
    assert rl.run_id == "run-1" and not rl.lost
    calls.clear()
    assert rl.call("log epoch", flaky, 99) is None and rl.lost and len(calls) == 3
    assert rl.call("log epoch", flaky, 0) is None and len(calls) == 3  # skipped: no second wait
    rec = tracking.read_pending(tmp_path)
    assert rec["name"] == "a->b dapl seed1" and rec["run_id"] == "run-1" and "refused" in rec["lost"]
    assert rec["params"] == {"train.lr": "0.1"}
    rl.complete()
    assert tracking.read_pending(tmp_path) is not None  # lost: kept for the replay
    ok = tracking.RunLog("http://nowhere", "0", tmp_path / "b", "n", {}, {})
    ok.complete()
    assert tracking.read_pending(tmp_path / "b") is None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    wd = tmp_path_factory.mktemp("outage")
    cfg_path = wd / "tiny-vit.json"
    cfg_path.write_text(json.dumps(TINY_CONFIGS["tiny-vit"]))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    weights = wd / "tiny-vit.pt"
    torch.save(open_clip.create_model("tiny-vit").state_dict(), weights)
    server = MlflowServer(wd)
    saved = {k: os.environ.get(k) for k in ("DAPL_RESULTS_DIR", "DAPL_TRACKING_RETRY_DELAYS")}
    os.environ["DAPL_RESULTS_DIR"] = str(wd / "results")
    os.environ["DAPL_TRACKING_RETRY_DELAYS"] = "0.2,0.5"
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=180):
            yield {"wd": wd, "model": str(cfg_path), "weights": str(weights), "server": server}
    finally:
        server.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(env) -> dict:
    from flows.dapl_flow import dapl

    return dapl(kind="full-benchmark", dataset="toy", root=str(env["wd"] / "toy"),
                toy={"images_per_class": 3, "size": 32}, backbone=env["model"], weights=env["weights"],
                epochs=EPOCHS, overrides=OVERRIDES, workdir=str(env["wd"]), tracking_uri=env["server"].uri,
                pairs=["real->art"], methods=["zero_shot", "dapl"])


@pytest.mark.slow
def test_server_killed_mid_flow_loses_no_training_and_rerun_completes_tracking(env, monkeypatch):
    from mlflow import MlflowClient

    import tasks.train as train_task

    server = env["server"]
    server.start()
    real = train_task.run_one
    killed = []

    def run_one_then_kill(*args, on_epoch=None, **kw):
        def hook(rec):
            on_epoch(rec)
            if rec["epoch"] == 1 and server.alive:  # epoch 1 is in MLflow; the server dies now
                server.kill()
                killed.append(rec["epoch"])
        return real(*args, on_epoch=hook, **kw)

    monkeypatch.setattr(train_task, "run_one", run_one_then_kill)
    with pytest.raises(RuntimeError, match="MLflow tracking is missing") as e:
        _run(env)
    assert killed, "the server was never killed: no DAPL epoch ran"
    assert "without retraining" in str(e.value) and "real->art dapl seed1" in str(e.value)
    runs = sorted((env["wd"] / "runs" / "benchmark").glob("*/real_art/*/seed1"))
    assert [r.parent.name for r in runs] == ["dapl", "zero_shot"]
    for r in runs:  # every training finished and wrote its results
        assert (r / "metrics.json").is_file() and (r / "prompts.json").is_file()
    pending = [r for r in runs if (r / "tracking_pending.json").is_file()]
    assert any(r.parent.name == "dapl" for r in pending)
    stamps = {p: p.stat().st_mtime_ns for r in runs for p in r.iterdir() if p.suffix in (".safetensors", ".pt")}

    monkeypatch.setattr(train_task, "run_one", real)
    server.start()
    res = _run(env)
    assert res["runs"] == 2 and res["cached"] == 2  # nothing trained again ...
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # ... and no result file rewritten
    assert not any((r / "tracking_pending.json").exists() for r in runs)
    c = MlflowClient(server.uri)
    kids = {r.info.run_name: r for r in c.search_runs(
        [res["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{res['parent_run_id']}'")}
    assert set(kids) >= {f"real->art {r.parent.name} seed1" for r in pending}
    run = c.get_run(kids["real->art dapl seed1"].info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dapl.tracking_replayed"] == "true"
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "target_acc"))
    assert steps == list(range(1, EPOCHS + 1))
    assert "final.target_acc" in run.data.metrics and set(run.data.params) >= {"train.epochs", "prompt.m1"}
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion.png" in arts
    # the partial run of the outage is closed and points to its replacement
    partial = [r for r in c.search_runs([res["experiment_id"]], filter_string="attributes.run_name = "
                                        "'real->art dapl seed1'") if r.info.run_id != run.info.run_id]
    assert partial and all(r.info.status == "FAILED" for r in partial)
    assert c.get_run(res["parent_run_id"]).info.status == "FINISHED"
    server.kill()
