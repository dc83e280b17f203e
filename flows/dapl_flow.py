"""The ``dapl`` flow: fetch → index → (toy pretrain) → features → zero-shot → train × N → evaluate → summarise.

One flow, three deployments (``full-benchmark``, ``ablations``, ``adapt``) that differ in the ``kind`` parameter.
Runs are independent tasks submitted together, so the task runner (threads by default, Dask with ``--runner dask``)
runs them concurrently; each distinct configuration is trained once, and its other labels share the result. The
MLflow backend is checked before anything else runs: an unreachable server costs seconds, not a lost training.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Failed, State

from dapl.config import DaplConfig
from dapl.paths import TOY_CHECKPOINT, file_sha256
from dapl.plan import Run, distinct_runs, feature_groups, for_pair, format_recipe, pairs_of, recipe
from dapl.sweep import flagged_runs, run_warnings
from flows import runners
from flows.plan import FlowParams, FlowRequest
from tasks import (
    evaluate,
    extract_features,
    fetch,
    index,
    mlflow_links,
    share_result,
    summarise,
    toy_pretrain,
    tracking,
    train_prompts,
    zero_shot,
)
from tasks.artifacts import publish as publish_artifacts
from tasks.common import code_version, is_user_error, results_dir
from tasks.own import adapt_report, index_own
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
        from dapl.weights import weights_digest  # torch and open_clip only once the flow runs

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
    """A cached training counts only while its outputs exist: a deleted runs folder is made again (copied from the
    run store, else trained, resuming from any checkpoint that is left)."""
    return (Path(run.config.output_dir) / "metrics.json").is_file()


def _prepare(t, refresh: bool):
    """Results persist under the project (never ~/.prefect); ``refresh`` recomputes instead of using the cache."""
    return t.with_options(result_storage=results_dir(), refresh_cache=True if refresh else None)


def _flat_parameters(fn: Callable[..., dict]) -> Callable[..., dict]:
    """The flow's signature and docstring ``Args:`` are :class:`FlowParams`' fields, flat and typed: Prefect builds
    the UI's form and checks ``-p key=value`` names from them, so each parameter is declared once, there."""
    fn.__signature__ = FlowParams.signature().replace(return_annotation=dict)  # type: ignore[attr-defined]
    fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\n{FlowParams.args_doc()}"
    return fn


@flow(name="dapl", log_prints=True, task_runner=runners.task_runner())
@_flat_parameters
def dapl(**params: Any) -> dict:
    """DAPL benchmark (every pair × zero-shot/source-only/DAPL × seeds) or ablations (prompt settings, M1×M2, τ).

    The parameters are :class:`flows.plan.FlowParams`' fields (their types, defaults and descriptions are there).
    """
    p = FlowParams(**params)
    log = get_run_logger()
    t0 = time.perf_counter()
    uri = tracking.resolve_uri(p.tracking_uri)
    try:  # before any training: a backend that flickers is retried, one that is gone fails the run in one line
        tracking.check_tracking(uri)
        exp_id = tracking.with_retry("find the experiment", tracking.ensure_experiment, uri, p.experiment)
        swept = tracking.with_retry("sweep orphan runs", tracking.sweep_orphans, uri, exp_id,
                                    str(flow_run.id or ""))
    except (tracking.TrackingUnavailable, tracking.TrackingLost) as e:
        log.error("MLflow at %s cannot be used, nothing was trained: %s", uri, e)
        return Failed(message=str(e))
    if swept:
        log.warning("marked %d MLflow run(s) of killed processes FAILED: %s", len(swept), ", ".join(swept))
    try:
        req = p.request()
    except Exception as e:
        if not is_user_error(e):
            raise
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    cfg = req.config
    log.info(format_recipe(cfg))
    inputs = _data_inputs(cfg, p)
    if isinstance(inputs, State):
        return inputs
    domains, common = inputs
    runs = req.runs(domains)
    try:
        track = _start_parent(p, req, runs, uri, exp_id, common["manifest_sha"])
    except tracking.TrackingLost as e:
        log.error("MLflow at %s stopped answering, nothing was trained: %s", uri, e)
        return Failed(message=str(e))
    parent, rdir = track["parent_run_id"], req.runs_dir
    log.info("%s on %s: %d runs in %s; MLflow parent run %s (%s)", p.kind, cfg.data.dataset, len(runs), rdir,
             parent, uri)
    try:
        done = _run_all(cfg, runs, common, track, p.refresh)
        own = (lambda s: _adapt_summary(p, cfg, runs, done.rows, s)) if p.kind == "adapt" else None
        summary = _summarise(req, runs, done, track, len(swept), own)
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FINISHED")
    except RunsFailed as e:  # each failed task logged its own reason: the flow ends with one line
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FAILED")
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    except BaseException:
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FAILED")
        raise
    rows = done.rows
    cached = sum(1 for r in rows if r["cached"])
    print(f"\n{p.kind} on {cfg.data.dataset} ({len(rows)} runs, {cached} from cache, "
          f"{time.perf_counter() - t0:.0f} s):\n{summary['markdown']}\n{format_recipe(cfg)}\n")
    print(f"tables and plots in {rdir}; MLflow run {mlflow_links.where(uri, exp_id, parent)}")
    warnings = run_warnings(rows)
    for line in warnings:  # a WARNING record: the console and the run's log both show it once
        log.warning(line)
    return {"kind": p.kind, "runs_dir": str(rdir), "table": summary["markdown"], "recipe": recipe(cfg),
            "diverged": flagged_runs(rows, "diverged"), "warnings": warnings, "files": summary["files"],
            "plots": summary["plots"], "parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri,
            "runs": len(rows), "cached": cached, "orphans_marked_failed": swept}


