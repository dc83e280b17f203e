"""The ``dapl`` flow: fetch → index → (toy pretrain) → features → zero-shot → train × N → evaluate → summarise.

One flow, two deployments (``full-benchmark`` and ``ablations``) that differ in the ``kind`` parameter. Runs are
independent tasks submitted together, so the task runner (threads by default, Dask with ``--runner dask``) runs
them concurrently. The MLflow backend is checked before anything else runs: an unreachable server costs seconds,
not a lost training.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Failed

from dapl.benchmark import flagged_runs, run_warnings
from dapl.paths import TOY_CHECKPOINT, file_sha256
from dapl.plan import feature_groups, for_pair, format_recipe, pairs_of, recipe
from flows import plan, runners
from tasks import evaluate, extract_features, fetch, index, summarise, toy_pretrain, tracking, train_prompts, zero_shot
from tasks.common import code_version, is_user_error, results_dir
from tasks.train import complete_tracking


class RunsFailed(RuntimeError):
    """Some planned runs did not finish (their tasks logged why) or were not tracked: the flow run's message."""


def _refused(state):
    """A data stage that did not complete ends the flow run Failed with that stage's one-line reason."""
    exc = state.result(raise_on_failure=False)
    return Failed(message=state.message, data=exc if isinstance(exc, BaseException) else None)


def _weights_identity(cfg) -> str:
    """The weights' content digest (the library's, so any file format of the same weights is one identity);
    an unreadable file falls back to its bytes' hash and is reported by the task that loads it."""
    pre = cfg.model.pretrained
    if pre and Path(pre).is_file():
        from dapl.models import weights_digest  # torch and open_clip only once the flow runs

        try:
            return weights_digest(pre)
        except (ValueError, RuntimeError):
            return file_sha256(pre)
    return str(pre)


def _first_cause(futures) -> str:
    """The first failed task's own message (not its dependants' NotReady), so the flow's last line says why."""
    for f in futures:
        if f.state.is_failed() or f.state.is_crashed():
            return f"; first cause: {f.state.message}"
    return ""


def _finished(run) -> bool:
    """A cached training counts only while its outputs exist: a deleted runs folder is trained again (resuming
    from any checkpoint that is left)."""
    return (Path(run.config.output_dir) / "metrics.json").is_file()


def _prepare(t, refresh: bool):
    """Results persist under the project (never ~/.prefect); ``refresh`` recomputes instead of using the cache."""
    return t.with_options(result_storage=results_dir(), refresh_cache=True if refresh else None)


