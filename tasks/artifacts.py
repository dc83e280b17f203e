"""The flow run's results on its Prefect Artifacts tab: a table artifact (one row per method, a column per pair)
and a markdown artifact (recipe, results and selection tables, MLflow links, plot files).

Publishing is best effort: a Prefect API that refuses an artifact costs one warning line, never the flow run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tasks import mlflow_links


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (its lines reach the flow run's log in the UI), else a plain one outside a run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("dapl.artifacts")


def artifact_key(kind: str, what: str = "results") -> str:
    """Prefect keys allow lowercase letters, digits and dashes: ``dapl-benchmark-results``."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"dapl-{kind}-{what}".lower())).strip("-")


def table_rows(table: list[dict], digits: int = 1) -> list[dict]:
    """The results table (methods × pairs, ``avg``) as artifact rows, accuracies rounded as in the markdown."""
    return [{k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()} for row in table]


def mlflow_section(track: dict | None, rows: list[dict]) -> list[str]:
    """Links to the parent run and every run of the table (or, for a local store, the command that serves it
    and the run ids)."""
    if not track or not track.get("parent_run_id"):
        return ["MLflow: not tracked"]
    uri, eid, parent = track["uri"], track["experiment_id"], track["parent_run_id"]
    base = mlflow_links.ui_base(uri)

    def ref(name: str, run_id: str) -> str:
        return f"[{name}]({mlflow_links.run_url(base, eid, run_id)})" if base else f"{name}: `{run_id}`"

    lines = [f"**MLflow** ({uri}; experiment `{eid}`)", ""]
    if base:
        lines.append(f"- [the experiment's runs]({mlflow_links.experiment_url(base, eid)})")
    else:
        lines.append(f"- {mlflow_links.serve_hint(uri, eid)}")
    lines.append(f"- parent run: {ref('this flow run', parent)}")
    lines += ["- " + ref(f"{r['pair']} {r['method']} seed{r['seed']}", r["run_id"]) for r in rows if r.get("run_id")]
    return lines


def results_markdown(kind: str, recipe_line: str, markdown: str, track: dict | None, rows: list[dict],
                     files: dict[str, str], plots: list[str]) -> str:
    """The markdown artifact: what the flow's log prints, with where each result lives."""
    parts = [f"# dapl {kind}: target accuracy %, last epoch ({len(rows)} runs)", "", recipe_line, "", markdown, "",
             *mlflow_section(track, rows), "", "**Plots**", ""]
    parts += [f"- `{p}`" for p in plots] or ["- none"]
    parts += ["", "**Tables**", ""] + [f"- `{Path(p).name}`: `{p}`" for p in files.values()]
    return "\n".join(parts)


def publish(kind: str, recipe_line: str, summary: dict, track: dict | None, rows: list[dict]) -> bool:
    """Both artifacts of :func:`tasks.summary.summarise`'s ``summary``, on the flow run (call it from the flow, not
    a task: the Artifacts tab lists a task's artifacts apart). False, with one warning line, if Prefect refused."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    files, plots = summary.get("files", {}), summary.get("plots", [])
    try:
        create_table_artifact(table_rows(summary["table"]), key=artifact_key(kind), description=f"dapl {kind}: "
                              f"target accuracy %, one row per method, mean over seeds. {recipe_line}")
        create_markdown_artifact(results_markdown(kind, recipe_line, summary["markdown"], track, rows, files, plots),
                                 key=artifact_key(kind, "report"), description=f"dapl {kind}: results, recipe, "
                                 "MLflow runs, plots")
        return True
    except Exception as e:  # noqa: BLE001 - an API error, a refused key: the results are on disk and in MLflow
        _logger().warning("Prefect artifacts not published (%s: %s); the results are in %s", type(e).__name__, e,
                          Path(next(iter(files.values()), ".")).parent)
        return False