def _data_inputs(cfg: DaplConfig, p: FlowParams) -> tuple[list[str], dict[str, str]] | State:
    """Fetch and index the dataset (and pretrain the toy checkpoint if it is missing): the manifest's domains and
    the inputs every model task takes; a refused data stage's Failed state instead."""
    data_root, manifest = str(cfg.data.root), str(cfg.data.manifest)
    if p.kind == "adapt":  # your own folders: indexed (and the labelled sample checked) instead of fetched
        state = index_own(*p.own_paths()[:2], manifest, p.own_paths()[2], return_state=True)
        if not state.is_completed():
            return _refused(state)
        return state.result()["domains"], {"manifest": manifest, "manifest_sha": state.result()["sha256"],
                                           "weights_sha": _weights_identity(cfg)}
    counts = not cfg.data.allow_incomplete
    state = _prepare(fetch, p.refresh)(cfg.data.dataset, data_root, p.sources, p.toy, counts, return_state=True)
    if not state.is_completed():
        return _refused(state)
    state = _prepare(index, p.refresh)(cfg.data.dataset, data_root, manifest, counts, return_state=True)
    if state.is_completed() and not Path(state.result()["manifest"]).is_file():  # cached, the file deleted since
        state = _prepare(index, True)(cfg.data.dataset, data_root, manifest, counts, return_state=True)
    if not state.is_completed():
        return _refused(state)
    idx = state.result()
    pre = cfg.model.pretrained
    if pre and Path(pre) == TOY_CHECKPOINT and not Path(pre).is_file():  # only the toy checkpoint is made here
        _prepare(toy_pretrain, p.refresh)(pre, None)
        if not Path(pre).is_file():  # cached, but the file was deleted since
            _prepare(toy_pretrain, True)(pre, None)
    return idx["domains"], {"manifest": manifest, "manifest_sha": idx["sha256"], "weights_sha": _weights_identity(cfg)}


def _start_parent(p: FlowParams, req: FlowRequest, runs: list[Run], uri: str, exp_id: str, msha: str) -> dict:
    """The flow run's parent MLflow run (tags, the config and the sweep as params): where every run nests."""
    cfg, sweep = req.config, req.sweep
    tags = {"kind": p.kind, "dataset": cfg.data.dataset, "code_version": code_version(),
            **tracking.data_tags(str(cfg.data.root), msha), "dapl.allow_incomplete": cfg.data.allow_incomplete}
    run_tags = {**tags, "prefect.flow_run_id": str(flow_run.id or ""), "recipe": format_recipe(cfg),
                "pairs": ", ".join(f"{s}->{t}" for s, t in pairs_of(runs)), "runs_dir": str(req.runs_dir)}
    params = {**cfg.flat(), **{f"recipe.{k}": v for k, v in recipe(cfg).items()}, "flow.kind": p.kind,
              "flow.seeds": list(sweep.seeds), "flow.methods": list(sweep.methods), "flow.pairs": p.pairs,
              "flow.pair": p.pair, "flow.settings": list(sweep.settings), "flow.m1m2": list(sweep.m1m2),
              "flow.taus": list(sweep.taus), "flow.pseudo": list(sweep.pseudo), "flow.runs": len(runs)}
    # retried like every MLflow call of a training: a backend restarting for seconds costs no flow run
    parent = tracking.with_retry("start the parent run", tracking.start_run, uri, exp_id,
                                 f"{p.kind} {cfg.data.dataset}", run_tags)
    tracking.with_retry("log the parent's params", tracking.log_params, uri, parent, params)
    return {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "tags": tags,
            "register_models": p.register_models}


