"""Accuracy impact of the image-encoder precision on the toy benchmark (issue 13, part 2).

    python -m bench.precision                          # fp32, bf16, fp16 on CPU, 3 seeds, params.yaml
    python -m bench.precision --precisions fp32,bf16 --reuse

For each precision: ``dapl benchmark`` with ``features.precision`` set (every other setting from the config),
then, against fp32: the cosine similarity of the test-view features of every toy image (min / mean) and the
change of zero-shot and DAPL accuracy per pair (mean over seeds). The verdict line says whether bf16 stays within
0.3 points on every toy average, the condition for ``auto`` to pick it on a CPU. Written into a block of
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bench.common import loadavg, md_table, write_block
from dapl.encoder import resolve_precision

LIMIT_POINTS = 0.3


def run_benchmark(config: str, precision: str, seeds: str, methods: list[str], runs_dir: Path, device: str,
                  reuse: bool) -> Path:
    csv = runs_dir / precision / "benchmark_runs.csv"
    if reuse and csv.exists():
        return csv
    cmd = [sys.executable, "-m", "dapl.cli", "benchmark", "-c", config, "--seeds", seeds, "--quiet",
           "--methods", ",".join(methods),
           "--set", f"features.precision={precision}", "--set", f"model.device={device}",
           "--runs-dir", str(runs_dir / precision)]
    print("[precision]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return csv


def collect_runs(folder: Path, methods: list[str]) -> pl.DataFrame:
    """Every finished run under ``folder`` (``<src>_<tgt>/<method>/seed<N>/metrics.json``): a partial
    benchmark counts too, and only (pair, method, seed) finished for every precision are compared."""
    rows = []
    for f in sorted(folder.glob("*/*/seed*/metrics.json")):
        pair_dir, method, seed = f.parts[-4], f.parts[-3], f.parts[-2]
        if method not in methods:
            continue
        m = json.loads(f.read_text())
        final = m.get("final", {})
        acc = final.get("target_metric", final.get("target_acc"))
        if acc is not None:
            rows.append({"pair": pair_dir.replace("_", "->", 1), "method": method, "seed": int(seed[4:]),
                         "accuracy": float(acc)})
    return pl.DataFrame(rows, schema={"pair": pl.Utf8, "method": pl.Utf8, "seed": pl.Int64, "accuracy": pl.Float64})


def feature_effects(config: str, precisions: list[str], device: str
                    ) -> tuple[dict[str, tuple[float, float, float]], dict[str, dict[str, float]]]:
    """Over the test view of every image of the toy manifest: cosine of each precision's features to fp32
    (min, mean, max 1 − cos), and zero-shot accuracy per domain (hand-written template; a pair's zero-shot
    accuracy is its target domain's, so this covers every pair exactly, with no training)."""
    from dapl.clip import load_clip
    from dapl.config import DaplConfig
    from dapl.features import FeatureCache
    from dapl.pseudo_labels import zero_shot_text
    from dapl.stages import load_manifest

    cfg = DaplConfig.load(config).with_overrides({"model.device": device})
    bundle = load_clip(cfg.model)
    m = load_manifest(cfg)
    images = m.image_set(list(m.domains))
    text = zero_shot_text(bundle, list(m.classes), cfg.pseudo.template).cpu()
    fc = cfg.features
    feats = {p: FeatureCache.from_config(fc.model_copy(update={"precision": p}), bundle).test_features(images).float()
             for p in ["fp32", *precisions]}
    cos, zs = {}, {}
    for p, f in feats.items():
        if p != "fp32":
            c = torch.nn.functional.cosine_similarity(feats["fp32"], f, dim=-1)
            cos[p] = (float(c.min()), float(c.mean()), float((1 - c).max()))
        pred = (torch.nn.functional.normalize(f, dim=-1) @ text.T).argmax(-1).numpy()
        zs[p] = {d: 100 * float(np.mean(pred[images.domains == i] == images.labels[images.domains == i]))
                 for i, d in enumerate(m.domains)}
    return cos, zs


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="params.yaml")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="fp32 is always included (the reference)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs-dir", default="runs/precision")
    p.add_argument("--reuse", action="store_true", help="reuse a precision's runs already in --runs-dir")
    p.add_argument("--partial", action="store_true", help="run nothing: compare the runs finished so far")
    p.add_argument("--methods", default="zero_shot,dapl")
    p.add_argument("--out", default="docs/PERFORMANCE.md")
    p.add_argument("--tag", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    precs = ["fp32"] + [x for x in a.precisions.split(",") if x and x != "fp32"]
    frames, n_pairs = mean_over_seeds(finished_runs(a, precs))
    resolved = {x: resolve_precision(x, a.device) for x in precs}
    cos, zs = feature_effects(a.config, [x for x in precs if x != "fp32"], a.device)
    rows, worst = accuracy_rows(frames, cos, resolved)
    zavg = {pr: float(np.mean(list(zs[pr].values()))) for pr in precs}
    for pr in precs:
        worst[(pr, "zero-shot, all domains")] = abs(zavg[pr] - zavg["fp32"])
    body = [md_table(["precision", "method", "feature cosine to fp32: min", "mean", "max 1 − cos", "avg accuracy (%)",
                      "Δ avg vs fp32 (points)", "max |Δ| over pairs", "mean Δ over pairs", "pairs", "seeds"], rows),
            zero_shot_table(zs, zavg, precs),
            f"\n**{verdict(worst, resolved)}** ({n_pairs} pairs compared). "
            "Toy benchmark: "
            f"`dapl benchmark -c {a.config} --seeds {a.seeds} --methods {a.methods}` on `{a.device}` "
            "with `features.precision` set, every other setting from the config (the shipped toy CLIP "
            "checkpoint `dapl/assets/toy-clip.pt` and params.yaml at the time of the run). Δ = accuracy − fp32 "
            "accuracy of the same pair and method (mean over seeds); the training itself is fp32 in every row, "
            "only the cached image features differ. Feature cosine over the test view of every toy image.",
            f"\nFinished in {time.time() - t0:.0f} s; load average at the end "
            "{:.2f} {:.2f} {:.2f} (shared 2-core machine).".format(*loadavg())]
    print("\n".join(body))
    tag = a.tag or f"precision-{a.device}"
    if a.out:
        title = f"## Results: {tag} (generated by `bench/precision.py`, {time.strftime('%Y-%m-%d %H:%M')})\n\n"
        write_block(Path(a.out), tag, title + "\n".join(body))
        print(f"written to {a.out} (block '{tag}')")
    return 0


def finished_runs(a: argparse.Namespace, precs: list[str]) -> dict[str, pl.DataFrame]:
    """Each precision's finished runs (after running its benchmark unless ``--partial``); fp32 always, the
    others only when they finished a run."""
    runs, methods = Path(a.runs_dir), a.methods.split(",")
    raw = {}
    for prec in precs:
        if not a.partial:
            run_benchmark(a.config, prec, a.seeds, methods, runs, a.device, a.reuse)
        raw[prec] = collect_runs(runs / prec, methods)
    return {k: df for k, df in raw.items() if df.height or k == "fp32"}


def mean_over_seeds(raw: dict[str, pl.DataFrame]) -> tuple[dict[str, pl.DataFrame], int]:
    """Per precision, the accuracy per (method, pair) over the (pair, method, seed) finished for every
    precision, and how many pairs that covers."""
    keys = ["pair", "method", "seed"]
    common = raw["fp32"].select(keys)
    for df in raw.values():
        common = common.join(df.select(keys), on=keys)
    frames = {k: df.join(common, on=keys).group_by(["method", "pair"]).agg(
        pl.col("accuracy").mean(), pl.len().alias("seeds")) for k, df in raw.items()}
    return frames, common.select("pair").n_unique()


def accuracy_rows(frames: dict[str, pl.DataFrame], cos: dict[str, tuple[float, float, float]],
                  resolved: dict[str, str]) -> tuple[list[list[object]], dict[tuple[str, str], float]]:
    """One row per (precision, method) against fp32, and each one's |Δ| of the average (for the verdict)."""
    ref = frames["fp32"].rename({"accuracy": "ref"})
    rows, worst = [], {}
    for prec in frames:
        j = frames[prec].join(ref.select(["method", "pair", "ref"]), on=["method", "pair"])
        for method in sorted(j["method"].unique().to_list()):
            s = j.filter(pl.col("method") == method).with_columns((pl.col("accuracy") - pl.col("ref")).alias("d"))
            avg, avg_ref = float(s["accuracy"].mean()), float(s["ref"].mean())
            worst[(prec, method)] = abs(avg - avg_ref)
            c = cos.get(prec, (1.0, 1.0, 0.0))
            rows.append([prec if resolved[prec] == prec else f"{prec} (= {resolved[prec]})", method,
                         f"{c[0]:.6f}", f"{c[1]:.6f}", f"{c[2]:.1e}", f"{avg:.2f}", f"{avg - avg_ref:+.2f}",
                         f"{float(s['d'].abs().max()):.2f}", f"{float(s['d'].mean()):+.2f}", s.height,
                         int(s["seeds"].min())])
    return rows, worst


def verdict(worst: dict[tuple[str, str], float], resolved: dict[str, str]) -> str:
    """Whether bf16 stays within LIMIT_POINTS on every toy average: the condition for ``auto`` to pick it."""
    bf = [v for (pr, _), v in worst.items() if resolved[pr] == "bf16"]
    if not bf:
        return "not measured"
    return (f"bf16 changes a toy average by up to {max(bf):.2f} points: "
            + (f"within the {LIMIT_POINTS} limit, `auto` may pick it" if max(bf) <= LIMIT_POINTS else
               f"OVER the {LIMIT_POINTS} limit, so `auto` must not pick it (AUTO_CPU_BF16 = False)"))


def zero_shot_table(zs: dict[str, dict[str, float]], zavg: dict[str, float], precs: list[str]) -> str:
    doms = list(zs["fp32"])
    rows = [[pr, *(f"{zs[pr][d]:.2f} ({zs[pr][d] - zs['fp32'][d]:+.2f})" for d in doms),
             f"{zavg[pr]:.2f} ({zavg[pr] - zavg['fp32']:+.2f})"] for pr in precs]
    return ("\n" + md_table(["precision", *(f"zero-shot on {d} (Δ)" for d in doms), "average (Δ)"], rows)
            + "\n\nZero-shot accuracy per target domain over every toy image (complete: no training, every pair "
            "with that target), from the same cached test view.")


if __name__ == "__main__":
    raise SystemExit(main())
