"""Where a user opens an MLflow experiment or run: UI addresses that land on the training runs.

MLflow 3.17's UI picks an experiment's view from its *workflow type* (the URL's ``workflowType``, else the
browser's saved choice, ``genai`` when there is none), not from the ``mlflow.experimentKind`` tag: a link that
should open on the runs table must carry ``workflowType=machine_learning`` (docs/PIPELINE.md, "MLflow").
"""

from __future__ import annotations

import urllib.parse

WORKFLOW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # scripts/mlflow_ui.sh's default address


def ui_base(uri: str) -> str | None:
    """The UI of an ``http(s)`` tracking server; None for a local store (sqlite, files), which has no UI."""
    return uri.rstrip("/") if urllib.parse.urlsplit(uri).scheme in ("http", "https") else None


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table (not the GenAI overview a bare ``#/experiments/<id>`` opens on)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def open_hint(uri: str) -> str:
    """How to see a store in the UI: the server's own address, or the command that serves a local store."""
    base = ui_base(uri)
    if base:
        return f"MLflow UI: {base}"
    return f"MLflow UI: `MLFLOW_TRACKING_URI={uri} bash scripts/mlflow_ui.sh` (or `mlflow ui --backend-store-uri " \
           f"{uri}`), then {LOCAL_UI}"