@flow(name="dapl", log_prints=True, task_runner=runners.task_runner())
def dapl(
    kind: str = "full-benchmark",
    dataset: str | None = None,
    root: str | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    preset: str | None = None,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    pair: str | None = None,
    settings: list[str] | None = None,
    m1m2: list[str] | None = None,
    taus: list[float] | None = None,
    overrides: dict[str, Any] | None = None,
    config: str | None = None,
    sources: list[str] | None = None,
    toy: dict[str, int] | None = None,
    workdir: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    refresh: bool = False,
    allow_incomplete: bool = False,
) -> dict:
    """DAPL benchmark (every pair × zero-shot/source-only/DAPL × seeds) or ablations (prompt settings, M1×M2, τ).

    Every default lives in ``dapl.plan`` (shared with ``dapl benchmark``/``dapl ablations`` and ``dvc repro``).

    Args:
        kind: "full-benchmark" or "ablations".
        dataset: toy, office_home, visda2017, domainnet, mini_domainnet, office31 or folder (default: the
            config's data.dataset, else toy). Its registry recipe is applied above the preset.
        root: dataset folder (default data/<dataset>).
        backbone: open_clip model name (default toy-clip); weights: a file or tag (default: the shipped toy
            checkpoint for toy-clip, else "openai").
        preset: "paper" (default) or "official"; config: a YAML config (e.g. params.yaml) to start from; paths in
            it are relative to its own folder.
        seeds: training seeds (default [1]); epochs: overrides train.epochs.
        pairs: "source->target" pairs (default: the dataset's pairs; ablations: data.source->data.target);
            methods: default zero_shot, source_only, dapl.
        pair, settings, m1m2, taus: the ablation pair, prompt settings (default all five), M1xM2 grid ("8x8";
            default {4,8,16}x{4,8,16}), τ grid (default 0.4-0.7).
        overrides: dotted config overrides, e.g. {"train.lr": 0.002, "features.views": 4}.
        sources: local archives/folders for fetching a real dataset; toy: toy world {seed, images_per_class, size}.
        workdir: base of relative arguments, runs/, artifacts/, cache/ (default: the project folder).
        tracking_uri: MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db).
        refresh: ignore cached task results and recompute (a finished training is re-read from its final
            checkpoint; delete its runs folder to train it again from scratch).
        allow_incomplete: accept a deliberate subset of a registry dataset (fewer images per domain than the
            official release), keeping the dataset's recipe, metric and manifest name; as `dapl data index
            --allow-incomplete` (config key data.allow_incomplete).
    """
    log = get_run_logger()
    t0 = time.perf_counter()
    uri = tracking.resolve_uri(tracking_uri)
    tracking.check_tracking(uri)
    exp_id = tracking.ensure_experiment(uri, experiment)
    swept = tracking.sweep_orphans(uri, exp_id)
    if swept:
        log.warning("marked %d MLflow run(s) of killed processes FAILED: %s", len(swept), ", ".join(swept))

    try:
        req = plan.from_params(kind=kind, dataset=dataset, root=root, backbone=backbone, weights=weights,
                               preset=preset, seeds=seeds, epochs=epochs, pairs=pairs, methods=methods, pair=pair,
                               settings=settings, m1m2=m1m2, taus=taus, overrides=overrides, config=config,
                               workdir=workdir, allow_incomplete=allow_incomplete)
    except Exception as e:
        if not is_user_error(e):
            raise
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    cfg, sweep = req.config, req.sweep
    log.info(format_recipe(cfg))
    data_root, manifest = str(cfg.data.root), str(cfg.data.manifest)
    counts = not cfg.data.allow_incomplete

    state = _prepare(fetch, refresh)(cfg.data.dataset, data_root, sources, toy, counts, return_state=True)
    if not state.is_completed():
        return _refused(state)
    state = _prepare(index, refresh)(cfg.data.dataset, data_root, manifest, counts, return_state=True)
    if state.is_completed() and not Path(state.result()["manifest"]).is_file():  # cached, the file deleted since
        state = _prepare(index, True)(cfg.data.dataset, data_root, manifest, counts, return_state=True)
    if not state.is_completed():
        return _refused(state)
    idx = state.result()
    pre = cfg.model.pretrained
    if pre and Path(pre) == TOY_CHECKPOINT and not Path(pre).is_file():  # only the toy checkpoint is made here
        _prepare(toy_pretrain, refresh)(pre, None)
        if not Path(pre).is_file():  # cached, but the file was deleted since
            _prepare(toy_pretrain, True)(pre, None)
    weights_sha = _weights_identity(cfg)
    msha = idx["sha256"]

    rdir, runs = req.runs_dir, req.runs(idx["domains"])
    this_run = str(flow_run.id or "")
    data_tags = tracking.data_tags(data_root, msha)
    tags = {"kind": kind, "dataset": cfg.data.dataset, "code_version": code_version(), **data_tags,
            "dapl.allow_incomplete": cfg.data.allow_incomplete}
    parent = tracking.start_run(uri, exp_id, f"{kind} {cfg.data.dataset}", {
        **tags, "prefect.flow_run_id": this_run, "pairs": ", ".join(f"{s}->{t}" for s, t in pairs_of(runs)),
        "runs_dir": str(rdir), "recipe": format_recipe(cfg)})
    tracking.log_params(uri, parent, {**cfg.flat(), **{f"recipe.{k}": v for k, v in recipe(cfg).items()},
                                      "flow.kind": kind, "flow.seeds": list(sweep.seeds),
                                      "flow.methods": list(sweep.methods), "flow.pairs": pairs, "flow.pair": pair,
                                      "flow.settings": list(sweep.settings), "flow.m1m2": list(sweep.m1m2),
                                      "flow.taus": list(sweep.taus), "flow.runs": len(runs)})
    track = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "tags": tags}
    log.info("%s on %s: %d runs in %s; MLflow parent run %s (%s)", kind, cfg.data.dataset, len(runs), rdir,
             parent, uri)
    try:
        common = {"manifest": manifest, "manifest_sha": msha, "weights_sha": weights_sha}
        with runners.worker_env(uri):  # Dask workers start at the first submission: they inherit the flow's API
            feats = [_prepare(extract_features, refresh).submit(for_pair(cfg, a, b).to_dict(), **common)
                     for a, b in feature_groups(runs)]
        zs = {p: _prepare(zero_shot, refresh).submit(for_pair(cfg, *p).to_dict(), **common, wait_for=feats)
              for p in pairs_of(runs)}
        trains = [_prepare(train_prompts, refresh or not _finished(r)).submit(
                      r.config.to_dict(), dataclasses.asdict(r.spec), track=track,
                      wait_for=[zs[(r.spec.source, r.spec.target)]], **common)
                  for r in runs]
        evals = [_prepare(evaluate, refresh).submit(t, track) for t in trains]
        wait(evals)
        failed = [f"{r.spec.pair} {r.spec.label} seed{r.spec.seed}" for r, e in zip(runs, evals, strict=True)
                  if not e.state.is_completed()]  # failed, crashed, or not run (NotReady: upstream failed)
        rows = [e.result() for e in evals if e.state.is_completed()]
        for r in rows:
            r["cached"] = r.get("flow_run_id") != this_run
        zres = [z.result() for z in zs.values() if z.state.is_completed()]
        if not rows:
            raise RunsFailed(f"every run failed: {failed}{_first_cause([*feats, *zs.values(), *trains, *evals])}")
        # runs whose MLflow tracking was lost mid-flow (this run's or an earlier one's): logged again from disk
        replayed, untracked = complete_tracking([r.config.output_dir for r in runs], track)
        for r in rows:
            r["run_id"] = replayed.get(str(r.get("output_dir")), r.get("run_id"))
        if replayed:
            log.info("logged %d run(s) whose MLflow tracking had been lost, from their files", len(replayed))
        summary = summarise(sweep.kind, rows, zres, str(rdir), track)
        cached = sum(1 for r in rows if r["cached"])
        tracking.best_effort("parent tags", tracking.set_tags, uri, parent, {
            "runs_failed": len(failed), "orphans_marked_failed": len(swept), "runs_untracked": len(untracked)})
        if failed:
            raise RunsFailed(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}"
                             f"{_first_cause([*feats, *zs.values(), *trains, *evals])}")
        if untracked:
            raise RunsFailed(
                f"MLflow tracking is missing for {len(untracked)} of {len(runs)} runs; they are trained and their "
                f"results are on disk ({rdir}):\n  " + "\n  ".join(untracked.values()) +
                f"\nMake {uri} reachable and run the same flow again: these runs are logged from their files, "
                "without retraining.")
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FINISHED")
    except RunsFailed as e:  # each failed task logged its own reason: the flow ends with one line
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FAILED")
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    except BaseException:
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FAILED")
        raise
    print(f"\n{kind} on {cfg.data.dataset} ({len(rows)} runs, {cached} from cache, "
          f"{time.perf_counter() - t0:.0f} s):\n{summary['markdown']}\n{format_recipe(cfg)}\n")
    print(f"tables and plots in {rdir}; MLflow run {parent} in {uri}")
    warnings = run_warnings(rows)
    for line in warnings:  # a WARNING record: the console and the run's log both show it once
        log.warning(line)
    return {"kind": kind, "runs_dir": str(rdir), "table": summary["markdown"], "recipe": recipe(cfg),
            "diverged": flagged_runs(rows, "diverged"), "warnings": warnings, "files": summary["files"],
            "plots": summary["plots"], "parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri,
            "runs": len(rows), "cached": cached, "orphans_marked_failed": swept}
