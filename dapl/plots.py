"""PNG figures (matplotlib, Agg backend: no display, no network): per run the training curves, a confusion matrix
and per-class accuracy; per sweep accuracy vs τ, the M1×M2 heatmap, prompt-setting bars and benchmark bars.
MLflow logs them, and the training curves are DVC's plot too (`dvc plots show` needs no script from the web)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_png(history_csv: Path, out: Path, title: str = "") -> Path:
    """Per-epoch target accuracy, pseudo-label coverage/accuracy and the loss: how a run trained."""
    df = pl.read_csv(history_csv)
    ep = df["epoch"].to_numpy()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.2))
    for col, label in (("target_acc", "target accuracy"), ("pl_coverage", "pseudo-label coverage"),
                       ("pl_accuracy", "pseudo-label accuracy")):
        if col in df.columns and df[col].null_count() < len(df):
            y = df[col].to_numpy().astype(float)
            acc.plot(ep, y * 100 if col != "target_acc" else y, marker=".", label=label)
    acc.set_xlabel("epoch")
    acc.set_ylabel("%")
    for col in ("loss", "loss_source", "loss_target"):
        if col in df.columns and df[col].null_count() < len(df):
            loss.plot(ep, df[col].to_numpy().astype(float), label=col)
    loss.set_xlabel("epoch")
    for ax in (acc, loss):
        if ax.get_legend_handles_labels()[0]:  # a zero-shot run has no loss curve to label
            ax.legend(fontsize=8)
    fig.suptitle(title or "training", fontsize=10)
    return _save(fig, out)


def confusion_png(confusion_csv: Path, out: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class down, predicted across)."""
    df = pl.read_csv(confusion_csv)
    classes = df["true"].to_list()
    m = df.drop("true").to_numpy().astype(float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.35 * k, 1.6 + 0.35 * k))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalised)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out)


def per_class_png(per_class_csv: Path, out: Path, title: str = "") -> Path:
    df = pl.read_csv(per_class_csv)
    fig, ax = plt.subplots(figsize=(2 + 0.3 * len(df), 3))
    ax.bar(range(len(df)), df["accuracy"].to_list(), color="tab:blue")
    ax.set_xticks(range(len(df)), df["class"].to_list(), rotation=90, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "per-class accuracy", fontsize=9)
    return _save(fig, out)


def _axis(rows: pl.DataFrame, axis: str) -> pl.DataFrame:
    """The runs of one sweep axis (typed columns ``setting``, ``m1``, ``m2``, ``tau`` carry the values)."""
    return rows.filter(pl.col("axis") == axis) if "axis" in rows.columns else rows.clear()


def tau_png(rows: pl.DataFrame, out: Path) -> Path | None:
    """Accuracy and pseudo-label coverage against the threshold τ."""
    d = _axis(rows, "tau")
    if d.is_empty():
        return None
    d = d.group_by("tau").agg(pl.col("accuracy").mean(), pl.col("pl_coverage").mean()).sort("tau")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    (a,) = ax.plot(d["tau"], d["accuracy"], "o-", label="target accuracy")
    ax.set_xlabel("pseudo-label threshold τ")
    ax.set_ylabel("accuracy (%)")
    ax2 = ax.twinx()
    (b,) = ax2.plot(d["tau"], [100 * v if v is not None else np.nan for v in d["pl_coverage"]], "s--",
                    color="tab:orange", label="pseudo-label coverage")
    ax2.set_ylabel("coverage (%)")
    ax.legend(handles=[a, b], loc="best", fontsize=7)
    ax.set_title("accuracy vs τ", fontsize=9)
    return _save(fig, out)


def m1m2_png(rows: pl.DataFrame, out: Path) -> Path | None:
    """Heatmap of target accuracy over the M1 (domain-agnostic) × M2 (domain-specific) grid."""
    d = _axis(rows, "m1m2")
    if d.is_empty():
        return None
    d = d.group_by(["m1", "m2"]).agg(pl.col("accuracy").mean())
    m1s, m2s = sorted(d["m1"].unique().to_list()), sorted(d["m2"].unique().to_list())
    grid = np.full((len(m1s), len(m2s)), np.nan)
    for m1, m2, acc in d.iter_rows():
        grid[m1s.index(m1), m2s.index(m2)] = acc if acc is not None else np.nan
    fig, ax = plt.subplots(figsize=(1.8 + 0.9 * len(m2s), 1.4 + 0.8 * len(m1s)))
    im = ax.imshow(grid, cmap="viridis")
    for i in range(len(m1s)):
        for j in range(len(m2s)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(m2s)), m2s)
    ax.set_yticks(range(len(m1s)), m1s)
    ax.set_xlabel("M2 (domain-specific tokens)")
    ax.set_ylabel("M1 (domain-agnostic tokens)")
    ax.set_title("accuracy over M1 × M2", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out)


