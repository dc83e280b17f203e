"""``dapl``: one command per pipeline stage (the DVC stages and the README call exactly these)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dapl.config import DaplConfig, parse_set_args


def _config(args: argparse.Namespace) -> DaplConfig:
    cfg = DaplConfig.load(args.config) if args.config else DaplConfig.from_preset(args.preset or "paper")
    if args.config and args.preset and args.preset != cfg.preset:
        cfg = DaplConfig.from_preset(args.preset, {k: v for k, v in cfg.to_dict().items() if k != "preset"})
    return cfg.with_overrides(parse_set_args(args.set or []))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (params.yaml keeps it under a `dapl:` key)")
    p.add_argument("--preset", choices=["paper", "official"], help="base preset (default: paper)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.epochs=5 --set data.target=[art]")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


# -- data -----------------------------------------------------------------------------------------------
def cmd_data_fetch(a: argparse.Namespace) -> int:
    from dapl.datasets.fetch import fetch_dataset

    root = fetch_dataset(a.dataset, a.root, sources=a.source or (), download_dir=a.download_dir, seed=a.seed,
                         force=a.force, check_counts=not a.allow_incomplete)
    print(f"{a.dataset} is in place at {root}")
    return 0


def cmd_data_index(a: argparse.Namespace) -> int:
    from dapl.datasets.fetch import check_output_path
    from dapl.datasets.index import index_dataset

    out = Path(a.out or f"artifacts/manifests/{a.dataset}.parquet")
    check_output_path(out, "--out")  # bad output paths fail before the (long) index, not after
    if a.problems:
        check_output_path(a.problems, "--problems")
    m = index_dataset(a.dataset, a.root, workers=a.workers, decode=not a.no_decode,
                      check_counts=not a.allow_incomplete)
    m.save(out)
    print(m.summary())
    if a.problems:
        m.problems.write_csv(a.problems)
        print(f"problem table written to {a.problems}")
    print(f"manifest written to {out}")
    return 0


def cmd_data_list(a: argparse.Namespace) -> int:
    from dapl.datasets.registry import get_spec, list_datasets

    for name in list_datasets():
        s = get_spec(name)
        doms = ", ".join(s.domain_keys) or "(discovered from folders)"
        print(f"{name:16s} {s.title}\n{'':16s} domains: {doms}; classes: {len(s.class_folders) or 'discovered'}; "
              f"metric: {s.metric}; tau: {s.tau}")
    return 0


# -- model stages -----------------------------------------------------------------------------------------
def cmd_features(a: argparse.Namespace) -> int:
    from dapl.run import extract_features

    res = extract_features(_config(a))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    _print_json(res)
    return 0


def cmd_zero_shot(a: argparse.Namespace) -> int:
    from dapl.run import zero_shot

    res = zero_shot(_config(a))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    _print_json({k: v for k, v in res.items() if k != "metrics"})
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from dapl.run import adapt

    cfg = _config(a)
    summary = adapt(cfg, resume=not a.restart)
    _print_json({k: summary[k] for k in ("task", "setting", "final", "selection", "oracle", "zero_shot",
                                         "pseudo_labels")})
    print(f"artifacts in {cfg.output_dir}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from dapl.run import evaluate_prompts

    res = evaluate_prompts(_config(a), a.prompts)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    _print_json({k: {"accuracy": m["accuracy"], "mean_per_class": m["mean_per_class"], "n": m["n"]}
                 for k, m in res["metrics"].items()})
    return 0


def cmd_benchmark(a: argparse.Namespace) -> int:
    from dapl.benchmark import ablation_specs, benchmark_specs, format_table, results_table, run_one, seed_table
    from dapl.models import load_clip
    from dapl.run import load_manifest

    cfg = _config(a)
    manifest = load_manifest(cfg)
    bundle = load_clip(cfg.model)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.kind == "ablations":
        src, tgt = (a.pair or f"{cfg.data.source[0]}->{cfg.data.target[0]}").split("->")
        grid = [tuple(int(v) for v in x.split("x")) for x in a.m1m2.split(",")] if a.m1m2 else []
        taus = [float(t) for t in a.taus.split(",")] if a.taus else []
        specs = ablation_specs((src, tgt), seeds, grid, taus)
    else:
        pairs = [tuple(p.split("->")) for p in a.pairs.split(",")] if a.pairs else None
        specs = benchmark_specs(list(manifest.domains), seeds, tuple(a.methods.split(",")), pairs)
    rows = []
    for i, spec in enumerate(specs):
        print(f"[{i + 1}/{len(specs)}] {spec.pair} {spec.method} seed {spec.seed}", file=sys.stderr)
        rows.append(run_one(cfg, spec, a.runs_dir, bundle=bundle, manifest=manifest, progress=not a.quiet))
    table = results_table(rows)
    text = format_table(table)
    print(text)
    out = Path(a.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    import polars as pl

    pl.DataFrame(rows).write_csv(out / f"{a.kind}_runs.csv")
    table.write_csv(out / f"{a.kind}_table.csv")
    seed_table(rows).write_csv(out / f"{a.kind}_seeds.csv")
    (out / f"{a.kind}_table.md").write_text(text + "\n")
    print(f"tables in {out}/{a.kind}_table.md (per-seed mean ± std: {a.kind}_seeds.csv)")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from dapl.artifacts import AdaptedClassifier

    clf = AdaptedClassifier.load(a.prompts, domain=a.domain, device=a.device)
    paths = [Path(p) for p in a.images]
    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    probs = clf.predict_proba(files)
    for f, row in zip(files, probs, strict=True):
        k = int(row.argmax())
        print(f"{f}\t{clf.classnames[k]}\t{row[k]:.3f}")
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(_config(a).to_dict(), sort_keys=False), end="")
    return 0


# -- toy world --------------------------------------------------------------------------------------------
def cmd_toy_pretrain(a: argparse.Namespace) -> int:
    from dapl.toy.pretrain import ToyPretrainConfig, pretrain_toy_clip

    over = parse_set_args(a.set or [])
    metrics = pretrain_toy_clip(Path(a.out), ToyPretrainConfig(**over))
    _print_json(metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dapl", description="Domain Adaptation via Prompt Learning")
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="datasets: fetch and index").add_subparsers(dest="data_cmd", required=True)
    f = data.add_parser("fetch", help="download/extract (or generate the toy world) into --root")
    f.add_argument("dataset")
    f.add_argument("--root", required=True)
    f.add_argument("--source", action="append", help="a local archive, split file or extracted folder")
    f.add_argument("--download-dir")
    f.add_argument("--seed", type=int, default=0, help="toy world seed")
    f.add_argument("--force", action="store_true")
    f.add_argument("--allow-incomplete", action="store_true",
                   help="accept fewer images per domain than the official release (a deliberate subset)")
    f.set_defaults(fn=cmd_data_fetch)
    i = data.add_parser("index", help="verify every image and write the polars manifest")
    i.add_argument("dataset")
    i.add_argument("--root", required=True)
    i.add_argument("--out", help="manifest path (default artifacts/manifests/<dataset>.parquet)")
    i.add_argument("--workers", type=int)
    i.add_argument("--problems", help="also write the problem table (CSV) here")
    i.add_argument("--no-decode", action="store_true",
                   help="header-only checks (fast on huge datasets; truncated files are then missed)")
    i.add_argument("--allow-incomplete", action="store_true",
                   help="index fewer images per domain than the official release (a deliberate subset)")
    i.set_defaults(fn=cmd_data_index)
    data.add_parser("list", help="the datasets of the registry").set_defaults(fn=cmd_data_list)

    for name, fn, hlp in [("features", cmd_features, "encode cached image features (test + train views)"),
                          ("zero-shot", cmd_zero_shot, "zero-shot accuracy and pseudo-label coverage"),
                          ("train", cmd_train, "train prompts for data.source -> data.target"),
                          ("evaluate", cmd_evaluate, "score saved prompts on data.target"),
                          ("config", cmd_config, "print the resolved configuration")]:
        s = sub.add_parser(name, help=hlp)
        _add_config_args(s)
        s.set_defaults(fn=fn)
        if name in ("zero-shot", "evaluate", "features"):
            s.add_argument("--out", help="write the full result JSON here")
        if name == "evaluate":
            s.add_argument("--prompts", required=True, help="a run folder written by `dapl train`")
        if name == "train":
            s.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")

    for kind in ("benchmark", "ablations"):
        b = sub.add_parser(kind, help="every pair x method x seed" if kind == "benchmark"
                           else "prompt settings, M1xM2 grid and tau grid on one pair")
        _add_config_args(b)
        b.add_argument("--seeds", default="1")
        b.add_argument("--runs-dir", default=f"runs/{kind}")
        b.add_argument("--quiet", action="store_true", help="no per-run progress bars")
        if kind == "benchmark":
            b.add_argument("--methods", default="zero_shot,source_only,dapl")
            b.add_argument("--pairs", help="e.g. 'art->real,real->art' (default: all ordered pairs)")
        else:
            b.add_argument("--pair", help="e.g. 'real->art' (default: data.source->data.target)")
            b.add_argument("--m1m2", help="e.g. '4x4,8x8,16x16'")
            b.add_argument("--taus", help="e.g. '0.4,0.5,0.6,0.7'")
        b.set_defaults(fn=cmd_benchmark, kind=kind)

    pr = sub.add_parser("predict", help="classify images with learned prompts")
    pr.add_argument("--prompts", required=True, help="a run folder (prompts.safetensors + prompts.json)")
    pr.add_argument("--domain", help="whose prompts classify (default: the last target domain)")
    pr.add_argument("--device")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.set_defaults(fn=cmd_predict)

    toy = sub.add_parser("toy", help="the embedded toy world").add_subparsers(dest="toy_cmd", required=True)
    tp = toy.add_parser("pretrain", help="pretrain the tiny toy-clip on freshly drawn images")
    tp.add_argument("--out", default="dapl/assets/toy-clip.pt")
    tp.add_argument("--set", action="append", metavar="KEY=VALUE", help="ToyPretrainConfig field")
    tp.set_defaults(fn=cmd_toy_pretrain)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "true")
    args = build_parser().parse_args(argv)
    from dapl.errors import UserError
    from dapl.models import WeightsNotFoundError

    try:
        return int(args.fn(args) or 0)
    except (UserError, WeightsNotFoundError, FileNotFoundError, ValueError) as e:  # the user can fix these
        print(f"dapl {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
