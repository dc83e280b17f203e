"""Benchmarks and ablations as lists of independent runs, and the tables that summarise them.

A run is ``(pair, method, seed)`` turned into its own :class:`DaplConfig`; the CLI runs them in a loop, the
Prefect flows fan them out as tasks. Either way :func:`run_one` is the implementation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dapl.config import DaplConfig, PromptConfig, PromptSetting

METHODS = ("zero_shot", "source_only", "dapl")


@dataclass(frozen=True)
class RunSpec:
    source: str
    target: str
    method: str  # zero_shot | source_only | dapl | setting:<PromptSetting> | m1m2:<m1>x<m2> | tau:<value>
    seed: int

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def slug(self) -> str:
        return f"{self.source}_{self.target}/{self.method.replace(':', '_')}/seed{self.seed}"


def all_pairs(domains: list[str]) -> list[tuple[str, str]]:
    return [(s, t) for s, t in itertools.permutations(domains, 2)]


def config_for(base: DaplConfig, spec: RunSpec, runs_dir: str | Path) -> DaplConfig:
    """The run's own config: the base with the pair, seed, output folder and method applied."""
    over: dict = {"data.source": [spec.source], "data.target": [spec.target], "train.seed": spec.seed,
                  "output_dir": str(Path(runs_dir) / spec.slug)}
    p = base.prompt
    kind, _, arg = spec.method.partition(":")
    if kind == "zero_shot":
        over["prompt"] = PromptConfig.for_setting("manual").model_dump()
    elif kind == "source_only":
        over["prompt"] = PromptConfig.for_setting("unified", m1=p.m1 or 16, init=p.init,
                                                  text=p.text).model_dump()
        over["pseudo.enabled"] = False
    elif kind == "setting":
        init = p.init if PromptSetting(arg) is not PromptSetting.manual else None
        over["prompt"] = PromptConfig.for_setting(arg, m1=p.m1 or 16, m2=p.m2 or 16, init=init,
                                                  text=p.text).model_dump()
    elif kind == "m1m2":
        m1, m2 = (int(v) for v in arg.split("x"))
        over["prompt.m1"], over["prompt.m2"] = m1, m2
        if p.init and m1 != p.m1:
            over["prompt.init"] = None
    elif kind == "tau":
        over["pseudo.tau"] = float(arg)
    elif kind != "dapl":
        raise ValueError(f"unknown method {spec.method!r}")
    return base.with_overrides(over)


def benchmark_specs(domains: list[str], seeds: list[int], methods: tuple[str, ...] = METHODS,
                    pairs: list[tuple[str, str]] | None = None) -> list[RunSpec]:
    """Every pair × method × seed (zero-shot is deterministic: one seed)."""
    pairs = pairs or all_pairs(domains)
    out = []
    for (s, t), m in itertools.product(pairs, methods):
        for seed in seeds[:1] if m == "zero_shot" else seeds:
            out.append(RunSpec(s, t, m, seed))
    return out


def ablation_specs(pair: tuple[str, str], seeds: list[int], m1m2: list[tuple[int, int]] | None = None,
                   taus: list[float] | None = None) -> list[RunSpec]:
    """The paper's ablations on one pair: the five prompt settings, an M1×M2 grid, a τ grid."""
    s, t = pair
    methods = [f"setting:{x.value}" for x in PromptSetting]
    methods += [f"m1m2:{a}x{b}" for a, b in (m1m2 or [])]
    methods += [f"tau:{v}" for v in (taus or [])]
    return [RunSpec(s, t, m, seed) for m in methods for seed in (seeds[:1] if m == "setting:manual" else seeds)]


def run_one(base: DaplConfig, spec: RunSpec, runs_dir: str | Path, bundle=None, manifest=None,
            progress: bool = True, on_epoch=None) -> dict:
    """Run one spec and return its table row (the last epoch's accuracy is the reported number)."""
    from dapl.models import load_clip
    from dapl.run import adapt, build_task

    cfg = config_for(base, spec, runs_dir)
    bundle = bundle or load_clip(cfg.model)
    task = build_task(cfg, manifest)
    summary = adapt(cfg, on_epoch=on_epoch, bundle=bundle, task=task, progress=progress)
    final = summary["final"]
    metric = "target_mean_per_class" if task.metric == "mean_per_class" else "target_acc"
    return {"pair": spec.pair, "source": spec.source, "target": spec.target, "method": spec.method,
            "seed": spec.seed, "accuracy": final.get(metric), "zero_shot": summary["zero_shot"].get(metric),
            "pl_coverage": summary["pseudo_labels"]["coverage"], "pl_accuracy": summary["pseudo_labels"]["accuracy"],
            "output_dir": cfg.output_dir.as_posix()}


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
        cells = [row[0]] + [("" if v is None else f"{v:.{digits}f}") for v in row[1:]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
