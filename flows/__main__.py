"""``python -m flows run KIND [-p key=value ...]`` runs the ``dapl`` flow here (ephemeral Prefect API unless
``PREFECT_API_URL`` is set); ``python -m flows serve`` serves the ``full-benchmark``, ``ablations`` and
``adapt`` deployments; ``python -m flows automations`` installs the work pool's crash recovery on the shared
server (flows/recovery.py).

``run`` and ``serve`` take ``--runner thread|dask``, ``--workers N`` and ``--dask-address tcp://host:8786``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dapl.overrides import parse_set_args
from flows import runners

DEPLOYMENTS = {
    "full-benchmark": "Every ordered pair of a dataset x (zero-shot, source-only, DAPL) x seeds "
                      "(default: the toy world)",
    "ablations": "The paper's ablations on one pair: five prompt settings, an M1xM2 grid, a tau grid 0.4-0.7",
    "adapt": "Your own data: labelled source class folders (source_dir) -> a flat folder of unlabelled target "
             "images (target_dir); zero-shot, source-only and DAPL with a label-free report",
}


def parse_params(items: list[str]) -> dict[str, Any]:
    """``-p key=value`` items, values parsed as YAML (so JSON too): the same parser as ``dapl --set``."""
    try:
        return parse_set_args(items)
    except ValueError as e:
        raise SystemExit(f"-p: {e}") from None


def _check_tracking(params: dict[str, Any]) -> None:
    """Fail before Prefect starts (and before any training) when MLflow is unreachable."""
    from tasks.tracking import TrackingUnavailable, check_tracking, resolve_uri

    try:
        check_tracking(resolve_uri(params.get("tracking_uri")))
    except TrackingUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3) from None


def cmd_run(a: argparse.Namespace) -> int:
    params = json.loads(Path(a.params_file).read_text()) if a.params_file else {}
    params |= parse_params(a.param or [])
    params["kind"] = a.kind
    _check_tracking(params)
    from flows.dapl_flow import RunsFailed, dapl
    from tasks.common import is_user_error

    try:
        result = dapl(**params)
    except Exception as e:  # the flow run's log already holds the reason; here it is one line, no traceback
        if not (is_user_error(e) or isinstance(e, RunsFailed)):
            raise
        print(f"python -m flows run {a.kind}: error: {e}", file=sys.stderr)
        return 2 if is_user_error(e) else 1
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from prefect import serve

    from flows.dapl_flow import dapl

    deployments = [dapl.to_deployment(name=name, parameters={"kind": name}, description=desc,
                                      tags=["dapl", name])
                   for name, desc in DEPLOYMENTS.items()]
    serve(*deployments, limit=a.limit)
    return 0


def cmd_automations(a: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("python -m flows automations: PREFECT_API_URL is not set (source .prefect/run/servers.env)",
              file=sys.stderr)
        return 2
    from flows.recovery import ensure

    for line in ensure():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runner", choices=["thread", "dask"], help="task runner (default thread, or $DAPL_TASK_RUNNER)")
    p.add_argument("--workers", type=int, help="concurrent runs: threads or Dask worker processes (default 2)")
    p.add_argument("--dask-address", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies dask)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the flow once, here")
    r.add_argument("kind", choices=list(DEPLOYMENTS))
    r.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="flow parameter (YAML/JSON value): -p seeds=[1,2] -p epochs=5 "
                        "-p 'overrides={\"train.lr\":0.01}'")
    r.add_argument("--params-file", help="JSON file of flow parameters (-p wins)")
    r.add_argument("--out", help="write the flow's result (table, files, MLflow ids) as JSON")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("serve", help="serve the deployments (needs PREFECT_API_URL: see scripts/serve.sh)")
    s.add_argument("--limit", type=int, default=1, help="flow runs executed at once by this process (default 1)")
    s.set_defaults(fn=cmd_serve)
    au = sub.add_parser("automations", help="create/update the automations that retry a dead worker's flow run")
    au.set_defaults(fn=cmd_automations)
    a = p.parse_args(argv)
    runners.configure(a.runner, a.workers, a.dask_address)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