class Done(NamedTuple):
    """What the runs left: completed rows (table order), zero-shot results, failed labels, the first cause."""

    rows: list[dict]
    zero_shots: list[dict]
    failed: list[str]
    cause: str


def _run_all(cfg: DaplConfig, runs: list[Run], common: dict, track: dict, refresh: bool) -> Done:
    """Features, zero-shot, then each distinct configuration trained and evaluated once; a label that shares
    another's configuration gets that result (and its own MLflow run) from :func:`tasks.share_result`."""
    with runners.worker_env(track["uri"]):  # Dask workers start at the first submission: they inherit the API
        feats = [_prepare(extract_features, refresh).submit(for_pair(cfg, a, b).to_dict(), **common)
                 for a, b in feature_groups(runs)]
    zs = {p: _prepare(zero_shot, refresh).submit(for_pair(cfg, *p).to_dict(), **common, wait_for=feats)
          for p in pairs_of(runs)}
    firsts = {r.digest: r for r in distinct_runs(runs)}
    trains = {d: _prepare(train_prompts, refresh or not _finished(r)).submit(
                  r.config.to_dict(), dataclasses.asdict(r.spec), track=track, reuse=not refresh,
                  wait_for=[zs[(r.spec.source, r.spec.target)]], **common)
              for d, r in firsts.items()}
    evals = {d: _prepare(evaluate, refresh).submit(t, track) for d, t in trains.items()}
    shared = _prepare(share_result, refresh)
    results = [evals[r.digest] if firsts[r.digest] is r
               else shared.submit(evals[r.digest], r.config.to_dict(), dataclasses.asdict(r.spec), track)
               for r in runs]  # table order, every label
    wait(results)
    failed = [f"{r.spec.pair} {r.spec.label} seed{r.spec.seed}" for r, f in zip(runs, results, strict=True)
              if not f.state.is_completed()]  # failed, crashed, or not run (NotReady: upstream failed)
    this_run = str(flow_run.id or "")
    rows = [f.result() for f in results if f.state.is_completed()]
    for r in rows:
        r["cached"] = r.get("flow_run_id") != this_run
    zres = [z.result() for z in zs.values() if z.state.is_completed()]
    return Done(rows, zres, failed, _first_cause([*feats, *zs.values(), *trains.values(), *results]))


def _adapt_summary(p: FlowParams, cfg: DaplConfig, runs: list[Run], rows: list[dict], summary: dict) -> dict:
    """adapt: the label-free report (written beside the runs) is what the flow shows and publishes."""
    src, tgt, sample = p.own_paths()
    rep = adapt_report(cfg.to_dict(), runs, rows, src, tgt, sample, str(Path(summary["files"]["table_md"]).parent))
    return {**summary, "markdown": rep["markdown"], "files": {**summary["files"], "report": rep["files"][1]}}


def _summarise(req: FlowRequest, runs: list[Run], done: Done, track: dict, swept: int,
               own: Callable[[dict], dict] | None = None) -> dict:
    """Tracking lost mid-flow logged again from disk, the tables and plots (``own``: adapt's report in their
    place), the parent's tags; RunsFailed when a run failed or is still untracked."""
    rows, failed, rdir, uri = done.rows, done.failed, req.runs_dir, track["uri"]
    if not rows:
        raise RunsFailed(f"every run failed: {failed}{done.cause}")
    # runs whose MLflow tracking was lost mid-flow (this run's or an earlier one's): logged again from disk
    replayed, untracked = complete_tracking([r.config.output_dir for r in distinct_runs(runs)], track)
    for r in rows:
        if not r.get("same_as"):  # a shared result's own MLflow run is not the trained one's
            r["run_id"] = replayed.get(str(r.get("output_dir")), r.get("run_id"))
    if replayed:
        get_run_logger().info("logged %d run(s) whose MLflow tracking had been lost, from their files",
                              len(replayed))
    summary = summarise(req.sweep.kind, rows, done.zero_shots, str(rdir), track)
    if own is not None:
        summary = own(summary)
    publish_artifacts("adapt" if own else req.sweep.kind, format_recipe(req.config), summary, track,
                      rows)  # best effort
    tracking.best_effort("parent tags", tracking.set_tags, uri, track["parent_run_id"], {
        "runs_failed": len(failed), "orphans_marked_failed": swept, "runs_untracked": len(untracked)})
    if failed:
        raise RunsFailed(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}{done.cause}")
    if untracked:
        raise RunsFailed(
            f"MLflow tracking is missing for {len(untracked)} of {len(runs)} runs; they are trained and their "
            f"results are on disk ({rdir}):\n  " + "\n  ".join(untracked.values()) +
            f"\nMake {uri} reachable and run the same flow again: these runs are logged from their files, "
            "without retraining.")
    return summary
