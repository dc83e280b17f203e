"""The Python behind the shell scripts (``python -m flows.report``, ``python -m flows.services``): the demo's
summary and the services' readiness wait."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

pytest.importorskip("prefect")

from dapl.paths import PROJECT_ROOT  # noqa: E402
from dapl.plan import format_recipe  # noqa: E402
from flows.plan import FlowParams  # noqa: E402


def _result(kind: str, warnings: list[str]) -> dict:
    return {"kind": kind, "runs": 3, "cached": 1, "table": f"| {kind} |\n|---|", "warnings": warnings,
            "runs_dir": f"/w/runs/{kind}", "parent_run_id": f"id-{kind}", "tracking_uri": "sqlite:///w/mlflow.db",
            "experiment_id": "3"}


def test_demo_report_prints_each_flow_with_the_flows_own_recipe(tmp_path):
    from flows.report import main

    params = {"config": str(PROJECT_ROOT / "params.yaml"), "seeds": [1], "workdir": str(tmp_path),
              "overrides": {"train.epochs": 3}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "full-benchmark.json").write_text(json.dumps(_result("full-benchmark", ["warning: 1 run diverged"])))
    (tmp_path / "ablations.json").write_text(json.dumps(_result("ablations", [])))
    cfg = FlowParams(**params).request().config
    line = format_recipe(cfg)
    assert line.startswith("recipe (toy): ") and "train.epochs=3" in line
    text = _capture(main, [str(tmp_path)])
    assert text == (
        "\n## full-benchmark (toy world; target accuracy %, last epoch; 3 runs, 1 from cache)\n\n"
        f"| full-benchmark |\n|---|\n\n{line}\n\nwarning: 1 run diverged\n\n"
        "tables/plots: /w/runs/full-benchmark   MLflow parent run: id-full-benchmark\n"
        "\n## ablations (toy world; target accuracy %, last epoch; 3 runs, 1 from cache)\n\n"
        f"| ablations |\n|---|\n\n{line}\n\ntables/plots: /w/runs/ablations   MLflow parent run: id-ablations\n"
        "\nMLflow store: sqlite:///w/mlflow.db; its training runs in the MLflow UI: "
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning (after bash scripts/mlflow_ui.sh)\n")


def _capture(fn, argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert fn(argv) == 0
    return out.getvalue()


def test_wait_http_returns_once_the_service_answers_and_gives_up_after_its_time():
    from flows.services import main, wait_http

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert wait_http(f"http://127.0.0.1:{port}/", 10)
    finally:
        server.shutdown()
        server.server_close()
    assert not wait_http(f"http://127.0.0.1:{port}/", 0.5)  # closed: refused until the time is up
    with pytest.raises(SystemExit, match="did not answer within 0 s"):
        main(["wait-http", f"http://127.0.0.1:{port}/", "0.2"])
