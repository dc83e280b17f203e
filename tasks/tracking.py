"""MLflow at the orchestration layer: URI resolution and a fail-fast reachability check, runs with the tags
every run carries, batched metrics, and the sweep that marks runs of killed processes FAILED.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (never the fluent API's thread-local
"active run"), so concurrent tasks in threads or Dask worker processes cannot log into each other's runs.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tasks.common import PROJECT_ROOT

DEFAULT_EXPERIMENT = "dapl"


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


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, prompts); this kind opens it on
# its training runs (the runs table, charts, compare), which is what a benchmark and its ablations are.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
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


def sweep_orphans(uri: str, experiment_id: str) -> list[str]:
    """Mark FAILED every RUNNING run started on this host by a process that no longer exists (SIGKILL, OOM,
    power loss); runs of live processes and of other hosts are left alone. Returns the run ids marked."""
    c = client(uri)
    host = socket.gethostname()
    marked = []
    runs = c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for r in runs:
        tags = r.data.tags
        pid = tags.get("dapl.pid", "")
        if tags.get("dapl.host") != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        c.set_tag(r.info.run_id, "dapl.failure", f"process {pid} on {host} ended without closing the run "
                  "(killed); marked FAILED by the next flow run")
        c.set_terminated(r.info.run_id, status="FAILED")
        marked.append(r.info.run_id)
    return marked
