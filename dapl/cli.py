"""``dapl``: one command per pipeline stage (the DVC stages and the README call exactly these)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dapl.config import DaplConfig
from dapl.config_errors import validated
from dapl.overrides import parse_set_args
from dapl.paths import apply_env_defaults, default_manifest


def _config(args: argparse.Namespace) -> DaplConfig:
    """The base config of every command: one resolution for the CLI, the flow and DVC (:mod:`dapl.plan`)."""
    from dapl.plan import resolve_config

    return resolve_config(args.config, preset=args.preset, overrides=parse_set_args(args.set or []))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (params.yaml keeps it under a `dapl:` key)")
    p.add_argument("--preset", choices=["paper", "official"], help="base preset (default: paper)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.epochs=5 --set data.target=[art]")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


# -- data -----------------------------------------------------------------------------------------------
def cmd_data_fetch(a: argparse.Namespace) -> int:
    import warnings

    from dapl.datasets.errors import DatasetWarning
    from dapl.datasets.fetch import fetch_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        root = fetch_dataset(a.dataset, a.root, sources=a.source or (), download_dir=a.download_dir, seed=a.seed,
                             force=a.force, check_counts=not a.allow_incomplete)
    for w in caught:  # a --source not used: one line, not Python's warning format
        if issubclass(w.category, DatasetWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"{a.dataset} is in place at {root}")
    return 0


def cmd_data_index(a: argparse.Namespace) -> int:
    from dapl.datasets.fetch import check_output_path
    from dapl.datasets.index import index_dataset
    from dapl.datasets.registry import get_spec

    name = get_spec(a.dataset).name
    out = Path(a.out) if a.out else default_manifest(name, Path(a.root), Path.cwd())
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
def _write_out(a: argparse.Namespace, res: dict) -> None:
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


# Each command resolves its config before importing the model stack: a config error answers at once.
def cmd_features(a: argparse.Namespace) -> int:
    cfg = _config(a)
    from dapl.stages import extract_features

    res = extract_features(cfg)
    _write_out(a, res)
    _print_json(res)
    return 0


def cmd_zero_shot(a: argparse.Namespace) -> int:
    cfg = _config(a)
    from dapl.stages import zero_shot

    res = zero_shot(cfg)
    _write_out(a, res)
    _print_json({k: v for k, v in res.items() if k != "metrics"})
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _config(a)
    from dapl.stages import adapt, no_pseudo_label_warning

    summary = adapt(cfg, resume=not a.restart)
    _print_json({k: summary[k] for k in ("task", "setting", "final", "selection", "oracle", "zero_shot",
                                         "pseudo_labels")})
    from dapl.plots import run_pngs

    run_pngs(Path(cfg.output_dir), summary["task"])  # history.png is the DVC stage's plot
    print(f"artifacts in {cfg.output_dir}")
    warning = no_pseudo_label_warning(cfg, summary)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    cfg = _config(a)
    from dapl.stages import evaluate_prompts

    res = evaluate_prompts(cfg, a.prompts)
    _write_out(a, res)
    _print_json({k: {"accuracy": m["accuracy"], "mean_per_class": m["mean_per_class"], "n": m["n"]}
                 for k, m in res["metrics"].items()})
    return 0


def sweep_of(a: argparse.Namespace):
    """The :class:`~dapl.plan.Sweep` of ``dapl benchmark``/``dapl ablations`` (unset options: the plan's defaults)."""
    from dapl.plan import Sweep

    if a.kind == "benchmark":
        return Sweep.parse("benchmark", seeds=a.seeds, methods=a.methods, pairs=a.pairs)
    return Sweep.parse("ablations", seeds=a.seeds, pairs=a.pair, settings=a.settings, m1m2=a.m1m2, taus=a.taus,
                       pseudo=a.pseudo)


def plan_of(a: argparse.Namespace, domains: list[str], cfg: DaplConfig | None = None):
    """Base config (``cfg``, else resolved from ``a``), runs folder and planned runs of ``dapl benchmark``/``dapl
    ablations`` (``domains``: the manifest's)."""
    from dapl.plan import default_runs_dir, plan_runs

    cfg, sweep = cfg or _config(a), sweep_of(a)
    out = Path(a.runs_dir).absolute() if a.runs_dir else default_runs_dir(sweep.kind, cfg)
    return cfg, out, plan_runs(sweep, cfg, domains, out)


def cmd_benchmark(a: argparse.Namespace) -> int:
    cfg, _ = _config(a), sweep_of(a)  # bad config or sweep options fail before the model stack loads
    from dapl.clip import load_clip
    from dapl.plan import format_recipe
    from dapl.stages import load_manifest
    from dapl.sweep import run_one, run_warnings, write_tables

    manifest = load_manifest(cfg)
    cfg, out, runs = plan_of(a, list(manifest.domains), cfg)
    print(format_recipe(cfg), file=sys.stderr)
    bundle = load_clip(cfg.model)
    rows = []
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.spec.pair} {run.spec.label} seed {run.spec.seed}", file=sys.stderr)
        rows.append(run_one(run, bundle=bundle, manifest=manifest, progress=not a.quiet))
    tables = write_tables(rows, out, a.kind)
    print(tables.markdown)
    from dapl.plots import sweep_pngs

    pngs = sweep_pngs(tables.runs, out / "plots")
    print(format_recipe(cfg))
    for line in run_warnings(rows):
        print(line, file=sys.stderr)
    (out / "recipe.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    print(f"tables in {out}/{a.kind}_table.md (per-seed mean ± std: {a.kind}_seeds.csv)"
          + (f"; plots in {out / 'plots'}" if pngs else ""))
    return 0