def settings_png(rows: pl.DataFrame, out: Path) -> Path | None:
    """Bars for the five prompt settings of the paper's ablation (mean ± std over seeds)."""
    d = _axis(rows, "setting")
    if d.is_empty():
        return None
    order = ["manual", "unified", "class_specific", "unified_domain", "class_specific_domain"]
    d = d.rename({"setting": "arg"}).group_by("arg").agg(pl.col("accuracy").mean().alias("mean"),
                                                         pl.col("accuracy").std().alias("std"))
    d = d.sort(pl.col("arg").replace_strict({k: i for i, k in enumerate(order)}, default=len(order)))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(range(len(d)), d["mean"].to_list(), yerr=[v or 0 for v in d["std"].to_list()], capsize=3)
    ax.set_xticks(range(len(d)), [a.replace("_", "\n") for a in d["arg"].to_list()], fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("prompt settings", fontsize=9)
    return _save(fig, out)


def benchmark_png(rows: pl.DataFrame, out: Path) -> Path | None:
    """Grouped bars: one group per pair, one bar per method (mean over seeds)."""
    methods = list(dict.fromkeys(_axis(rows, "method")["method"].to_list()))
    if not methods:
        return None
    d = rows.filter(pl.col("method").is_in(methods)).group_by(["pair", "method"]).agg(pl.col("accuracy").mean())
    pairs = list(dict.fromkeys(rows["pair"].to_list()))
    w = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2 + 0.7 * len(pairs) * max(1, len(methods) / 2), 3.4))
    for i, m in enumerate(methods):
        vals = {p: a for p, mm, a in d.iter_rows() if mm == m}
        ax.bar(np.arange(len(pairs)) + (i - (len(methods) - 1) / 2) * w,
               [vals.get(p) or 0 for p in pairs], w, label=m)
    ax.set_xticks(range(len(pairs)), pairs, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("target accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("benchmark", fontsize=9)
    return _save(fig, out)


PSEUDO_CURVES = (("pl_accuracy", "pseudo-label accuracy"), ("pl_coverage", "pseudo-label coverage (share ≥ τ)"),
                 ("target_acc", "target accuracy (%)"))


def pseudo_labels_png(rows: pl.DataFrame, out: Path) -> Path | None:
    """Per-epoch pseudo-label accuracy, coverage and target accuracy of every method that trains on pseudo-labels,
    on the pair where those methods end furthest apart (first seed): the curves that show why they differ.
    None with fewer than two such methods."""
    if rows.is_empty() or "axis" not in rows.columns:
        return None
    learned = rows.filter(pl.col("axis").is_in(["method", "pseudo"]) & pl.col("pl_coverage").is_not_null()
                          & ~pl.col("method").is_in(["zero_shot", "source_only"]))
    methods = list(dict.fromkeys(learned["method"].to_list()))
    if len(methods) < 2:
        return None
    spread = (learned.group_by(["pair", "method"]).agg(pl.col("accuracy").mean())
              .group_by("pair").agg((pl.col("accuracy").max() - pl.col("accuracy").min()).alias("gap"))
              .sort("gap", descending=True))
    pair = spread["pair"][0]
    fig, axes = plt.subplots(1, len(PSEUDO_CURVES), figsize=(3.4 * len(PSEUDO_CURVES), 3.1))
    for m in methods:
        run = learned.filter((pl.col("pair") == pair) & (pl.col("method") == m)).sort("seed").row(0, named=True)
        hist = Path(run["output_dir"]) / "history.csv"
        if not hist.is_file():
            continue
        h = pl.read_csv(hist)
        for ax, (col, _) in zip(axes, PSEUDO_CURVES, strict=True):
            if col in h.columns:
                ax.plot(h["epoch"].to_numpy(), h[col].to_numpy(), marker=".", label=f"{m} (seed {run['seed']})")
    for ax, (_, label) in zip(axes, PSEUDO_CURVES, strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"pseudo-labels on {pair}", fontsize=10)
    return _save(fig, out)


def sweep_pngs(rows: pl.DataFrame, out: Path) -> list[Path]:
    """The figures of a benchmark or ablation sweep that apply to its rows (written under ``out``)."""
    made = (benchmark_png(rows, out / "benchmark.png"), settings_png(rows, out / "prompt_settings.png"),
            m1m2_png(rows, out / "m1m2_heatmap.png"), tau_png(rows, out / "accuracy_vs_tau.png"),
            pseudo_labels_png(rows, out / "pseudo_labels.png"))
    return [p for p in made if p is not None]


def run_pngs(out: Path, title: str) -> list[Path]:
    """The figures of one run folder (``history.png``, ``confusion.png``, ``per_class.png``), from its CSVs."""
    makers = (("history", history_png, "training"), ("confusion", confusion_png, "confusion"),
              ("per_class", per_class_png, "per class"))
    return [make(out / f"{name}.csv", out / f"{name}.png", f"{what}: {title}")
            for name, make, what in makers if (out / f"{name}.csv").is_file()]
