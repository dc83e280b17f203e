"""MLflow at the orchestration layer: URI resolution and a fail-fast reachability check, runs with the tags
every run carries, batched metrics, and the sweep that marks runs of killed processes FAILED.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (never the fluent API's thread-local
"active run"), so concurrent tasks in threads or Dask worker processes cannot log into each other's runs.

Tracking never costs a training: once the flow has started, every MLflow call of a run goes through
:class:`RunLog`, which retries with back-off (``DAPL_TRACKING_RETRY_DELAYS``, seconds, default ``1,2,4,8,16``)
and, if the backend is still gone, stops logging that run and leaves ``tracking_pending.json`` in its output
folder. The flow then logs such runs again from the files on disk (:func:`replay_run`) and, if that fails too,
ends with a message listing them; the next flow run logs them without retraining. MLflow's own HTTP retries
default to 0 here (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; its default waits minutes per call on a dead server).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tasks.common import PROJECT_ROOT

PENDING_FILE = "tracking_pending.json"
RETRY_ENV = "DAPL_TRACKING_RETRY_DELAYS"
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the back-off below is ours
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# MLflow prints two links per run it ends on a server, to the experiment's GenAI view; the flow prints its own
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking backend cannot be used: raised before any training starts."""


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db`` (relative sqlite paths are
    made absolute so that served flow runs and Dask workers all write to the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        uri = f"sqlite:///{Path(rel).absolute()}"
    return uri


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` with a fix if ``uri`` cannot be used (seconds, no retries)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered HTTP {r.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is not reachable ({e}). Nothing was trained.\n"
                f"  Start it (bash scripts/mlflow_ui.sh), fix MLFLOW_TRACKING_URI, or unset it to log to "
                f"{default_tracking_uri()}") from e
    elif scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingUnavailable(f"MLflow database folder {db.parent} cannot be created: {e}") from e
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"MLflow database {db} is not writable")


@functools.lru_cache(maxsize=8)
def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str) -> str | None:
    """For a sqlite store: ``mlruns/`` beside the database file (else the server decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").absolute().as_uri()
    return None


# What the experiment holds (training runs, not GenAI traces). MLflow 3.17's UI does not pick an experiment's view
# from this tag but from the workflow type in the link or the browser (tasks/mlflow_links.py); the tag stays true.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id (created if needed), tagged as a training-runs experiment."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
        except Exception:  # noqa: BLE001 - another process created it first
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:  # an experiment made before the tag existed
            c.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


# -- tags ------------------------------------------------------------------------------------------------
def process_tags() -> dict[str, str]:
    """Who runs this: the sweep uses host + pid to tell a live run from one whose process was killed."""
    return {"dapl.host": socket.gethostname(), "dapl.pid": str(os.getpid())}


@functools.cache
def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower()}


def data_tags(root: str | Path, manifest_sha: str) -> dict[str, str]:
    """``data_version``: the ``data.dvc`` hash when the dataset lives in the DVC-tracked ``data/`` folder, else
    the manifest's content hash (which covers every file's sha256)."""
    tags = {"data.manifest_sha256": manifest_sha}
    version = f"manifest:{manifest_sha[:16]}"
    dvc_file = PROJECT_ROOT / "data.dvc"
    data_dir = (PROJECT_ROOT / "data").resolve()
    if dvc_file.is_file() and Path(root).resolve().is_relative_to(data_dir):
        try:
            md5 = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [{}])[0].get("md5", "")
        except (yaml.YAMLError, IndexError, AttributeError):
            md5 = ""
        if md5:
            tags["data.dvc_md5"] = md5
            version = f"dvc:{md5}"
    tags["data_version"] = version
    return tags


# -- runs ------------------------------------------------------------------------------------------------
def start_run(uri: str, experiment_id: str, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
    all_tags = {**{k: str(v) for k, v in tags.items()}, **process_tags(), **git_tags()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(uri).create_run(experiment_id, tags=all_tags, run_name=name)
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


_KEY_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces: ``real->art`` becomes ``real_to_art``."""
    return _KEY_BAD.sub("_", name.replace("->", "_to_"))


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(metric_key(k), "None" if v is None else str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client(uri).log_batch(run_id, params=items[i:i + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, Any], step: int = 0, prefix: str = "") -> None:
    """Numeric, finite values only (booleans, strings and NaN are dropped)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_key(prefix + k), float(v), now, int(step)) for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))]
    for i in range(0, len(items), 1000):
        client(uri).log_batch(run_id, metrics=items[i:i + 1000])


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(uri: str, run_id: str, paths: list[Path], artifact_path: str | None = None) -> list[str]:
    """Log the files that exist; return their names."""
    done = []
    for p in paths:
        if Path(p).is_file():
            client(uri).log_artifact(run_id, str(p), artifact_path)
            done.append(Path(p).name)
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():  # a zombie is dead for our purposes
        try:
            return stat.read_text().split(") ", 1)[1][:1] != "Z"
        except (OSError, IndexError):
            return True
    return True


def sweep_orphans(uri: str, experiment_id: str, flow_run_id: str = "") -> list[str]:
    """Mark FAILED every RUNNING run of a process that no longer exists: one started on this host by a dead pid
    (SIGKILL, OOM), or one of an earlier attempt of ``flow_run_id`` on any host (Prefect gives a flow run to one
    process at a time, so when it starts again its old runs are orphans: a worker that died, docs/SCALE.md). Runs
    of live processes and of other flow runs elsewhere are left alone. Returns the run ids marked."""
    c = client(uri)
    host = socket.gethostname()
    marked = []
    runs = c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for r in runs:
        tags = r.data.tags
        pid, where = tags.get("dapl.pid", ""), tags.get("dapl.host", "?")
        if flow_run_id and tags.get("prefect.flow_run_id") == flow_run_id:
            why = f"flow run {flow_run_id} started again: process {pid} on {where} ended without closing the run"
        elif where == host and pid.isdigit() and not _pid_alive(int(pid)):
            why = f"process {pid} on {host} ended without closing the run (killed)"
        else:
            continue
        c.set_tag(r.info.run_id, "dapl.failure", f"{why}; marked FAILED by the next flow run")
        c.set_terminated(r.info.run_id, status="FAILED")
        marked.append(r.info.run_id)
    return marked


# -- surviving a tracking outage --------------------------------------------------------------------------
class TrackingLost(RuntimeError):
    """An MLflow call still failed after every retry."""


def retry_delays() -> list[float]:
    raw = os.environ.get(RETRY_ENV, "1,2,4,8,16")
    try:
        return [float(x) for x in raw.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"{RETRY_ENV}={raw!r}: give comma-separated seconds, e.g. '1,2,4'") from e


def with_retry(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, retried after each delay of :func:`retry_delays`; :class:`TrackingLost` at the end."""
    last: Exception | None = None
    for delay in [0.0, *retry_delays()]:
        if delay:
            time.sleep(delay)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - connection refused, HTTP 5xx, sqlite "database is locked", ...
            last = e
    raise TrackingLost(f"{what}: {type(last).__name__}: {last}") from last


def best_effort(what: str, fn, *args, **kwargs) -> bool:
    """Like :func:`with_retry` but reports failure as False (for the flow's own parent run and summary)."""
    try:
        with_retry(what, fn, *args, **kwargs)
        return True
    except TrackingLost as e:
        import logging

        logging.getLogger("dapl.tracking").warning("MLflow unreachable, not logged: %s", e)
        return False


def read_pending(out_dir: str | Path) -> dict | None:
    f = Path(out_dir) / PENDING_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_pending(out_dir: Path, rec: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{PENDING_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, out_dir / PENDING_FILE)


class RunLog:
    """The MLflow run of one training, as a journal that cannot fail the training.

    ``tracking_pending.json`` in the run's output folder holds what a replay needs (name, tags, params) from the
    start until the run's tracking is complete (:meth:`complete`); a call that still fails after the retries
    marks it ``lost`` and every later call of this run is skipped (one wait per run, not one per metric)."""

    def __init__(self, uri: str, experiment_id: str, out_dir: str | Path, name: str, tags: dict[str, Any],
                 params: dict[str, Any], parent_run_id: str | None = None) -> None:
        self.uri, self.out = uri, Path(out_dir)
        self.rec = {"uri": uri, "experiment_id": experiment_id, "name": name,
                    "tags": {k: str(v) for k, v in tags.items()}, "params": {k: str(v) for k, v in params.items()},
                    "parent_run_id": parent_run_id, "run_id": None, "lost": None}
        _write_pending(self.out, self.rec)
        self.run_id = self.call("start run", start_run, uri, experiment_id, name, tags, parent_run_id)
        if self.run_id:
            self.rec["run_id"] = self.run_id
            _write_pending(self.out, self.rec)
            self.call("log params", log_params, uri, self.run_id, params)

    @classmethod
    def resume(cls, out_dir: str | Path, run_id: str | None, uri: str) -> RunLog:
        """The journal of an existing run (the evaluate task's view of the training's run)."""
        self = cls.__new__(cls)
        self.uri, self.out, self.run_id = uri, Path(out_dir), run_id
        self.rec = read_pending(out_dir) or {"run_id": run_id, "lost": None}
        return self

    @property
    def lost(self) -> bool:
        return bool(self.rec.get("lost"))

    def call(self, what: str, fn, *args, **kwargs):
        if self.rec.get("lost"):
            return None
        try:
            return with_retry(what, fn, *args, **kwargs)
        except TrackingLost as e:
            self.rec["lost"] = str(e)
            _write_pending(self.out, self.rec)
            return None

    def complete(self) -> None:
        """Everything of this run is in MLflow: the journal goes."""
        if not self.lost:
            (self.out / PENDING_FILE).unlink(missing_ok=True)


def replay_run(out_dir: str | Path, uri: str, experiment_id: str, parent_run_id: str | None,
               log_all) -> str:
    """Log a finished run whose tracking was lost, from its files on disk, into a new MLflow run (retried; raises
    :class:`TrackingLost`). ``log_all(uri, run_id, out_dir)`` logs metrics and artifacts from the files. The lost
    partial run, if the backend has it, is marked FAILED and points to the new one. Returns the new run id."""
    out = Path(out_dir)
    rec = read_pending(out)
    if rec is None:
        raise FileNotFoundError(f"{out / PENDING_FILE}: nothing to replay")
    tags = {**rec.get("tags", {}), "dapl.tracking_replayed": "true",
            "dapl.tracking_lost": str(rec.get("lost") or "")[:4000]}
    run_id = with_retry("start run", start_run, uri, experiment_id, rec["name"], tags, parent_run_id)
    with_retry("log params", log_params, uri, run_id, rec.get("params", {}))
    with_retry("log from disk", log_all, uri, run_id, out)
    with_retry("end run", end_run, uri, run_id, "FINISHED")
    old = rec.get("run_id")
    if old and old != run_id:
        best_effort("mark partial run", set_tags, uri, old, {"dapl.failure": f"tracking lost ({rec.get('lost')}); "
                    f"logged again from disk as run {run_id}"})
        best_effort("end partial run", end_run, uri, old, "FAILED")
    (out / PENDING_FILE).unlink(missing_ok=True)
    return run_id
