"""Prompt training for one run (pair, method, seed) with per-epoch MLflow metrics, and its evaluation artifacts.

Training resumes from ``output_dir/checkpoint.pt`` when a killed flow is started again (the library's
``resume``); epochs that were logged by the killed run are logged again into the new run from the
checkpointed history, so every finished MLflow run holds the whole metric curve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from prefect import task
from prefect.logging import get_run_logger

from dapl import plots
from dapl.config import SECTIONS, DaplConfig
from dapl.plan import Run, RunSpec
from dapl.sweep import FLAGS, relabelled, run_one
from tasks import tracking
from tasks.common import clip_bundle, key_fn, load_manifest, refuse_user_errors, run_context

ALL_SECTIONS = (*SECTIONS, "output_dir")
CONFIG_FILE = "config.yaml"
# target accuracy first: MLflow's compare view plots the first metric a run logged (docs/PIPELINE.md, "MLflow")
EPOCH_METRICS = ("target_acc", "target_mean_per_class", "target_metric", "lr", "loss", "loss_source",
                 "loss_target", "pl_coverage", "pl_accuracy", "pl_agreement", "source_val_loss",
                 "probe_source_loss", "pl_weight", "val_entropy", "val_im", "val_snd")


def checkpoint_epoch(output_dir: str | Path) -> int:
    """The epoch a run would resume from (0 when there is no checkpoint)."""
    path = Path(output_dir) / "checkpoint.pt"
    if not path.is_file():
        return 0
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("epoch", 0))
    except Exception:  # noqa: BLE001 - a torn file: the trainer will report it
        return 0


def run_name(spec: RunSpec) -> str:
    return f"{spec.pair} {spec.label} seed{spec.seed}"


def run_tags(track: dict, run: Run, **extra: Any) -> dict[str, Any]:
    """The MLflow tags of one labelled run: the flow's, the run's label, where Prefect ran it, and ``extra``."""
    rs, ctx = run.spec, run_context()
    return {**track.get("tags", {}), "pair": rs.pair, "method": rs.label, "seed": rs.seed,
            "setting": run.config.prompt.setting.value, "prefect.task_run_id": ctx["task_run_id"],
            "prefect.flow_run_id": ctx["flow_run_id"], "output_dir": run.config.output_dir.as_posix(), **extra}


# a per-run path as a param would lead MLflow's compare view (it plots the first differing params, by name);
# it is a tag and in config.yaml
NOT_PARAMS = ("output_dir",)


def run_params(run: Run) -> dict[str, Any]:
    """The MLflow params of one labelled run: its config (the whole of it is ``config.yaml``) and its sweep axes."""
    return {**{k: v for k, v in run.config.flat().items() if k not in NOT_PARAMS}, **run.axes()}


@task(name="train-prompts", cache_key_fn=key_fn(ALL_SECTIONS, ("spec", "manifest_sha", "weights_sha")),
      persist_result=True)
@refuse_user_errors
def train_prompts(cfg: dict, spec: dict, manifest: str, manifest_sha: str, weights_sha: str,
                  track: dict | None = None, reuse: bool = True) -> dict:
    """Train (or evaluate, for the manual prompt) one planned run; returns its results-table row.

    ``cfg`` is the run's own config (``dapl.plan.plan_runs`` resolved it). ``track`` = {uri, experiment_id,
    parent_run_id, tags}: where the nested MLflow run goes (not in the cache key). ``reuse``: copy a stored
    identical run's result instead of training (:mod:`dapl.run_store`); its MLflow run is tagged ``reused_from``.
    """
    log = get_run_logger()
    run = Run(RunSpec(**spec), DaplConfig.model_validate(cfg))
    rs, run_cfg = run.spec, run.config
    start = checkpoint_epoch(run_cfg.output_dir)
    if start:
        log.info("%s: resuming from the epoch-%d checkpoint in %s", run_name(rs), start, run_cfg.output_dir)
    rl: tracking.RunLog | None = None
    uri = (track or {}).get("uri")
    if track:
        rl = tracking.RunLog(uri, track["experiment_id"], run_cfg.output_dir, run_name(rs),
                             run_tags(track, run, **{"dapl.resumed_from_epoch": start}), run_params(run),
                             track.get("parent_run_id"))
    run_id = rl.run_id if rl else None
    logged: set[int] = set()

    def on_epoch(rec: dict) -> None:
        if rl:
            rl.call("log epoch", tracking.log_metrics, uri, run_id,
                    {k: rec[k] for k in EPOCH_METRICS if k in rec}, step=rec["epoch"])
        logged.add(int(rec["epoch"]))

    try:
        row = run_one(run, bundle=clip_bundle(run_cfg), manifest=load_manifest(manifest, manifest_sha),
                      progress="log", on_epoch=on_epoch, reuse=reuse)
        write_config(run_cfg)
        if rl:
            if row.get("reused_from"):
                rl.call("tag reused", tracking.set_tags, uri, run_id, {"reused_from": row["reused_from"]})
            rl.call("log training files", log_training_files, uri, run_id, Path(run_cfg.output_dir), logged)
            if track.get("register_models") and not rl.lost:
                from tasks.adapted_model import register_trained_run  # torch: only when asked

                register_trained_run(uri, run_id, run_cfg.output_dir, run_cfg.data.dataset, rs)
            rl.call("end run", tracking.end_run, uri, run_id, "FINISHED")
    except BaseException:
        if rl:
            rl.call("end run", tracking.end_run, uri, run_id, "FAILED")
        raise
    _report(log, run, row, rl)
    return {**row, "run_id": run_id, "resumed_from_epoch": start, **run_context()}


def _report(log, run: Run, row: dict, rl: tracking.RunLog | None) -> None:
    """The task's log lines about one finished run: reused, flagged, untracked, and its accuracy."""
    name, run_cfg = run_name(run.spec), run.config
    if row.get("reused_from"):
        log.info("%s: the result of the identical run in %s, copied (not trained again)", name, row["reused_from"])
    if row.get("diverged"):
        log.warning("%s: training diverged (its prompts score worse on the source than untrained ones; see "
                    "metrics.json 'diverged'); tagged dapl.diverged in MLflow", name)
    if row.get("no_pseudo_labels"):
        log.warning("%s: no target image passes tau=%s, so it trained as source-only; tagged "
                    "dapl.no_pseudo_labels in MLflow", name, run_cfg.tau)
    if rl and rl.lost:
        log.warning("%s: trained; MLflow tracking lost (%s) - it is logged from %s later", name,
                    rl.rec["lost"], run_cfg.output_dir)
    log.info("%s: %s%% (zero-shot %s%%)", name, _fmt(row["accuracy"]), _fmt(row["zero_shot"]))


