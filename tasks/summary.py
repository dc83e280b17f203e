"""The flow run's summary: results table (markdown + CSV, polars), per-seed table, plots, into the parent run."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from dapl import plots
from dapl.sweep import write_tables
from tasks import tracking

EXTRA_COLUMNS = ("run_id", "resumed_from_epoch", "flow_run_id")


@task(name="summarise", cache_policy=NO_CACHE, persist_result=False)
def summarise(kind: str, rows: list[dict], zero_shots: list[dict], out_dir: str, track: dict | None = None) -> dict:
    """Write ``<kind>_table.{md,csv}``, ``<kind>_runs.csv``, ``<kind>_seeds.csv``, pseudo-label stats and PNGs."""
    out = Path(out_dir)
    md, files, df, table = write_tables(rows, out, kind, EXTRA_COLUMNS)
    if zero_shots:
        files["pseudo_csv"] = out / f"{kind}_pseudo_labels.csv"
        cols = ("pair", "tau", "coverage", "pl_accuracy", "target_acc", "target_mean_per_class")
        pl.DataFrame([{k: z.get(k) for k in cols} for z in zero_shots],
                     schema_overrides={c: pl.Float64 for c in cols[1:]}).write_csv(files["pseudo_csv"])
    pngs = plots.sweep_pngs(df, out / "plots")
    if track and track.get("parent_run_id"):  # the files above are the results; MLflow gets a copy if it can
        uri, run_id = track["uri"], track["parent_run_id"]
        avg = {f"avg.{m}": a for m, a in zip(table["method"].to_list(), table["avg"].to_list(), strict=True)}

        def log_summary() -> None:
            tracking.log_artifacts(uri, run_id, list(files.values()), "results")
            tracking.log_artifacts(uri, run_id, pngs, "plots")
            tracking.log_metrics(uri, run_id, avg)
            tracking.set_tags(uri, run_id, {"runs": len(rows),
                                            "runs_from_cache": sum(1 for r in rows if r.get("cached"))})

        tracking.best_effort("log summary", log_summary)
    get_run_logger().info("%s results (%d runs):\n%s", kind, len(rows), md)
    return {"markdown": md, "files": {k: str(v) for k, v in files.items()}, "plots": [str(p) for p in pngs],
            "table": table.to_dicts()}