def cmd_adapt(a: argparse.Namespace) -> int:
    """Zero-shot, source-only and DAPL on your own labelled source and unlabelled target folders."""
    cfg = _config(a)  # bad config fails before the model stack loads
    from dapl.adapt_own import build_report, format_report, plan_own, prepare, write_report
    from dapl.clip import load_clip
    from dapl.plan import format_recipe
    from dapl.stages import build_task
    from dapl.sweep import run_one, run_warnings

    out = Path(a.out).absolute()
    manifest, run_cfg, sample = prepare(cfg, a.source, a.target, out, a.labelled_sample, progress=not a.quiet)
    print(manifest.summary(), file=sys.stderr)
    print(format_recipe(run_cfg), file=sys.stderr)
    runs = plan_own(run_cfg, out / "runs", tuple(int(s) for s in str(a.seed).split(",")))
    bundle = load_clip(run_cfg.model)
    rows = []
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.spec.label} seed {run.spec.seed}", file=sys.stderr)
        rows.append(run_one(run, bundle=bundle, manifest=manifest, progress=not a.quiet))
    report = build_report(runs, rows, build_task(run_cfg, manifest), sample, a.source, a.target)
    files = write_report(report, out)
    print(format_report(report))
    for line in run_warnings(rows):
        print(line, file=sys.stderr)
    if a.register:  # MLflow: imported only when asked to register
        ref = _adapted_model().register_run_folder(report["exported"], a.register)
        print(f"registered {ref.name} version {ref.version}, alias {ref.alias}: dapl predict --model "
              f"{ref.registry_uri} IMAGES... (or mlflow models serve -m {ref.registry_uri} --env-manager local)")
    print(f"report in {files[1]} (and {files[0].name}); runs in {out / 'runs'}")
    return 0


def _predict_files(args: list[str]) -> list[Path]:
    """The files named, and every file under the folders named (hidden and OS leftovers skipped)."""
    from dapl.datasets.tree import ignored_name

    out: list[Path] = []
    for p in map(Path, args):
        if p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.is_file()
                          and not any(ignored_name(part) for part in x.relative_to(p).parts))
        else:
            out.append(p)
    return out


def _prompts_classifier(a: argparse.Namespace):
    """``dapl predict --prompts``: a chunk of files -> the prediction table's rows, from the run folder."""
    from dapl.artifacts import AdaptedClassifier
    from dapl.predictions import prediction_rows

    clf = AdaptedClassifier.load(a.prompts, domain=a.domain, device=a.device)
    return lambda files: prediction_rows(clf.predict_files(files), clf.classnames, a.top_k)


def _adapted_model():
    """:mod:`tasks.adapted_model` (MLflow), imported only by the commands that need it."""
    from dapl.errors import UserError

    try:
        import tasks.adapted_model as module
    except ModuleNotFoundError as e:
        raise UserError(f"this command needs the pipeline extra ({e.name} is not installed): "
                        "pip install -e '.[pipeline]'") from None
    return module


def _model_classifier(a: argparse.Namespace):
    """``dapl predict --model``: the same rows through the MLflow pyfunc model (needs the pipeline extra)."""
    from dapl.errors import UserError

    if a.domain:
        raise UserError("--domain goes with --prompts; a registered model classifies with the domain it records")
    am = _adapted_model()
    return am.classify_with(am.load_adapted_model(a.model, device=a.device), a.top_k)


