"""Beyond one machine (docs/SCALE.md): PostgreSQL, the Prefect and MLflow servers on it, a process work pool with two
workers (separate processes), `prefect deploy` and `prefect deployment run`; the accuracies equal a single-process
run's even though PostgreSQL is restarted mid-training, MLflow's PostgreSQL database holds every run, and no
process is left afterwards.

Needs PostgreSQL (``bash scripts/pg.sh install``; .ci/run does it): without it this test fails, it does not skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
PAIRS = ["real->art", "art->real"]


def _sh(env: dict, *args: str, timeout: float = 300) -> str:
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _params(tmp: Path, workdir: Path, pairs: list[str], tracking_uri: str | None = None) -> dict:
    p = {"root": str(tmp / "toy"), "toy": {"images_per_class": 4}, "weights": str(REPO / "dapl/assets/toy-clip.pt"),
         "epochs": 1, "pairs": pairs, "overrides": {"features.views": 1, "features.num_workers": 0},
         "workdir": str(workdir)}
    return p | ({"tracking_uri": tracking_uri} if tracking_uri else {})


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
    pids: set[int] = set()
    for f in run_dir.glob("*.pid"):
        pid = int(f.read_text())
        pids.add(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    return pids


def _alive(pids: set[int]) -> list[str]:
    left = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def _restart_postgres_mid_training(env: dict, seconds: float = 300) -> None:
    """Once MLflow's database shows a nested run RUNNING, stop PostgreSQL (fast shutdown) and start it again on the
    same port: the servers must reconnect and the flow runs complete."""
    import time

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
    assert not pid_file.exists() and not _alive({int(before)})
    _sh(env | {"DAPL_PG_PORT": port}, "bash", "scripts/pg.sh", "start")
    assert pid_file.read_text() != before


@pytest.mark.slow
def test_two_workers_on_shared_servers_match_a_single_process_run(tmp_path):
    assert PG_BIN, ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): run "
                    "'bash scripts/pg.sh install' as root (.ci/run does)")
    root_pg = Path("/var/lib/dapl-pg") / f"test-{uuid.uuid4().hex[:12]}"  # as root: a folder user dapl-pg reaches
    pg_dir = root_pg if os.geteuid() == 0 else tmp_path / "pg"
    run_dir = tmp_path / "run"
    env = dict(os.environ, DAPL_RUN_DIR=str(run_dir), DAPL_PG_DIR=str(pg_dir), PREFECT_HOME=str(tmp_path / "ph"),
               DAPL_ARTIFACTS=str(tmp_path / "artifacts"), DAPL_RESULTS_DIR=str(tmp_path / "results"),
               PREFECT_WORKER_QUERY_SECONDS="2", PYTHONPATH=str(REPO))
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DAPL_PREFECT_PORT", "DAPL_MLFLOW_PORT", "DAPL_PG_PORT"):
        env.pop(k, None)
    tree: set[int] = set()
    try:
        _sh(env, "bash", "scripts/servers.sh", "start")
        for line in (run_dir / "servers.env").read_text().splitlines():
            k, v = line.removeprefix("export ").split("=", 1)
            env[k] = v
        prefect = str(REPO / ".venv/bin/prefect")
        _sh(env, prefect, "work-pool", "create", "dapl", "--type", "process")
        _sh(env, prefect, "--no-prompt", "deploy", "--all")
        for name in ("w1", "w2"):
            _sh(env, "bash", "scripts/workers.sh", "start", name)

        # the single-process reference: both pairs in one flow run here, its own workdir and SQLite tracking
        ref = tmp_path / "ref"
        (tmp_path / "ref.json").write_text(json.dumps(_params(tmp_path, ref, PAIRS, f"sqlite:///{ref}/mlflow.db")))
        _sh(env, sys.executable, "-m", "flows", "run", "full-benchmark", "--params-file", str(tmp_path / "ref.json"),
            timeout=600)

        # one deployment run per pair, submitted at once: each worker (limit 1) takes one
        runs = [subprocess.Popen([prefect, "deployment", "run", "dapl/full-benchmark", "--params",
                                  json.dumps(_params(tmp_path, tmp_path / "shared", [pair])), "--watch",
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
        shared, single = _accuracies(env["MLFLOW_TRACKING_URI"]), _accuracies(f"sqlite:///{ref}/mlflow.db")
        assert len(single) == 6 and shared == single
        import psycopg2

        with psycopg2.connect(_sh(env, "bash", "scripts/pg.sh", "url", "mlflow").strip()) as db, db.cursor() as cur:
            cur.execute("select status, count(*) from runs group by status")
            assert dict(cur.fetchall()) == {"FINISHED": 8}  # 2 parents + 6 nested runs
        db.close()
    finally:
        tree = _group_tree(run_dir) if run_dir.exists() else set()
        stop = subprocess.run(["bash", "scripts/servers.sh", "stop"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        if os.geteuid() == 0:
            shutil.rmtree(root_pg, ignore_errors=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert len(tree) >= 5 and not _alive(tree), _alive(tree)  # postgres, prefect, mlflow, 2 workers (+ children)