@task(name="share-result", cache_key_fn=key_fn(ALL_SECTIONS, ("row", "spec")), persist_result=True)
def share_result(row: dict, cfg: dict, spec: dict, track: dict | None = None) -> dict:
    """The row of a label whose config (``cfg``) another label of the plan trained (``row``, evaluated), with
    its own MLflow run logged from the shared files and tagged ``reused_from``/``reused_run_id``."""
    run = Run(RunSpec(**spec), DaplConfig.model_validate(cfg))
    out, run_id = Path(row["output_dir"]), None
    if track:
        uri = track["uri"]
        tags = run_tags(track, run, reused_from=row["output_dir"], reused_run_id=row.get("run_id") or "")
        run_id = tracking.with_retry("start run", tracking.start_run, uri, track["experiment_id"],
                                     run_name(run.spec), tags, track.get("parent_run_id"))
        try:
            tracking.with_retry("log params", tracking.log_params, uri, run_id, run_params(run))
            tracking.with_retry("log from disk", log_run_from_disk, uri, run_id, out)
        except BaseException:
            tracking.best_effort("end run", tracking.end_run, uri, run_id, "FAILED")
            raise
        tracking.with_retry("end run", tracking.end_run, uri, run_id, "FINISHED")
    same_as = f"{row['pair']} {row['method']} seed{row['seed']}"
    get_run_logger().info("%s: the same configuration as %s, whose result it shares", run_name(run.spec), same_as)
    return {**relabelled(row, run.spec), "run_id": run_id, "same_as": same_as, "reused_from": row["output_dir"],
            **run_context()}


