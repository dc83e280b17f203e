"""Where a user opens an MLflow experiment or run: UI addresses that land on the training runs.

MLflow 3.17's UI picks an experiment's view from its *workflow type* (the URL's ``workflowType``, else the
browser's saved choice, ``genai`` when there is none), not from the ``mlflow.experimentKind`` tag: a link that
should open on the runs table must carry ``workflowType=machine_learning`` (docs/PIPELINE.md, "Where the results
appear").
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

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


def serve_hint(uri: str, experiment_id: str) -> str:
    """How to see a local store (sqlite, files) in the UI: the command that serves it, then the runs' address."""
    return (f"MLflow UI: `MLFLOW_TRACKING_URI={uri} bash scripts/mlflow_ui.sh` (or `mlflow ui --backend-store-uri "
            f"{uri}`), then {experiment_url(LOCAL_UI, experiment_id)}")


def runs_address(uri: str, experiment_id: str) -> str:
    """The experiment's training runs: on its server, or where scripts/mlflow_ui.sh serves a local store."""
    base = ui_base(uri)
    url = experiment_url(base or LOCAL_UI, experiment_id)
    return url if base else f"{url} (after bash scripts/mlflow_ui.sh)"


def where(uri: str, experiment_id: str, run_id: str) -> str:
    """One phrase for a log line: the run's address on a server, else its id and the store."""
    base = ui_base(uri)
    return run_url(base, experiment_id, run_id) if base else f"{run_id} in {uri}"


def experiment_id_by_name(base: str, name: str, timeout: float = 5.0) -> str | None:
    """The id of experiment ``name`` on a running server (its REST API), None when it has none (yet)."""
    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?{urllib.parse.urlencode({'experiment_name': name})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)["experiment"]["experiment_id"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.mlflow_links http://127.0.0.1:5000``: the address of the experiment's runs (what
    scripts/mlflow_ui.sh prints), or the UI's root and how to reach the runs when there is no such experiment."""
    p = argparse.ArgumentParser(prog="python -m tasks.mlflow_links", description=main.__doc__)
    p.add_argument("base", help="the MLflow UI, e.g. http://127.0.0.1:5000")
    p.add_argument("--experiment", default="dapl")
    a = p.parse_args(argv)
    base = a.base.rstrip("/")
    eid = experiment_id_by_name(base, a.experiment)
    print(experiment_url(base, eid) if eid else f"{base} (no experiment {a.experiment!r} yet; pick 'Model training' "
          "in the sidebar to see training runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
