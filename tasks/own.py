"""`dapl adapt` as flow stages: index your own folders (and check the labelled sample), then the label-free report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.common import file_sha256, refuse_user_errors, run_context


@task(name="index-own-data", cache_policy=NO_CACHE)
@refuse_user_errors
def index_own(source: str, target: str, out: str, labelled_sample: str | None = None) -> dict:
    """Verify every image of your folders into the manifest ``out``; a bad labelled sample fails here, before any
    training (indexing is re-done each run: a folder of your own changes more often than a release)."""
    from dapl.own_data import index_own_data, read_labelled_sample

    m = index_own_data(source, target, progress="log")
    if labelled_sample:
        read_labelled_sample(labelled_sample, m, target)
    m.save(out)
    get_run_logger().info("manifest %s: %d usable images (%d classes; the target unlabelled), %d excluded", out,
                          m.n_ok, len(m.classes), len(m.df) - m.n_ok)
    return {"manifest": str(out), "sha256": file_sha256(out), "domains": list(m.domains),
            "classes": list(m.classes), "n_ok": m.n_ok, "excluded": len(m.df) - m.n_ok, **run_context()}


@task(name="adapt-report", cache_policy=NO_CACHE)
@refuse_user_errors
def adapt_report(cfg: dict, runs: list, rows: list[dict], source: str, target: str,
                 labelled_sample: str | None, out_dir: str) -> dict:
    """The label-free report of the finished runs (:func:`dapl.adapt_own.build_report`), written to ``out_dir``."""
    from dapl.adapt_own import build_report, format_report, write_report
    from dapl.config import DaplConfig
    from dapl.own_data import read_labelled_sample
    from dapl.stages import build_task, load_manifest

    run_cfg = DaplConfig.model_validate(cfg)
    manifest = load_manifest(run_cfg)
    sample = read_labelled_sample(labelled_sample, manifest, target) if labelled_sample else None
    by_run = {(r["method"], r["seed"]): r for r in rows}
    report = build_report(runs, [by_run[r.spec.label, r.spec.seed] for r in runs], build_task(run_cfg, manifest),
                          sample, source, target)
    files = write_report(report, Path(out_dir))
    text = format_report(report)
    get_run_logger().info("adapt report (%s):\n%s", files[1], text)
    return {"report": report, "markdown": text, "files": [str(f) for f in files]}