def write_config(cfg: DaplConfig) -> Path:
    """The run's whole resolved config beside its results (logged as the MLflow run's ``config.yaml``)."""
    path = Path(cfg.output_dir) / CONFIG_FILE
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def log_training_files(uri: str, run_id: str, out: Path, logged: set[int] | None = None) -> None:
    """Per-epoch metrics from ``history.csv`` (those not logged live: epochs trained before a resume, the manual
    prompt's single evaluation) and the prompt/metric files."""
    hist = out / "history.csv"
    if hist.is_file():
        for rec in pl.read_csv(hist).to_dicts():
            if int(rec["epoch"]) not in (logged or set()):
                tracking.log_metrics(uri, run_id, {k: rec[k] for k in EPOCH_METRICS if k in rec},
                                     step=int(rec["epoch"]))
    tracking.log_artifacts(uri, run_id, [out / f for f in ("prompts.safetensors", "prompts.json",
                                                           "nearest_tokens.txt", "nearest_tokens.json")], "prompts")
    tracking.log_artifacts(uri, run_id, [out / "history.csv", out / "metrics.json"], "metrics")
    tracking.log_artifacts(uri, run_id, [out / CONFIG_FILE])
    summary = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    flags = {f"dapl.{flag}": "true" for flag in FLAGS if summary.get(flag)}
    if flags:
        tracking.set_tags(uri, run_id, flags)


def final_metrics(summary: dict) -> dict:
    """The run's final numbers, flat, as the evaluation logs them."""
    flat = {f"final.{k}": v for k, v in summary.get("final", {}).items()}
    flat |= {f"zero_shot.{k}": v for k, v in summary.get("zero_shot", {}).items()}
    flat |= {f"pseudo_labels.{k}": v for k, v in (summary.get("pseudo_labels") or {}).items()}
    flat |= {f"oracle.{k}": v for k, v in summary.get("oracle", {}).items()}
    return flat


def log_evaluation_files(uri: str, run_id: str, out: Path) -> None:
    tracking.log_metrics(uri, run_id, final_metrics(json.loads((out / "metrics.json").read_text())))
    tracking.log_artifacts(uri, run_id, [out / f for f in ("confusion.csv", "per_class.csv", "confusion.png",
                                                           "per_class.png", "history.png")], "evaluation")


def log_run_from_disk(uri: str, run_id: str, out: Path) -> None:
    """Everything a finished run logs, read back from its output folder (the replay after a tracking outage)."""
    log_training_files(uri, run_id, out)
    log_evaluation_files(uri, run_id, out)


def complete_tracking(out_dirs: list[str | Path], track: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Log every finished run whose MLflow tracking was lost (``tracking_pending.json`` beside its
    ``metrics.json``) from its files, into the flow's parent run. Returns ``({out_dir: new run id}, {out_dir:
    why it is still missing})``; nothing is retrained."""
    done, missing = {}, {}
    for d in out_dirs:
        out = Path(d)
        rec = tracking.read_pending(out)
        if rec is None or not (out / "metrics.json").is_file():
            continue  # complete, or not trained (a failed run is reported as such)
        if not rec.get("name"):
            missing[str(out)] = (f"{out / tracking.PENDING_FILE} lacks the run's name; delete it and the run's "
                                 "folder to train and log it again")
            continue
        try:
            done[str(out)] = tracking.replay_run(out, track["uri"], track["experiment_id"],
                                                 track.get("parent_run_id"), log_run_from_disk)
        except Exception as e:  # noqa: BLE001 - still unreachable (TrackingLost) or a file problem: reported
            missing[str(out)] = f"{rec['name']}: {e}"
    return done, missing


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


@task(name="evaluate", cache_key_fn=key_fn((), ("row",)), persist_result=True)
def evaluate(row: dict, track: dict | None = None) -> dict:
    """Training curves, confusion matrix and per-class accuracy (PNG + CSV) and the final numbers, into the run's
    MLflow run."""
    out = Path(row["output_dir"])
    summary = json.loads((out / "metrics.json").read_text())
    pngs = plots.run_pngs(out, f"{row['pair']} {row['method']} seed{row['seed']}")
    if track and row.get("run_id"):
        rl = tracking.RunLog.resume(out, row["run_id"], track["uri"])
        rl.call("log evaluation", log_evaluation_files, track["uri"], row["run_id"], out)
        rl.complete()
    return {**row, "final": summary.get("final", {}), "oracle": summary.get("oracle", {}),
            "plots": [str(p) for p in pngs]}
