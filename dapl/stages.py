"""Stage functions shared by the CLI, the Prefect tasks and the DVC stages: one implementation each.

Each takes the one :class:`~dapl.config.DaplConfig` and returns plain data (dicts, paths) that the
orchestration layers can log, hash and cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from dapl.artifacts import format_nearest, nearest_tokens, save_prompts
from dapl.clip import ClipBundle, load_clip
from dapl.config import DaplConfig
from dapl.features import FeatureCache
from dapl.imageset import AdaptationData
from dapl.metrics import target_metrics
from dapl.paths import default_manifest
from dapl.pseudo_labels import labeller_templates, pseudo_label, zero_shot_report, zero_shot_text
from dapl.train import TrainResult, train

SELECTED = "selected"  # the run folder's subfolder holding the prompts of the epoch eval.selection picked


def manifest_path(cfg: DaplConfig) -> Path:
    """Where the dataset's manifest lives: ``data.manifest``, else the one rule of :func:`dapl.paths.default_manifest`
    (``resolve_config`` always sets it; a hand-built config falls back to the rule under the current folder)."""
    if cfg.data.manifest:
        return Path(cfg.data.manifest)
    return default_manifest(cfg.data.dataset, Path(cfg.data.root), Path.cwd())


def load_manifest(cfg: DaplConfig):
    from dapl.datasets.manifest import Manifest

    path = manifest_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest yet. Run `dapl data index {cfg.data.dataset} "
                                f"--root {cfg.data.root} --out {path}` first (or set data.manifest)")
    return Manifest.load(path)


def build_task(cfg: DaplConfig, manifest=None) -> AdaptationData:
    """Source and target image sets of ``cfg.data`` from the dataset manifest.

    Datasets with official train/test splits (DomainNet) adapt on the train splits and evaluate on the
    target test split; the others use the whole target domain for both (the UDA convention).
    """
    m = manifest if manifest is not None else load_manifest(cfg)
    order = cfg.data.domains
    has_split = {"train", "test"} <= set(m.ok["split"].unique().to_list())
    split = "train" if has_split else None
    from dapl.datasets.problems import check_usable

    check_usable(m, cfg.data.source, cfg.data.target, split)  # before any weights load: names domain/class
    source = m.image_set(cfg.data.source, split=split, domain_order=order)
    target = m.image_set(cfg.data.target, split=split, domain_order=order)
    target_test = m.image_set(cfg.data.target, split="test", domain_order=order) if has_split else None
    return AdaptationData(list(m.classes), order, source, target, m.metric, target_test)


def extract_features(cfg: DaplConfig, bundle: ClipBundle | None = None, task: AdaptationData | None = None,
                     progress: str | bool = "auto") -> dict:
    """Encode (or find in the cache) the test view and V train views of every source and target image
    (``progress``: a :mod:`dapl.progress` mode)."""
    task = task or build_task(cfg)  # data problems surface before any weights are loaded
    bundle = bundle or load_clip(cfg.model)
    fc = cfg.features
    cache = FeatureCache.from_config(fc, bundle, progress=progress)
    out = {}
    for name, images in (("source", task.source), ("target", task.target), ("target_test", task.target_test)):
        if images is None:
            continue
        cache.test_features(images, desc=f"{name} test view")
        if fc.mode == "cached" and name != "target_test":
            cache.train_views(images, fc.views, fc, desc=f"{name} views")
        out[name] = {"n": len(images), "fingerprint": images.fingerprint()}
    # the resolved precision is logged by the tracking layer: it is part of every cache key
    return {"model": bundle.identity, "cache_dir": str(fc.cache_dir), "sets": out, "precision": cache.precision,
            "encoder": cache.encoder.recipe, "extraction": cache.stats.to_dict()}


def zero_shot(cfg: DaplConfig, bundle: ClipBundle | None = None, task: AdaptationData | None = None,
              progress: str | bool = "auto") -> dict:
    """Zero-shot accuracy with the hand-written template and pseudo-label coverage/accuracy at τ (the test view
    is encoded, with ``progress``, when the cache lacks it)."""
    task = task or build_task(cfg)  # data problems surface before any weights are loaded
    bundle = bundle or load_clip(cfg.model)
    fc = cfg.features
    cache = FeatureCache.from_config(fc, bundle, progress=progress)
    text = zero_shot_text(bundle, task.classnames, labeller_templates(cfg.pseudo))
    feats = cache.test_features(task.evaluation, desc="target test view").to(bundle.device)
    stats, report = zero_shot_report(task, pseudo_label(feats, text, bundle.logit_scale, cfg.tau))
    out = {"tau": cfg.tau, "coverage": stats["coverage"], "pl_accuracy": stats["accuracy"],
           "metrics": report["metrics"]}
    return out | {k: report[k] for k in ("target_acc", "target_mean_per_class") if k in report}


def adapt(cfg: DaplConfig, on_epoch: Callable[[dict], None] | None = None, bundle: ClipBundle | None = None,
          task: AdaptationData | None = None, progress: str | bool = True, resume: bool = True,
          label: str | None = None) -> dict:
    """Train prompts for ``cfg.data``'s task and write every artifact to ``cfg.output_dir``.

    Writes ``prompts.safetensors`` + ``prompts.json``, ``metrics.json`` (last epoch, label-free selection,
    oracle clearly labelled, zero-shot, pseudo-labels), ``history.csv``, ``nearest_tokens.txt``,
    ``per_class.csv`` and ``confusion.csv``.
    """
    task = task or build_task(cfg)  # data problems surface before any weights are loaded
    bundle = bundle or load_clip(cfg.model)
    res = train(cfg, bundle, task, on_epoch=on_epoch, resume=resume, progress=progress, label=label)
    return write_outputs(cfg, bundle, task, res)


def uses_pseudo_labels(cfg: DaplConfig) -> bool:
    return cfg.pseudo.enabled and cfg.prompt.learned


def no_pseudo_label_warning(cfg: DaplConfig, summary: dict) -> str | None:
    """What to tell a user whose DAPL run had no target image above τ (so it learnt from the source alone)."""
    if not summary.get("no_pseudo_labels"):
        return None
    return (f"warning: no target image passes tau={cfg.tau} (zero-shot pseudo-label coverage 0 %), so this run "
            "trained as source-only prompt learning; lower pseudo.tau (e.g. --set pseudo.tau=0.3)")


def write_outputs(cfg: DaplConfig, bundle: ClipBundle, task: AdaptationData, res: TrainResult) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = res.model.prompts
    save_prompts(out, prompts, cfg, bundle.identity)
    if res.selected_context is not None:  # the label-free choice's epoch, ready to predict with or register
        save_prompts(out / SELECTED, prompts, cfg, bundle.identity, {"epoch": res.selection["epoch"],
                     "criterion": res.selection["criterion"]}, tensors=res.selected_context)
    elif (out / SELECTED).is_dir() and not (out / SELECTED).is_symlink():  # an earlier run's choice: not this one's
        shutil.rmtree(out / SELECTED)
    decoded = nearest_tokens(prompts, bundle) if prompts.cfg.learned else {}
    (out / "nearest_tokens.json").write_text(json.dumps(decoded, indent=1))
    (out / "nearest_tokens.txt").write_text(format_nearest(decoded, top=3) + "\n")
    if res.history:
        pl.DataFrame(res.history).write_csv(out / "history.csv")
    head = res.target_metrics.get("all") or next(iter(res.target_metrics.values()), None)
    if head is not None:
        pl.DataFrame({"class": task.classnames, "accuracy": head.per_class}).write_csv(out / "per_class.csv")
        conf = pl.DataFrame({c: [row[i] for row in head.confusion] for i, c in enumerate(task.classnames)})
        conf.insert_column(0, pl.Series("true", task.classnames)).write_csv(out / "confusion.csv")
    summary = {
        "task": f"{'+'.join(cfg.data.source)}->{'+'.join(cfg.data.target)}",
        "setting": cfg.prompt.setting.value,
        "final": res.final,
        "selection": res.selection,
        "oracle": res.oracle,
        "diverged": res.diverged,
        "validators": res.validators,
        "no_pseudo_labels": uses_pseudo_labels(cfg) and not res.pseudo.get("coverage"),
        "zero_shot": {k: v for k, v in res.zero_shot.items() if k != "metrics"},
        "pseudo_labels": res.pseudo,
        "metrics": {k: m.to_dict() for k, m in res.target_metrics.items()},
        "metric": task.metric,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def predict_cached(cfg: DaplConfig, prompt_dir: str | Path, images, domain_names: list[str],
                   bundle: ClipBundle | None = None):
    """``(predictions, probabilities)`` of saved prompts on ``images`` (an ImageSet whose domain indices point into
    ``domain_names``), each image with its own domain's prompts, from the cached test view (encoded if missing)."""
    import torch

    from dapl.artifacts import load_model, load_prompts

    _, meta = load_prompts(prompt_dir)
    saved = DaplConfig.model_validate(meta["config"])
    bundle = bundle or load_clip(saved.model)
    if meta.get("model_identity") and meta["model_identity"] != bundle.identity:
        raise ValueError(f"{prompt_dir} was trained on {meta['model_identity']}, not {bundle.identity}; "
                         "evaluate with the model it was trained on")
    wanted = sorted({int(d) for d in images.domains})
    missing = [domain_names[d] for d in wanted if domain_names[d] not in meta["domains"]]
    if missing:
        raise ValueError(f"{prompt_dir} has prompts for domains {meta['domains']}, not {missing}")
    model = load_model(prompt_dir, bundle, meta)
    cache = FeatureCache.from_config(cfg.features, bundle)
    feats = cache.test_features(images, desc="target test view").to(bundle.device)
    remap = torch.as_tensor([meta["domains"].index(d) if d in meta["domains"] else -1 for d in domain_names],
                            device=bundle.device)
    pred, probs = model.predict(feats, remap[torch.as_tensor(images.domains, device=bundle.device)])
    return pred.cpu().numpy(), probs.cpu().numpy()


def evaluate_prompts(cfg: DaplConfig, prompt_dir: str | Path, bundle: ClipBundle | None = None,
                     task: AdaptationData | None = None) -> dict:
    """Score saved prompts on ``cfg.data``'s target domains (each image with its own domain's prompts)."""
    task = task or build_task(cfg)  # data problems surface before any weights are loaded
    pred, _ = predict_cached(cfg, prompt_dir, task.evaluation, task.domains, bundle)
    ms = target_metrics(task, pred)
    return {"prompts": str(prompt_dir), "metrics": {k: m.to_dict() for k, m in ms.items()}}
