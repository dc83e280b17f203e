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

from dapl.benchmark import config_for
from flows import plan, runners
from tasks import evaluate, extract_features, fetch, index, summarise, toy_pretrain, tracking, train_prompts, zero_shot
from tasks.common import PROJECT_ROOT, code_version, file_sha256, results_dir
from tasks.train import complete_tracking


def _weights_identity(cfg) -> str:
    pre = cfg.model.pretrained
    if pre and Path(pre).is_file():
        return file_sha256(pre)
    return str(pre)


def _finished(cfg, spec, rdir: Path) -> bool:
    """A cached training counts only while its outputs exist: a deleted runs folder is trained again (resuming
    from any checkpoint that is left)."""
    return (Path(config_for(cfg, spec, rdir).output_dir) / "metrics.json").is_file()


def _prepare(t, refresh: bool):
    """Results persist under the project (never ~/.prefect); ``refresh`` recomputes instead of using the cache."""
    return t.with_options(result_storage=results_dir(), refresh_cache=True if refresh else None)


@flow(name="dapl", log_prints=True, task_runner=runners.task_runner())
def dapl(
    kind: str = "full-benchmark",
    dataset: str = "toy",
    root: str | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    preset: str | None = None,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    pair: str | None = None,
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
) -> dict:
    """DAPL benchmark (every pair × zero-shot/source-only/DAPL × seeds) or ablations (prompt settings, M1×M2, τ).

    Args:
        kind: "full-benchmark" or "ablations".
        dataset: toy, office_home, visda2017, domainnet, mini_domainnet, office31 or folder.
        root: dataset folder (default data/<dataset>).
        backbone: open_clip model name (default toy-clip); weights: a file or tag (default: the shipped toy
            checkpoint for toy-clip, else "openai").
        preset: "paper" (default) or "official"; config: a YAML config (e.g. params.yaml) to start from.
        seeds: training seeds (default [1]); epochs: overrides train.epochs.
        pairs: benchmark pairs as "source->target" (default: every ordered pair, or the dataset's tasks);
            methods: default zero_shot, source_only, dapl.
        pair, m1m2, taus: the ablation pair (default data.source->data.target), M1xM2 grid ("8x8"), τ grid.
        overrides: dotted config overrides, e.g. {"train.lr": 0.002, "features.views": 4}.
        sources: local archives/folders for fetching a real dataset; toy: toy world {seed, images_per_class, size}.
        workdir: base of relative paths, runs/, artifacts/, cache/ (default: the project folder).
        tracking_uri: MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db).
        refresh: ignore cached task results and recompute (a finished training is re-read from its final
            checkpoint; delete its runs folder to train it again from scratch).
    """
    log = get_run_logger()
    t0 = time.perf_counter()
    uri = tracking.resolve_uri(tracking_uri)
    tracking.check_tracking(uri)
    exp_id = tracking.ensure_experiment(uri, experiment)
    swept = tracking.sweep_orphans(uri, exp_id)
    if swept:
        log.warning("marked %d MLflow run(s) of killed processes FAILED: %s", len(swept), ", ".join(swept))

    wd = Path(workdir or PROJECT_ROOT).absolute()
    cfg = plan.base_config(dataset, root, backbone, weights, preset, epochs, overrides, config, wd)
    data_root, manifest = str(cfg.data.root), str(cfg.data.manifest)

    _prepare(fetch, refresh)(cfg.data.dataset, data_root, sources, toy)
    idx = _prepare(index, refresh)(cfg.data.dataset, data_root, manifest)
    if not Path(idx["manifest"]).is_file():  # a cached result whose file was deleted since
        idx = _prepare(index, True)(cfg.data.dataset, data_root, manifest)
    pre = cfg.model.pretrained
    if cfg.model.name == "toy-clip" and pre and pre.endswith(".pt") and not Path(pre).is_file():
        _prepare(toy_pretrain, refresh)(pre, None)
        if not Path(pre).is_file():  # cached, but the file was deleted since
            _prepare(toy_pretrain, True)(pre, None)
    weights_sha = _weights_identity(cfg)
    msha = idx["sha256"]

    specs = plan.plan_runs(kind, cfg, idx["domains"], seeds or [1], pairs, methods, pair, m1m2, taus)
    rdir = plan.runs_dir(kind, cfg, wd)
    this_run = str(flow_run.id or "")
    data_tags = tracking.data_tags(data_root, msha)
    tags = {"kind": kind, "dataset": cfg.data.dataset, "code_version": code_version(), **data_tags}
    parent = tracking.start_run(uri, exp_id, f"{kind} {cfg.data.dataset}", {
        **tags, "prefect.flow_run_id": this_run, "pairs": ", ".join(p for p in dict.fromkeys(s.pair for s in specs)),
        "runs_dir": str(rdir)})
    tracking.log_params(uri, parent, {**cfg.flat(), "flow.kind": kind, "flow.seeds": seeds or [1],
                                      "flow.methods": methods, "flow.pairs": pairs, "flow.pair": pair,
                                      "flow.m1m2": m1m2, "flow.taus": taus, "flow.runs": len(specs)})
    track = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "tags": tags}
    log.info("%s on %s: %d runs in %s; MLflow parent run %s (%s)", kind, cfg.data.dataset, len(specs), rdir,
             parent, uri)
    try:
        common = {"manifest": manifest, "manifest_sha": msha, "weights_sha": weights_sha}
        feats = [_prepare(extract_features, refresh).submit(plan.for_pair(cfg, a, b).to_dict(), **common)
                 for a, b in plan.feature_groups(specs)]
        zs = {p: _prepare(zero_shot, refresh).submit(plan.for_pair(cfg, *p).to_dict(), **common, wait_for=feats)
              for p in plan.pairs_of(specs)}
        trains = [_prepare(train_prompts, refresh or not _finished(cfg, s, rdir)).submit(
                      cfg.to_dict(), dataclasses.asdict(s), str(rdir), track=track, wait_for=[zs[(s.source, s.target)]],
                      **common)
                  for s in specs]
        evals = [_prepare(evaluate, refresh).submit(t, track) for t in trains]
        wait(evals)
        failed = [f"{s.pair} {s.method} seed{s.seed}" for s, e in zip(specs, evals, strict=True)
                  if not e.state.is_completed()]  # failed, crashed, or not run (NotReady: upstream failed)
        rows = [e.result() for e in evals if e.state.is_completed()]
        for r in rows:
            r["cached"] = r.get("flow_run_id") != this_run
        zres = [z.result() for z in zs.values() if z.state.is_completed()]
        if not rows:
            raise RuntimeError(f"every run failed: {failed}")
        # runs whose MLflow tracking was lost mid-flow (this run's or an earlier one's): logged again from disk
        replayed, untracked = complete_tracking([config_for(cfg, s, rdir).output_dir for s in specs], track)
        for r in rows:
            r["run_id"] = replayed.get(str(r.get("output_dir")), r.get("run_id"))
        if replayed:
            log.info("logged %d run(s) whose MLflow tracking had been lost, from their files", len(replayed))
        summary = summarise(kind, rows, zres, str(rdir), track)
        cached = sum(1 for r in rows if r["cached"])
        tracking.best_effort("parent tags", tracking.set_tags, uri, parent, {
            "runs_failed": len(failed), "orphans_marked_failed": len(swept), "runs_untracked": len(untracked)})
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(specs)} runs failed: {', '.join(failed)}")
        if untracked:
            raise RuntimeError(
                f"MLflow tracking is missing for {len(untracked)} of {len(specs)} runs; they are trained and their "
                f"results are on disk ({rdir}):\n  " + "\n  ".join(untracked.values()) +
                f"\nMake {uri} reachable and run the same flow again: these runs are logged from their files, "
                "without retraining.")
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FINISHED")
    except BaseException:
        tracking.best_effort("end parent run", tracking.end_run, uri, parent, "FAILED")
        raise
    print(f"\n{kind} on {cfg.data.dataset} ({len(rows)} runs, {cached} from cache, "
          f"{time.perf_counter() - t0:.0f} s):\n{summary['markdown']}\n")
    print(f"tables and plots in {rdir}; MLflow run {parent} in {uri}")
    return {"kind": kind, "runs_dir": str(rdir), "table": summary["markdown"], "files": summary["files"],
            "plots": summary["plots"], "parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri,
            "runs": len(rows), "cached": cached, "orphans_marked_failed": swept}
