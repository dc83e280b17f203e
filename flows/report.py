"""``python -m flows.report DIR``: the demo's summary of the flow results it left in DIR.

DIR holds ``params.json`` (the flow parameters) and one ``<kind>.json`` per flow (``python -m flows run --out``).
The recipe line is :func:`dapl.plan.format_recipe` of the flow's own resolved config, so the demo prints what
``dapl benchmark`` and the flow's log print.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dapl.plan import format_recipe
from flows.plan import FlowParams
from tasks import mlflow_links

KINDS = ("full-benchmark", "ablations")


def report(folder: Path, kinds: tuple[str, ...] = KINDS) -> str:
    """Each flow's table with its run counts, recipe, warnings and where its files and MLflow run are."""
    params = json.loads((folder / "params.json").read_text())
    lines: list[str] = []
    for kind in kinds:
        r = json.loads((folder / f"{kind}.json").read_text())
        cfg = FlowParams(**{**params, "kind": kind}).request().config
        lines += [f"\n## {kind} (toy world; target accuracy %, last epoch; {r['runs']} runs, {r['cached']} from "
                  f"cache)\n", r["table"], "\n" + format_recipe(cfg)]
        lines += ["\n" + line for line in r.get("warnings", [])]
        lines.append(f"\ntables/plots: {r['runs_dir']}   MLflow parent run: {r['parent_run_id']}")
    lines.append(f"\nMLflow store: {r['tracking_uri']}; its training runs in the MLflow UI: "
                 f"{mlflow_links.runs_address(r['tracking_uri'], r['experiment_id'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the demo's results folder (runs/demo)")
    print(report(p.parse_args(argv).folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
