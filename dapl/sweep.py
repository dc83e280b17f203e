"""Running planned runs and the tables that summarise them.

:mod:`dapl.plan` decides what runs (and each run's config); the CLI runs them in a loop, the Prefect flows fan
them out as tasks. Either way :func:`run_one` is the implementation (it copies a result already stored instead of
training it again) and :func:`results_table` the table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import polars as pl

from dapl import run_store
from dapl.plan import Run, RunSpec

ROW_AXES = ("axis", "setting", "m1", "m2", "tau", "refresh", "templates")


def run_one(run: Run, bundle=None, manifest=None, progress: str | bool = True,
            on_epoch: Callable[[dict], None] | None = None, reuse: bool = True) -> dict:
    """Run one planned run and return its table row (the last epoch's accuracy is the reported number).

    A run whose result is already stored (:mod:`dapl.run_store`: the same config, weights, images and code, from
    any entry point) is copied, not trained; ``reuse=False`` trains (or resumes) it regardless. The row's
    ``reused_from`` names the folder a copied result was trained in.
    """
    from dapl.clip import load_clip
    from dapl.stages import adapt, build_task

    cfg = run.config
    bundle = bundle or load_clip(cfg.model)
    task = build_task(cfg, manifest)
    key = run_store.run_key(cfg, bundle.identity, task)
    found = run_store.fetch(cfg, key) if reuse else None
    if found is None:
        summary = adapt(cfg, on_epoch=on_epoch, bundle=bundle, task=task, progress=progress, label=run.spec.label)
        origin = None
        run_store.record(cfg, key)
    else:
        summary, origin = found
    reused = origin if origin and Path(origin) != Path(cfg.output_dir).absolute() else None
    return {**result_row(run, summary), "reused_from": reused}


def result_row(run: Run, summary: dict) -> dict:
    """The table row of a run from its ``metrics.json`` summary.

    ``method`` in the row is the table label (``dapl``, ``setting:unified``, ``m1m2:4x8``, ``tau:0.4``); the
    typed sweep axes travel beside it (``axis``, ``setting``, ``m1``, ``m2``, ``tau``) for plots and trackers.
    """
    cfg, spec = run.config, run.spec
    final = summary["final"]
    metric = "target_mean_per_class" if summary["metric"] == "mean_per_class" else "target_acc"
    return {"pair": spec.pair, "source": spec.source, "target": spec.target, "method": spec.label,
            "seed": spec.seed, "accuracy": final.get(metric), "zero_shot": summary["zero_shot"].get(metric),
            "pl_coverage": summary["pseudo_labels"]["coverage"], "pl_accuracy": summary["pseudo_labels"]["accuracy"],
            "output_dir": cfg.output_dir.as_posix(), "axis": spec.axis, "setting": cfg.prompt.setting.value,
            "m1": cfg.prompt.m1, "m2": cfg.prompt.m2, "tau": cfg.tau, "refresh": cfg.pseudo.refresh,
            "templates": run.axes()["sweep.templates"],
            "diverged": bool(summary.get("diverged")), "no_pseudo_labels": bool(summary.get("no_pseudo_labels")),
            **regrets(summary)}


def regrets(summary: dict) -> dict[str, float | None]:
    """Points lost against the oracle epoch by each label-free choice of a run (``regret.<criterion>``), and by
    reporting the last epoch (``regret.last``); empty for runs with nothing to choose (the manual prompt)."""
    report = summary.get("validators") or {}
    if not report:
        return {}
    oracle = (summary.get("oracle") or {}).get("target_metric")
    last = (summary.get("final") or {}).get("target_metric")
    out = {"regret.last": oracle - last if oracle is not None and last is not None else None}
    return out | {f"regret.{CRITERION_NAMES.get(k, k)}": v.get("regret") for k, v in report.items()}


# history column of a label-free criterion -> the name eval.selection knows it by
CRITERION_NAMES = {"val_entropy": "entropy", "val_im": "im", "val_snd": "snd", "source_val_loss": "source_val",
                   "pl_agreement": "pl_agreement"}


def relabelled(row: dict, spec: RunSpec) -> dict:
    """``row`` of a run under another label that :func:`dapl.plan.plan_runs` gave the same config."""
    return {**row, "pair": spec.pair, "source": spec.source, "target": spec.target, "method": spec.label,
            "seed": spec.seed, "axis": spec.axis}


# the run flags every front door (CLI, flows, demo) warns about: row key -> what the warning says of them
FLAGS = {"diverged": "diverged (see their metrics.json; tag dapl.diverged in MLflow)",
         "no_pseudo_labels": "had no target image above tau and trained as source-only (lower pseudo.tau; tag "
                             "dapl.no_pseudo_labels in MLflow)"}


def flagged_runs(rows: list[dict], flag: str = "diverged") -> list[str]:
    """``"<pair> <method> seed <n>"`` of every run whose row has ``flag`` set."""
    return [f"{r['pair']} {r['method']} seed {r['seed']}" for r in rows if r.get(flag)]


def flag_warning(names: list[str], flag: str = "diverged") -> str:
    """The one warning line for the runs ``flagged_runs`` named."""
    return f"warning: {len(names)} run(s) {FLAGS[flag]}: {', '.join(names)}"


def run_warnings(rows: list[dict]) -> list[str]:
    """Every flag's warning line that applies to ``rows`` (none when all runs are clean)."""
    return [flag_warning(names, f) for f in FLAGS if (names := flagged_runs(rows, f))]


def results_table(rows: list[dict], methods: list[str] | None = None) -> pl.DataFrame:
    """Office-Home style: one row per method, one column per pair (mean over seeds), plus the average."""
    df = pl.DataFrame(rows)
    agg = df.group_by(["method", "pair"]).agg(pl.col("accuracy").mean().alias("acc"),
                                              pl.col("accuracy").std().alias("std"))
    pairs = list(dict.fromkeys(df["pair"].to_list()))
    methods = methods or list(dict.fromkeys(df["method"].to_list()))
    table = agg.pivot(on="pair", index="method", values="acc").select(["method", *pairs])
    table = table.with_columns(pl.mean_horizontal(pairs).alias("avg"))
    order = {m: i for i, m in enumerate(methods)}
    return table.sort(pl.col("method").replace_strict(order, default=len(order)))


def selection_table(rows: list[dict]) -> pl.DataFrame | None:
    """Mean regret (points below the oracle epoch) of each label-free epoch choice, per method over its runs:
    which criterion to trust for ``eval.selection``. None when no run had epochs to choose from."""
    df = pl.DataFrame(rows)
    cols = [c for c in df.columns if c.startswith("regret.")]
    if not cols:
        return None
    methods = list(dict.fromkeys(df["method"].to_list()))
    agg = (df.filter(pl.any_horizontal(pl.col(cols).is_not_null()))
           .group_by("method").agg(*(pl.col(c).mean().alias(c.removeprefix("regret.")) for c in cols),
                                   pl.len().alias("runs")))
    order = {m: i for i, m in enumerate(methods)}
    return agg.sort(pl.col("method").replace_strict(order, default=len(order)))


def seed_table(rows: list[dict]) -> pl.DataFrame:
    """Mean ± std over seeds per (method, pair)."""
    df = pl.DataFrame(rows)
    return (df.group_by(["method", "pair"]).agg(pl.col("accuracy").mean().alias("mean"),
                                                 pl.col("accuracy").std().alias("std"),
                                                 pl.len().alias("seeds")).sort(["method", "pair"]))


def format_table(table: pl.DataFrame, digits: int = 1) -> str:
    """A markdown table (pairs shortened to initials when domains are long)."""
    cols = table.columns
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for row in table.iter_rows():
        cells = [row[0]] + [("" if v is None else str(v) if isinstance(v, int) else f"{v:.{digits}f}") for v in row[1:]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


ROW_COLUMNS = ("pair", "source", "target", "method", "seed", "accuracy", "zero_shot", "pl_coverage", "pl_accuracy",
               "output_dir", *ROW_AXES)
_FLOATS = ("accuracy", "zero_shot", "pl_coverage", "pl_accuracy", "tau", "regret.last",
           *(f"regret.{n}" for n in CRITERION_NAMES.values()))


class Tables(NamedTuple):
    markdown: str
    files: dict[str, Path]
    runs: pl.DataFrame  # one row per run
    table: pl.DataFrame  # methods x pairs


def write_tables(rows: list[dict], out_dir: str | Path, kind: str, extra_columns: tuple[str, ...] = ()) -> Tables:
    """``<kind>_table.{md,csv}`` (methods × pairs), ``<kind>_runs.csv`` (one row per run), ``<kind>_seeds.csv``
    (mean ± std over seeds) in ``out_dir``: what the CLI and the flow both write."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    regret_cols = tuple(dict.fromkeys(k for r in rows for k in r if k.startswith("regret.")))
    cols = (*ROW_COLUMNS, *regret_cols, *extra_columns)
    types = {c: pl.Float64 for c in _FLOATS} | {"m1": pl.Int64, "m2": pl.Int64, "run_id": pl.Utf8}
    df = pl.DataFrame([{k: r.get(k) for k in cols} for r in rows],
                      schema_overrides={c: t for c, t in types.items() if c in cols})
    table = results_table(df.to_dicts())
    md = format_table(table)
    files = {"table_md": out / f"{kind}_table.md", "table_csv": out / f"{kind}_table.csv",
             "runs_csv": out / f"{kind}_runs.csv", "seeds_csv": out / f"{kind}_seeds.csv"}
    selection = selection_table(df.to_dicts())
    if selection is not None:
        md += ("\n\nlabel-free epoch choice, mean regret against the oracle epoch (points; lower is better; "
               "`last` is what the table reports):\n" + format_table(selection, 2))
        files["selection_csv"] = out / f"{kind}_selection.csv"
        selection.write_csv(files["selection_csv"])
    files["table_md"].write_text(md + "\n")
    table.write_csv(files["table_csv"])
    df.write_csv(files["runs_csv"])
    seed_table(df.to_dicts()).write_csv(files["seeds_csv"])
    return Tables(md, files, df, table)
