"""Frozen-CLIP stages: encode image features once (they are reused by every run), zero-shot pseudo-labels."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from dapl.config import DaplConfig
from tasks.common import clip_bundle, key_fn, load_manifest, refuse_user_errors, run_context

FEATURE_SECTIONS = ("model", "features", "data")
ZERO_SHOT_SECTIONS = ("model", "features", "data", "pseudo")


@task(name="extract-features", cache_key_fn=key_fn(FEATURE_SECTIONS, ("manifest_sha", "weights_sha")),
      persist_result=True)
@refuse_user_errors
def extract_features(cfg: dict, manifest: str, manifest_sha: str, weights_sha: str) -> dict:
    """Test view + V augmented train views of ``cfg.data.source`` and ``cfg.data.target`` into the cache."""
    from dapl.stages import build_task
    from dapl.stages import extract_features as _extract

    c = DaplConfig.model_validate(cfg)
    task = build_task(c, load_manifest(manifest, manifest_sha))  # unusable data fails before weights load
    out = _extract(c, bundle=clip_bundle(c), task=task, progress="log")
    get_run_logger().info("features of %s cached in %s", "+".join(c.data.domains), c.features.cache_dir)
    return {**out, "domains": c.data.domains, **run_context()}


@task(name="zero-shot", cache_key_fn=key_fn(ZERO_SHOT_SECTIONS, ("manifest_sha", "weights_sha")),
      persist_result=True)
@refuse_user_errors
def zero_shot(cfg: dict, manifest: str, manifest_sha: str, weights_sha: str) -> dict:
    """Zero-shot accuracy of the hand-written prompt and pseudo-label coverage/accuracy at τ for one pair."""
    from dapl.stages import build_task
    from dapl.stages import zero_shot as _zero_shot

    c = DaplConfig.model_validate(cfg)
    task = build_task(c, load_manifest(manifest, manifest_sha))  # unusable data fails before weights load
    res = _zero_shot(c, bundle=clip_bundle(c), task=task, progress="log")
    pair = f"{'+'.join(c.data.source)}->{'+'.join(c.data.target)}"
    get_run_logger().info("%s zero-shot %.1f%%, pseudo-labels at tau=%.2f cover %.1f%% (%.1f%% correct)", pair,
                          res.get("target_acc", float("nan")), res["tau"], 100 * res["coverage"],
                          100 * (res["pl_accuracy"] or 0.0))
    return {"pair": pair, **{k: v for k, v in res.items() if k != "metrics"}, **run_context()}
