"""Screenshots of an MLflow store for the README: the experiment as the project's links open it in a fresh
browser (its runs, not the GenAI overview), the runs table of the latest benchmark and the latest
ablations (nested runs expanded, their ``sweep.*`` params and final accuracy as columns: the ablation
comparison), and MLflow's compare view of the ablation's runs along one axis (``--axis tau``).

Starts the MLflow UI (``scripts/mlflow_ui.sh --background``, own process group) on the store, drives headless
Chromium (Debian's ``chromium`` package) over its DevTools protocol (the UI keeps its table layout in the
page's localStorage: columns, expanded rows), saves PNGs, and stops Chromium and the UI.

    .venv/bin/python scripts/mlflow_screens.py [--uri sqlite:///mlflow.db] [--out docs] [--port 5055]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {
    "full-benchmark": ["sweep.pair", "sweep.method", "sweep.seed", "sweep.m1", "sweep.m2", "sweep.tau"],
    "ablations": ["sweep.label", "sweep.setting", "sweep.m1", "sweep.m2", "sweep.tau", "sweep.seed"],
}
METRICS = ["final.target_acc", "zero_shot.target_acc"]


class Browser:
    """Headless Chromium driven over the DevTools protocol (websockets, which the pipeline extra installs)."""

    def __init__(self, chromium: str, size: tuple[int, int], port: int = 9333) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="dapl-chromium-"))
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", f"--window-size={size[0]},{size[1]}",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tabs = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    tabs = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        if not tabs:
            self.close()
            sys.exit("Chromium's DevTools endpoint did not come up")
        from websockets.sync.client import connect

        page = next(t for t in tabs if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.n = 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

    def open(self, url: str, wait: float) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(wait)

    def shot(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing anyway
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _latest_parent(client, exp_id: str, kind: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.kind = '{kind}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0] if parents else None


def _table_state(parent_id: str, kind: str) -> dict:
    cols = [f"params.`{c}`" for c in COLUMNS[kind]] + [f"metrics.`{m}`" for m in METRICS]
    return {"searchFilter": f"tags.kind = '{kind}'", "orderByKey": "attributes.start_time", "orderByAsc": True,
            "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": cols, "columnOrder": [], "columnWidths": {}, "runsExpanded": {parent_id: True},
            "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {}, "runsHiddenMode": "FIRST_10_RUNS",
            "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
            "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
            "autoRefreshEnabled": False,
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--port", type=int, default=5055, help="port of the MLflow UI started here")
    p.add_argument("--experiment", default="dapl")
    p.add_argument("--axis", default="tau", help="ablation axis of the compare view: setting, m1m2 or tau")
    p.add_argument("--wait", type=float, default=8.0, help="seconds a page gets to render")
    a = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("headless Chromium is needed: apt-get install -y chromium")
    from mlflow import MlflowClient

    from tasks.mlflow_links import experiment_url

    client = MlflowClient(a.uri)
    exp = client.get_experiment_by_name(a.experiment)
    if exp is None:
        sys.exit(f"no experiment {a.experiment!r} in {a.uri}: run scripts/demo.sh first")
    eid = exp.experiment_id
    parents = {k: _latest_parent(client, eid, k) for k in COLUMNS}
    env = {**os.environ, "MLFLOW_TRACKING_URI": a.uri, "DAPL_MLFLOW_PORT": str(a.port)}
    ui = ["bash", str(ROOT / "scripts" / "mlflow_ui.sh")]
    subprocess.run([*ui, "--background"], check=True, env=env)
    base = f"http://127.0.0.1:{a.port}/#"
    out = Path(a.out)
    browser = Browser(chromium, (1600, 1000))
    try:
        browser.open(experiment_url(f"http://127.0.0.1:{a.port}", eid), a.wait)  # a fresh profile's first visit
        browser.shot(out / "mlflow_experiment_default.png")  # what the project's links open on
        print(f"{out / 'mlflow_experiment_default.png'}: the experiment as its links open it (fresh browser)")
        for kind, parent in parents.items():
            if parent is None:
                continue
            state = json.dumps(_table_state(parent.info.run_id, kind))
            browser.js(f"localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                        f"localStorage.setItem('MLflowLocalStorage-1.1-ExperimentView-{eid}-expandRows', 'true');"
                        f"localStorage.setItem('MLflowLocalStorage-1.1-ExperimentPage-[\"{eid}\"]-ReactComponentState',"
                        f" {json.dumps(state)});")
            browser.call("Page.reload", ignoreCache=True)  # a fresh page reads the state just stored
            time.sleep(a.wait)
            path = out / f"mlflow_{kind.replace('full-', '')}_runs.png"
            browser.shot(path)
            print(f"{path}: {kind} runs table")
        abl = parents["ablations"]
        if abl is not None:
            kids = client.search_runs([eid], filter_string=f"tags.mlflow.parentRunId = '{abl.info.run_id}' and "
                                      f"params.`sweep.axis` = '{a.axis}'", max_results=200)
            q = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in kids]),
                                        "experiments": json.dumps([eid]), "workflowType": "machine_learning"})
            browser.open(f"{base}/compare-runs?{q}", a.wait)
            path = out / f"mlflow_ablation_{a.axis}.png"
            browser.shot(path)
            print(f"{path}: MLflow's compare view of the {len(kids)} runs along sweep.{a.axis}")
    finally:
        browser.close()
        subprocess.run([*ui, "--stop"], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
