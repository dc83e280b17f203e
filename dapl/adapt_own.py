"""The `dapl adapt` job: zero-shot, source-only and DAPL on your own data, reported without target labels.

Your data become a manifest (:mod:`dapl.own_data`), the runs are the benchmark's plan on the one pair
``source->target`` (so the CLI and the ``dapl/adapt`` deployment train the same configs as ``dapl benchmark``),
each run picks its epoch with a label-free criterion, and the report says what can be known without labels:
pseudo-label coverage per epoch, the predicted class distribution, the validators at the chosen epoch and, with a
labelled sample, accuracy on that sample (flagged as such, with its standard error).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from dapl.config import DaplConfig
from dapl.imageset import ImageSet
from dapl.own_data import SOURCE, TARGET, index_own_data, read_labelled_sample
from dapl.plan import Run, Sweep, plan_runs
from dapl.stages import SELECTED, predict_cached

METHODS = ("zero_shot", "source_only", "dapl")
# The label-free rule that picks each run's epoch unless eval.selection names another: the criterion with the
# lowest mean regret against the oracle on the toy benchmark (docs/TOY.md, "Label-free selection").
SELECTION = "im"
REPORT = "adapt_report"


def own_config(base: DaplConfig, manifest_file: Path, root: Path) -> DaplConfig:
    """``base`` pointed at your data (dataset ``folder``, domains source and target), label-free selection on."""
    selection = SELECTION if base.eval.selection == "last" else base.eval.selection
    return base.with_overrides({"data.dataset": "folder", "data.root": str(root), "data.manifest": str(manifest_file),
                                "data.source": [SOURCE], "data.target": [TARGET],
                                "eval.selection": selection})


def own_sweep(seeds: tuple[int, ...] = (1,)) -> Sweep:
    """The benchmark's sweep on the one pair source->target: zero-shot, source-only and DAPL."""
    return Sweep(kind="benchmark", seeds=seeds, methods=METHODS, pairs=((SOURCE, TARGET),))


def plan_own(cfg: DaplConfig, runs_dir: Path, seeds: tuple[int, ...] = (1,)) -> list[Run]:
    return plan_runs(own_sweep(seeds), cfg, [SOURCE, TARGET], runs_dir)


def prepare(base: DaplConfig, source: Path | str, target: Path | str, out_dir: Path | str,
            sample_csv: Path | str | None = None, progress: str | bool = True):
    """Index your folders into ``out_dir/manifest.parquet`` and read the labelled sample (before any training,
    so bad input costs seconds); returns the manifest, the run config and the sample (or None)."""
    out = Path(out_dir).absolute()
    manifest = index_own_data(source, target, progress=progress)
    sample = read_labelled_sample(sample_csv, manifest, target) if sample_csv else None
    mfile = manifest.save(out / "manifest.parquet")
    return manifest, own_config(base, mfile, manifest.root), sample


def exported_prompts(run_dir: Path | str) -> Path:
    """The prompts a run hands on: those of the epoch its label-free rule chose (the last when it chose that)."""
    d = Path(run_dir)
    return d / SELECTED if (d / SELECTED / "prompts.json").is_file() else d


def _sample_accuracy(pred: np.ndarray, target: ImageSet, sample: ImageSet) -> dict:
    """Accuracy (%) on the labelled sample's images, with the binomial standard error of that estimate."""
    pos = {p: i for i, p in enumerate(target.paths)}
    idx = np.asarray([pos[p] for p in sample.paths], np.int64)
    acc = float((pred[idx] == sample.labels).mean())
    se = math.sqrt(acc * (1 - acc) / len(idx))
    return {"n": len(idx), "accuracy": 100 * acc, "standard_error": 100 * se,
            "note": f"on a labelled sample of {len(idx)} target images, not on the whole target"}


def method_report(run: Run, row: dict, target: ImageSet, classnames: list[str], sample: ImageSet | None) -> dict:
    """What one run tells without target labels (and, with ``sample``, its flagged accuracy)."""
    out = Path(run.config.output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    prompts = exported_prompts(out)
    pred, _ = predict_cached(run.config, prompts, target, [SOURCE, TARGET])
    counts = np.bincount(pred, minlength=len(classnames))
    hist = pl.read_csv(out / "history.csv") if (out / "history.csv").is_file() else pl.DataFrame()
    sel = summary.get("selection") or {}
    rep = {"method": run.spec.label, "run_dir": str(out), "prompts": str(prompts),
           "selection": {"criterion": sel.get("criterion"), "epoch": sel.get("epoch"),
                         **{k: v for k, v in sel.items() if k.startswith("val_")}},
           "pl_coverage_per_epoch": hist["pl_coverage"].to_list() if "pl_coverage" in hist.columns else [],
           "zero_shot_pl_coverage": row.get("pl_coverage"),
           "predicted_classes": {c: {"images": int(n), "share": float(n / max(1, len(pred)))}
                                 for c, n in zip(classnames, counts, strict=True)}}
    if sample is not None:
        rep["labelled_sample"] = _sample_accuracy(pred, target, sample)
    return rep


def format_report(report: dict) -> str:
    """The report as markdown: one line per method, then each method's predicted class distribution."""
    lines = [f"# dapl adapt: {report['source']} -> {report['target']} ({report['target_images']} unlabelled target "
             f"images, {len(report['classes'])} classes)", "",
             "| method | epoch (rule) | pseudo-label coverage, last epoch | labelled-sample accuracy |",
             "|---|---|---|---|"]
    for m in report["methods"]:
        cov = m["pl_coverage_per_epoch"][-1] if m["pl_coverage_per_epoch"] else m["zero_shot_pl_coverage"]
        s = m.get("labelled_sample")
        acc = f"{s['accuracy']:.1f} ± {s['standard_error']:.1f} (n = {s['n']})" if s else "no sample given"
        sel = m["selection"]
        lines.append(f"| {m['method']} | {sel['epoch']} ({sel['criterion']}) | "
                     f"{'' if cov is None else f'{100 * cov:.1f} %'} | {acc} |")
    for m in report["methods"]:
        dist = ", ".join(f"{c} {v['share'] * 100:.1f} %" for c, v in m["predicted_classes"].items())
        lines += ["", f"{m['method']} predicts: {dist}"]
    lines += ["", f"exported: {report['exported']}"]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path | str) -> tuple[Path, Path]:
    out = Path(out_dir)
    (out / f"{REPORT}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{REPORT}.md").write_text(format_report(report) + "\n")
    return out / f"{REPORT}.json", out / f"{REPORT}.md"


def build_report(runs: list[Run], rows: list[dict], task, sample: ImageSet | None, source: str, target: str) -> dict:
    """The job's report from its finished runs (``task``: the runs' AdaptationData); DAPL's prompts are exported."""
    methods = [method_report(r, row, task.target, task.classnames, sample) for r, row in zip(runs, rows, strict=True)]
    dapl_run = next(r for r in runs if r.spec.method == "dapl")
    return {"source": str(source), "target": str(target), "target_images": len(task.target),
            "classes": task.classnames, "methods": methods,
            "exported": str(exported_prompts(dapl_run.config.output_dir))}