def cmd_predict(a: argparse.Namespace) -> int:
    """One line per file: ``path<TAB>class<TAB>probability``, or ``path<TAB>(error)<TAB>reason`` plus a
    warning on stderr for a file that is not a readable image (``--out``: the table, CSV or parquet, instead of the
    lines); fails only when no file could be read."""
    import polars as pl

    from dapl.errors import UserError
    from dapl.predictions import check_table_path, check_top_k, predict_table, write_table

    files = _predict_files(a.images)
    if not files:
        raise UserError(f"no files in {', '.join(a.images)}: give image files or folders holding them")
    check_top_k(a.top_k)
    if a.out:
        check_table_path(a.out)  # before any image is classified
    classify = _model_classifier(a) if a.model else _prompts_classifier(a)
    # the lines on stdout are the progress of a plain run; a terminal still gets the bar
    table = predict_table(classify, files, batch_size=a.batch_size,
                          progress="auto" if a.out or sys.stderr.isatty() else "off")
    failed = table.filter(pl.col("error").is_not_null())
    for path, reason in failed.select("path", "error").iter_rows():
        if not a.out:
            print(f"{path}\t(error)\t{reason}")
        print(f"dapl predict: warning: {path}: not a readable image ({reason}); skipped", file=sys.stderr)
    if a.out:
        write_table(table, a.out)
        print(f"{table.height} row(s) written to {a.out}", file=sys.stderr)
    else:
        for path, cls, prob in table.filter(pl.col("error").is_null()).select("path", "class", "probability").rows():
            print(f"{path}\t{cls}\t{prob:.3f}")
    if failed.height == len(files):
        first = failed.row(0, named=True)
        raise UserError(f"none of the {len(files)} file(s) is a readable image (first: {first['path']}: not a "
                        f"readable image ({first['error']}))")
    return 0


def cmd_register(a: argparse.Namespace) -> int:
    """``dapl register RUN --name NAME``: the run folder's prompts as a registered MLflow model, alias set."""
    ref = _adapted_model().register_run_folder(a.run_dir, a.name, alias=a.alias or None, experiment=a.experiment,
                                               domain=a.domain)
    print(f"registered {ref.name} version {ref.version}" + (f", alias {ref.alias}" if ref.alias else ""))
    print(f"load it with: dapl predict --model {ref.registry_uri} IMAGES...")
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    from dapl.resolve import config_layers, format_config

    print(format_config(config_layers(a.config, preset=a.preset, overrides=parse_set_args(a.set or []))), end="")
    return 0


