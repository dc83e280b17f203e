"""Beyond one machine (docs/SCALE.md), on one set of shared servers (PostgreSQL, the Prefect and MLflow servers on
it, a process work pool with two workers as separate processes, `scripts/deploy.sh`), in order:

1. two `prefect deployment run`s, one per worker, with PostgreSQL restarted mid-training: the accuracies equal a
   single-process run's and MLflow's PostgreSQL database holds every run;
2. the same flow on a `dask scheduler` and two `dask worker` processes: the same accuracies, no extra Prefect API;
3. a worker SIGKILLed (with its flow run) mid-training: the run is marked Crashed, rescheduled, and finished by the
   other worker, resumed from its checkpoint, with the prompts of an uninterrupted run;
and no process is left afterwards.

Needs PostgreSQL (``bash scripts/pg.sh install``; scripts/test.sh does it as root): without it these tests fail,
they do not skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests import processes

REPO = Path(__file__).resolve().parents[1]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
PAIRS = ["real->art", "art->real"]
EPOCHS = 30


def _sh(env: dict, *args: str, timeout: float = 300) -> str:
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _params(tmp: Path, workdir: Path, pairs: list[str], tracking_uri: str | None = None) -> dict:
    p = {"root": str(tmp / "toy"), "toy": {"images_per_class": 4}, "weights": str(REPO / "dapl/assets/toy-clip.pt"),
         "epochs": 1, "pairs": pairs, "overrides": {"features.views": 1, "features.num_workers": 0},
         "workdir": str(workdir)}
    return p | ({"tracking_uri": tracking_uri} if tracking_uri else {})


def _long_params(tmp: Path, workdir: Path, tracking_uri: str | None = None) -> dict:
    """One DAPL training long enough (30 epochs of 16-image batches, ~8 s) to be killed in its middle."""
    return _params(tmp, workdir, ["real->art"], tracking_uri) | {
        "root": str(tmp / "toy12"), "toy": {"images_per_class": 12}, "epochs": EPOCHS, "methods": ["dapl"],
        "overrides": {"features.views": 1, "features.num_workers": 0, "train.batch_source": 16,
                      "train.batch_target": 16}}


def _run_single(env: dict, tmp: Path, name: str, params: dict) -> None:
    """The flow in one process here (thread runner), as a user without servers runs it."""
    (tmp / f"{name}.json").write_text(json.dumps(params))
    _sh(env, sys.executable, "-m", "flows", "run", "full-benchmark", "--params-file", str(tmp / f"{name}.json"),
        timeout=600)


def _accuracies(uri: str) -> dict[tuple[str, str, str], float]:
    """(pair, method, seed) -> final target accuracy of every nested run of the `dapl` experiment."""
    import mlflow

    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("dapl")
    runs = c.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    return {(r.data.tags["pair"], r.data.tags["method"], r.data.tags["seed"]): r.data.metrics["final.target_acc"]
            for r in runs if "pair" in r.data.tags}


def _group_tree(run_dir: Path) -> set[int]:
    """Every live process of the groups scripts/_procs.sh started (pid files in ``run_dir``), with descendants."""
    return {p.pid for f in run_dir.glob("*.pid") for p in processes.tree(int(f.read_text()))}


def _restart_postgres_mid_training(env: dict, seconds: float = 300) -> None:
    """Once MLflow's database shows a nested run RUNNING, stop PostgreSQL (fast shutdown) and start it again on the
    same port: the servers must reconnect and the flow runs complete."""
    import psycopg2

    url = _sh(env, "bash", "scripts/pg.sh", "url", "mlflow").strip()
    deadline = time.monotonic() + seconds
    while True:
        assert time.monotonic() < deadline, "no training started within the time limit"
        with contextlib.suppress(psycopg2.Error), psycopg2.connect(url) as db, db.cursor() as cur:
            cur.execute("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                        "where r.status = 'RUNNING' and t.key = 'pair'")
            if cur.fetchone()[0]:
                break
        time.sleep(0.2)
    port = url.rsplit(":", 1)[1].split("/")[0]
    pid_file = Path(env["DAPL_RUN_DIR"]) / "postgres.pid"
    before = pid_file.read_text()
    _sh(env, "bash", "scripts/pg.sh", "stop")
    assert not pid_file.exists() and not processes.alive({int(before)})
    _sh(env | {"DAPL_PG_PORT": port}, "bash", "scripts/pg.sh", "start")
    assert pid_file.read_text() != before


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Shared servers on PostgreSQL, `scripts/deploy.sh` (twice: it must be idempotent) and two workers w1, w2;
    yields (env, tmp). Afterwards every process they started must be gone."""
    assert PG_BIN, ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): run "
                    "'sudo bash scripts/pg.sh install' (scripts/test.sh does as root)")
    tmp = tmp_path_factory.mktemp("scale")
    root_pg = Path("/var/lib/dapl-pg") / f"test-{uuid.uuid4().hex[:12]}"  # as root: a folder user dapl-pg reaches
    pg_dir = root_pg if os.geteuid() == 0 else tmp / "pg"
    run_dir = tmp / "run"
    env = dict(os.environ, DAPL_RUN_DIR=str(run_dir), DAPL_PG_DIR=str(pg_dir), PREFECT_HOME=str(tmp / "ph"),
               DAPL_ARTIFACTS=str(tmp / "artifacts"), DAPL_RESULTS_DIR=str(tmp / "results"),
               PREFECT_WORKER_QUERY_SECONDS="2", PYTHONPATH=str(REPO))
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DAPL_PREFECT_PORT", "DAPL_MLFLOW_PORT", "DAPL_PG_PORT"):
        env.pop(k, None)
    try:
        _sh(env, "bash", "scripts/servers.sh", "start")
        for line in (run_dir / "servers.env").read_text().splitlines():
            k, v = line.removeprefix("export ").split("=", 1)
            env[k] = v
        _sh(env, "bash", "scripts/deploy.sh")
        again = _sh(env, "bash", "scripts/deploy.sh")
        assert "work pool dapl exists" in again and again.count("updated automation") == 2, again
        for name in ("w1", "w2"):
            _sh(env, "bash", "scripts/workers.sh", "start", name)
        yield env, tmp
    finally:
        tree = _group_tree(run_dir) if run_dir.exists() else set()
        stop = subprocess.run(["bash", "scripts/servers.sh", "stop"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        if os.geteuid() == 0:
            shutil.rmtree(root_pg, ignore_errors=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # postgres, prefect, mlflow, the worker(s) left (+ children)
    assert len(tree) >= 4 and not processes.alive(tree), processes.alive(tree)


@pytest.fixture(scope="module")
def single(cluster) -> dict:
    """Accuracies of the single-process run (both pairs, its own workdir and SQLite tracking)."""
    env, tmp = cluster
    ref = tmp / "ref"
    _run_single(env, tmp, "ref", _params(tmp, ref, PAIRS, f"sqlite:///{ref}/mlflow.db"))
    acc = _accuracies(f"sqlite:///{ref}/mlflow.db")
    assert len(acc) == 6
    return acc


@pytest.mark.slow
def test_two_workers_on_shared_servers_match_a_single_process_run(cluster, single):
    env, tmp = cluster
    run_dir = Path(env["DAPL_RUN_DIR"])
    prefect = str(REPO / ".venv/bin/prefect")
    # one deployment run per pair, submitted at once: each worker (limit 1) takes one
    runs = [subprocess.Popen([prefect, "deployment", "run", "dapl/full-benchmark", "--params",
                              json.dumps(_params(tmp, tmp / "shared", [pair])), "--watch",
                              "--watch-timeout", "600"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for pair in PAIRS]
    _restart_postgres_mid_training(env)
    outs = [r.communicate(timeout=660)[0] for r in runs]
    for out in outs:
        assert "Flow run finished successfully in 'Completed'" in out, out[-3000:]
    names = {line.split("'")[1] for out in outs for line in out.splitlines() if line.startswith("Created flow run")}
    assert len(names) == 2, outs
    ran_by = {w: {n for n in names if f"Flow run '{n}' - Finished in state Completed" in
                  (run_dir / f"worker-{w}.log").read_text()} for w in ("w1", "w2")}
    assert len(ran_by["w1"]) == len(ran_by["w2"]) == 1 and ran_by["w1"] != ran_by["w2"], ran_by

    # every accuracy equals the single-process run's; MLflow's PostgreSQL database holds every run
    assert _accuracies(env["MLFLOW_TRACKING_URI"]) == single
    import psycopg2

    with psycopg2.connect(_sh(env, "bash", "scripts/pg.sh", "url", "mlflow").strip()) as db, db.cursor() as cur:
        cur.execute("select status, count(*) from runs group by status")
        assert dict(cur.fetchall()) == {"FINISHED": 8}  # 2 parents + 6 nested runs
    db.close()


@pytest.mark.slow
def test_a_dask_cluster_gives_the_single_process_accuracies(cluster, single):
    """`dask scheduler` + two `dask worker` processes started with the shared servers' URLs (docs/SCALE.md), the
    flow pointed at them with --dask-address: the single-process accuracies, runs trained inside the Dask workers,
    no Prefect API started by the flow or a worker, every Dask process gone afterwards."""
    from flows.services import free_port

    env, tmp = cluster
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    procs = [processes.spawn(dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                             env=env)]
    procs += [processes.spawn(dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                              "--name", f"d{i}", env=env) for i in (1, 2)]
    work = tmp / "dask"
    try:
        from distributed import Client

        with Client(address, timeout=120) as c:
            c.wait_for_workers(2, timeout=120)
        (tmp / "dask.json").write_text(json.dumps(_params(tmp, work, PAIRS, f"sqlite:///{work}/mlflow.db")))
        log = _sh(env, sys.executable, "-m", "flows", "--dask-address", address, "run", "full-benchmark",
                  "--params-file", str(tmp / "dask.json"), "--out", str(tmp / "dask-out.json"), timeout=600)
        workers = {p.pid for w in procs[1:] for p in processes.tree(w.pid)}
        servers = processes.servers_below([p.pid for p in procs])
    finally:
        survivors = processes.stop_groups(procs)
    import mlflow

    assert json.loads((tmp / "dask-out.json").read_text())["cached"] == 0  # trained here, not copied
    assert _accuracies(f"sqlite:///{work}/mlflow.db") == single
    c = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    ran_in = {int(r.data.tags["dapl.pid"]) for r in c.search_runs([c.get_experiment_by_name("dapl").experiment_id])
              if "pair" in r.data.tags}
    assert ran_in and ran_in <= workers, (ran_in, workers)  # every run trained in a Dask worker process
    assert "Starting temporary server" not in log and servers == []  # the shared API only
    assert survivors == []


def _api(env: dict, path: str):
    """GET ``path`` of the shared Prefect server's REST API."""
    import urllib.request

    with urllib.request.urlopen(env["PREFECT_API_URL"].rstrip("/") + path, timeout=30) as r:
        return json.loads(r.read())


def _kill_the_worker_running(env: dict, flow_run_id: str, workdir: Path, pattern: str) -> tuple[str, int]:
    """Once the run's DAPL training has a checkpoint at epoch 2..EPOCHS-1, SIGKILL the worker that runs it and
    every process below it (the flow run is in a session of its own): a host that died. Returns (worker, epoch)."""
    import torch

    run_dir = Path(env["DAPL_RUN_DIR"])
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        for ck in workdir.glob(pattern):
            try:
                epoch = torch.load(ck, map_location="cpu", weights_only=False)["epoch"]
            except Exception:  # noqa: BLE001 - being written: look again
                continue
            if not 2 <= epoch < EPOCHS:
                continue
            for w in ("w1", "w2"):
                tree = processes.tree(int((run_dir / f"worker-{w}.pid").read_text()))
                mine = False
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        mine |= p.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id
                if mine:
                    for p in tree:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            p.kill()
                    psutil.wait_procs(tree, timeout=30)
                    assert not processes.alive({p.pid for p in tree})
                    return w, epoch
        time.sleep(0.05)
    raise AssertionError("no training reached epoch 2 within the time limit")


@pytest.mark.slow
def test_a_killed_worker_hands_its_run_to_the_other_which_resumes_it(cluster):
    """Runs last (it kills a worker). The flow run is marked Crashed after 3 missed heartbeats, put back in the
    pool, and finished by the surviving worker, resuming the training from its checkpoint on the shared
    filesystem: the final prompts equal an uninterrupted single-process run's; the dead attempt's MLflow runs are
    FAILED, none is left RUNNING."""
    import torch
    from safetensors.torch import load_file

    env, tmp = cluster
    run_dir, killed = Path(env["DAPL_RUN_DIR"]), tmp / "killed"
    out = _sh(env, str(REPO / ".venv/bin/prefect"), "deployment", "run", "dapl/full-benchmark", "--params",
              json.dumps(_long_params(tmp, killed)))
    fr = next(line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line)
    seed_dir = "runs/benchmark/*/real_art/dapl/seed1"
    dead, epoch = _kill_the_worker_running(env, fr, killed, f"{seed_dir}/checkpoint.pt")
    alive = {"w1": "w2", "w2": "w1"}[dead]

    # the uninterrupted reference, while the server notices the silence (60-90 s)
    ref = tmp / "ref-long"
    _run_single(env, tmp, "ref-long", _long_params(tmp, ref, f"sqlite:///{ref}/mlflow.db"))

    deadline = time.monotonic() + 420
    while (run := _api(env, f"/flow_runs/{fr}"))["state"]["type"] != "COMPLETED":
        assert run["state"]["type"] not in ("FAILED", "CANCELLED"), run["state"]
        assert time.monotonic() < deadline, f"not completed in time: {run['state']}"
        time.sleep(2)
    states = sorted(_api(env, f"/flow_run_states/?flow_run_id={fr}"), key=lambda s: s["timestamp"])
    names = [s["name"] for s in states]
    first = names.index("Running")  # then silence, Crashed, back to the pool, taken by the other worker
    assert names[first + 1:first + 3] == ["Crashed", "AwaitingRetry"] and names[-1] == "Completed", names
    assert run["run_count"] == 2, (run["run_count"], names)  # one attempt killed, one that finished
    assert "no heartbeat" in next(s["message"] for s in states if s["name"] == "Crashed")
    log, line = run_dir / f"worker-{alive}.log", f"Flow run '{run['name']}' - Finished in state Completed"
    deadline = time.monotonic() + 30  # the state is set before the flow run logs it
    while line not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert line in log.read_text(), log.read_text()[-3000:]

    # resumed, not restarted; the prompts of an uninterrupted run
    import polars as pl

    row = pl.read_csv(next(killed.glob("runs/benchmark/*/benchmark_runs.csv"))).row(0, named=True)
    assert row["resumed_from_epoch"] >= epoch, (row, epoch)
    got = load_file(next(killed.glob(f"{seed_dir}/prompts.safetensors")))
    want = load_file(next(ref.glob(f"{seed_dir}/prompts.safetensors")))
    assert got.keys() == want.keys()
    for k, w in want.items():  # same machine, same thread count: equal up to float round-off at most
        torch.testing.assert_close(got[k], w, rtol=1e-5, atol=1e-6 * float(w.abs().max()))

    # MLflow on PostgreSQL: the dead attempt's parent and nested runs FAILED (swept when the run started again),
    # the new attempt's FINISHED with every epoch, none RUNNING
    import mlflow

    c = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    mine = c.search_runs([c.get_experiment_by_name("dapl").experiment_id],
                         filter_string=f"tags.`prefect.flow_run_id` = '{fr}'")
    status = sorted((r.info.status, "pair" in r.data.tags) for r in mine)
    assert status == [("FAILED", False), ("FAILED", True), ("FINISHED", False), ("FINISHED", True)], status
    assert all("started again" in r.data.tags["dapl.failure"] for r in mine if r.info.status == "FAILED")
    done = next(r for r in mine if r.info.status == "FINISHED" and "pair" in r.data.tags)
    assert sorted(m.step for m in c.get_metric_history(done.info.run_id, "target_acc")) == list(range(1, EPOCHS + 1))