# -- toy world --------------------------------------------------------------------------------------------
def cmd_toy_pretrain(a: argparse.Namespace) -> int:
    from dapl.toy.pretrain_config import ToyPretrainConfig

    cfg = validated(ToyPretrainConfig, parse_set_args(a.set or []))  # a bad --set fails before torch loads
    from dapl.toy.pretrain import pretrain_toy_clip

    metrics = pretrain_toy_clip(Path(a.out), cfg)
    _print_json(metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each group of subcommands is added by its own helper below."""
    p = argparse.ArgumentParser(prog="dapl", description="Domain Adaptation via Prompt Learning")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_data_commands(sub)
    _add_stage_commands(sub)
    _add_sweep_commands(sub)
    _add_adapt_command(sub)
    _add_predict_command(sub)
    _add_toy_commands(sub)
    return p


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """``dapl data fetch|index|list``."""
    data = sub.add_parser("data", help="datasets: fetch and index").add_subparsers(dest="data_cmd", required=True)
    f = data.add_parser("fetch", help="download/extract (or generate the toy world) into --root")
    f.add_argument("dataset")
    f.add_argument("--root", required=True)
    f.add_argument("--source", action="append", help="a local archive, split file or extracted folder")
    f.add_argument("--download-dir")
    f.add_argument("--seed", type=int, default=0, help="toy world seed")
    f.add_argument("--force", action="store_true",
                   help="with --source: replace a complete dataset (built beside it, swapped in once checked); "
                        "without: recheck it in place (toy: regenerate)")
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


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """One command per pipeline stage over the resolved config: features, zero-shot, train, evaluate, config."""
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


def _add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    """``dapl benchmark`` (pairs × methods × seeds) and ``dapl ablations`` (settings and grids on one pair)."""
    for kind in ("benchmark", "ablations"):
        b = sub.add_parser(kind, help="every pair x method x seed" if kind == "benchmark"
                           else "prompt settings, M1xM2 grid and tau grid on one pair")
        _add_config_args(b)
        b.add_argument("--seeds", help="e.g. '1,2,3' (default: 1)")
        b.add_argument("--runs-dir", help=f"default: runs/{kind}/<dataset>-<config digest>")
        b.add_argument("--quiet", action="store_true", help="no per-run progress bars")
        if kind == "benchmark":
            b.add_argument("--methods", help="default: zero_shot,source_only,dapl (also: dapl+, pseudo-labels "
                           "that learn)")
            b.add_argument("--pairs", help="e.g. 'art->real,real->art' (default: the dataset's pairs)")
        else:
            b.add_argument("--pair", help="e.g. 'real->art' (default: data.source->data.target)")
            b.add_argument("--settings", help="prompt settings (default: all five)")
            b.add_argument("--m1m2", help="M1xM2 grid, e.g. '4x4,8x8' (default: {4,8,16} x {4,8,16})")
            b.add_argument("--taus", help="tau grid (default: 0.4,0.5,0.6,0.7)")
            b.add_argument("--pseudo", help="pseudo-label variants (default: paper,refresh,templates,"
                           "refresh+templates)")
        b.set_defaults(fn=cmd_benchmark, kind=kind)


def _add_adapt_command(sub: argparse._SubParsersAction) -> None:
    ad = sub.add_parser("adapt", help="adapt to your own unlabelled target images (zero-shot, source-only, DAPL)")
    _add_config_args(ad)
    ad.add_argument("--source", required=True, help="labelled source images: <class>/<image> folders")
    ad.add_argument("--target", required=True, help="unlabelled target images: one flat folder")
    ad.add_argument("--labelled-sample", help="a CSV path,label of a few target images, to score the result on")
    ad.add_argument("--out", default="runs/adapt", help="where the manifest, runs and report go")
    ad.add_argument("--seed", default="1", help="training seed(s), e.g. 1 or 1,2,3")
    ad.add_argument("--register", metavar="NAME", help="register DAPL's prompts in MLflow under NAME")
    ad.add_argument("--quiet", action="store_true", help="no progress bars")
    ad.set_defaults(fn=cmd_adapt)


def _add_predict_command(sub: argparse._SubParsersAction) -> None:
    """``dapl predict`` (a run folder or a registered model) and ``dapl register`` (a run folder into MLflow)."""
    pr = sub.add_parser("predict", help="classify images with learned prompts")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="a run folder (prompts.safetensors + prompts.json)")
    src.add_argument("--model", help="an MLflow model: models:/NAME@champion, models:/NAME/VERSION, runs:/..., a "
                     "folder (store: $MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    pr.add_argument("--domain", help="whose prompts classify (default: the last target domain)")
    pr.add_argument("--device")
    pr.add_argument("--out", help="write the table here (.csv or .parquet) instead of printing lines")
    pr.add_argument("--top-k", type=int, default=3, help="top classes per image in the table (default 3)")
    pr.add_argument("--batch-size", type=int, default=256, help="images classified at a time (default 256)")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.set_defaults(fn=cmd_predict)
    rg = sub.add_parser("register", help="register a run folder's prompts as an MLflow model (needs the pipeline "
                        "extra)")
    rg.add_argument("run_dir", help="a run folder written by `dapl train`")
    rg.add_argument("--name", required=True, help="registered model name, e.g. dapl-toy-real-art-dapl")
    rg.add_argument("--alias", default="champion", help="alias pointed at the new version ('' for none)")
    rg.add_argument("--domain", help="whose prompts classify (default: the last target domain)")
    rg.add_argument("--experiment", default="dapl", help="MLflow experiment of the run that logs it")
    rg.set_defaults(fn=cmd_register)


def _add_toy_commands(sub: argparse._SubParsersAction) -> None:
    toy = sub.add_parser("toy", help="the embedded toy world").add_subparsers(dest="toy_cmd", required=True)
    tp = toy.add_parser("pretrain", help="pretrain the tiny toy-clip on freshly drawn images")
    tp.add_argument("--out", default="dapl/assets/toy-clip.pt")
    tp.add_argument("--set", action="append", metavar="KEY=VALUE", help="ToyPretrainConfig field")
    tp.set_defaults(fn=cmd_toy_pretrain)


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    from dapl.progress import console_logging

    console_logging()  # progress and estimate lines on stderr, also without a terminal (nohup, sbatch, | tee)
    from dapl.errors import UserError

    try:
        return int(args.fn(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as e:  # the user can fix these
        print(f"dapl {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
