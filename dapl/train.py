"""Prompt training: source images with labels, target images with zero-shot pseudo-labels above τ.

:func:`train` reads top to bottom: the model, cached features, pseudo-labels, the optimiser, then the epochs
and their steps, then the reported numbers. Each epoch draws its order from ``(seed, epoch)`` alone, so a run
resumed from an epoch checkpoint ends equal to an uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import record_function

from dapl import divergence
from dapl.checkpoint import load_checkpoint, run_identity, save_checkpoint
from dapl.clip import ClipBundle
from dapl.config import DaplConfig, TrainConfig
from dapl.evaluation import EpochScores
from dapl.features import FeatureCache
from dapl.imageset import AdaptationData, ImageSet
from dapl.losses import dapl_loss
from dapl.metrics import Metrics, headline
from dapl.model import DaplModel, normalize
from dapl.progress import Progress
from dapl.pseudo_labels import blend_weight, labeller_templates, pseudo_label, zero_shot_report, zero_shot_text
from dapl.selection import oracle, selected, update_best
from dapl.transforms import train_transform
from dapl.validators import selection_report
from dapl.views import CachedViews, OnlineViews

STEP_STATS = ("loss", "loss_source", "loss_target", "pl_pass", "pl_correct", "pl_seen", "grad_clipped")


@dataclass
class TrainResult:
    model: DaplModel
    history: list[dict]
    final: dict  # metrics of the last epoch (the number to report)
    zero_shot: dict
    selection: dict  # label-free choice: {"criterion", "epoch", ...the epoch's record}
    oracle: dict  # target-label choice, reported only as "oracle"
    pseudo: dict
    target_metrics: dict[str, Metrics] = field(default_factory=dict)
    diverged: dict | None = None  # first epoch whose prompts broke (dapl.divergence)
    validators: dict = field(default_factory=dict)  # per label-free criterion: its epoch, accuracy, regret
    selected_context: dict | None = None  # the context vectors of the label-free choice's epoch (None: last)


@dataclass
class Side:
    """One half of a batch: where its image features come from, and its images' labels and domains."""

    views: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    labels: torch.Tensor
    domains: torch.Tensor

    @classmethod
    def of(cls, views: Callable, images: ImageSet, device: torch.device) -> Side:
        return cls(views, torch.as_tensor(images.labels, device=device),
                   torch.as_tensor(images.domains, device=device))


class TrainStep:
    """One optimisation step: batch features (one cached view per image), zero-shot pseudo-labels for the target
    half, ONE forward of every learned prompt shared by both halves, the loss, backward, SGD and the schedule.

    :func:`train` calls it every iteration and ``bench/step.py`` times it: what is measured is what trains.
    """

    def __init__(self, model: DaplModel, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler | None,
                 tc: TrainConfig, source: Side, target: Side | None = None, zs_text: torch.Tensor | None = None,
                 tau: float = 0.0) -> None:
        self.model, self.opt, self.sched, self.tc = model, opt, sched, tc
        self.source, self.target, self.zs_text, self.tau = source, target, zs_text, tau
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.model_probs: torch.Tensor | None = None  # [N_target, K]: the blend partner of refreshed labels
        self.weight = 0.0

    def blend(self, model_probs: torch.Tensor | None, weight: float) -> None:
        """Pseudo-labels from ``(1 - weight)·p_zero_shot + weight·model_probs`` from now on (0: the paper)."""
        self.model_probs, self.weight = model_probs, weight

    def __call__(self, si: torch.Tensor, ti: torch.Tensor | None, gen: torch.Generator) -> dict[str, float]:
        """Source indices ``si``, target indices ``ti`` (None: source only); ``gen`` draws the views."""
        src, dev = self.source, self.source.labels.device
        out = {"pl_pass": 0.0, "pl_seen": 0.0, "pl_correct": 0.0}
        with record_function("step: batch features + pseudo-labels"):
            src_f = normalize(src.views(si, gen))
            kw = {}
            if ti is not None:
                tgt, t = self.target, ti.to(dev)
                tgt_raw = tgt.views(ti, gen)
                prior = None if self.model_probs is None else self.model_probs[t]
                pl = pseudo_label(tgt_raw, self.zs_text, self.model.logit_scale, self.tau, prior, self.weight)
                kw = {"tgt_img": normalize(tgt_raw), "tgt_dom": tgt.domains[t], "tgt_pl": pl.labels,
                      "tgt_mask": pl.mask}
                out["pl_pass"], out["pl_seen"] = float(pl.mask.sum()), float(len(ti))
                out["pl_correct"] = float(((pl.labels == tgt.labels[t]) & pl.mask & (tgt.labels[t] >= 0)).sum())
        with record_function("step: prompt encoder forward"):
            text = self.model.text_features(self.tc.text_chunk)
        with record_function("step: loss"):
            s = si.to(dev)
            loss, parts = dapl_loss(text, self.model.logit_scale, src_f, src.domains[s], src.labels[s],
                                    kind=self.tc.loss, **kw)
        with record_function("step: backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("step: optimizer"):
            if self.tc.max_grad_norm:
                norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.tc.max_grad_norm))
                out["grad_clipped"] = float(norm > self.tc.max_grad_norm)
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
        return {"loss": float(loss.detach()), "loss_source": float(parts["loss_source"]),
                "loss_target": float(parts["loss_target"]), **out}


# -- setup helpers ------------------------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int, warmup_ratio: float) -> float:
    """Linear warm-up from ``warmup_ratio`` then cosine to 0 over the whole run (per step, no restarts)."""
    if warmup and step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: DaplModel, tc: TrainConfig, iters: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD on the context vectors, with the per-step warm-up + cosine schedule over ``iters × epochs`` steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    total, ratio = iters * tc.epochs, tc.warmup_lr / tc.lr
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, tc.warmup_iters, ratio))


def load_features(cfg: DaplConfig, bundle: ClipBundle, data: AdaptationData, progress: str | bool
                  ) -> tuple[Callable, Callable, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Train-view samplers of both sides, the test-view features of the source and evaluation images, and of
    the target's adaptation images when refreshed pseudo-labels need them (None otherwise)."""
    fc, dev = cfg.features, bundle.device
    cache = FeatureCache.from_config(fc, bundle, progress=progress)
    src_test = cache.test_features(data.source, desc="source test view").to(dev)
    tgt_test = cache.test_features(data.evaluation, desc="target test view").to(dev)
    if fc.mode == "cached":
        s = CachedViews(cache.train_views(data.source, fc.views, fc, desc="source views"), dev)
        t = CachedViews(cache.train_views(data.target, fc.views, fc, desc="target views"), dev)
    else:
        tf = train_transform(bundle, fc)
        s, t = OnlineViews(bundle, data.source, tf), OnlineViews(bundle, data.target, tf)
    if cfg.pseudo.refresh == "none":
        return s, t, src_test, tgt_test, None
    own = tgt_test if data.target_test is None else cache.test_features(data.target, desc="target adaptation view")
    return s, t, src_test, tgt_test, own.to(dev)


def split_source(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` source indices; held-out images serve only the ``source_val`` selection criterion."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def target_batch(order: torch.Tensor | None, it: int, size: int) -> torch.Tensor | None:
    """The ``it``-th target batch of an epoch's order; the target side cycles when it is the shorter one."""
    if order is None:
        return None
    pos = (it * size) % len(order)
    ti = order[pos:pos + size]
    return torch.cat([ti, order[:size - len(ti)]]) if len(ti) < size else ti


def epoch_record(epoch: int, lr: float, sums: dict, iters: int, scores: dict, clipping: bool,
                 labelled_target: bool) -> dict:
    """One row of ``history.csv``: the epoch's mean step figures and its end-of-epoch scores."""
    rec = {"epoch": epoch + 1, "lr": lr, **{k: sums[k] / iters for k in STEP_STATS[:3]},
           **{k: v for k, v in scores.items() if k.startswith("target_")}}
    if clipping:
        rec["grad_clipped"] = sums["grad_clipped"] / iters  # share of this epoch's steps that were clipped
    if sums["pl_seen"]:
        rec["pl_coverage"] = sums["pl_pass"] / sums["pl_seen"]
        if labelled_target and sums["pl_pass"]:
            rec["pl_accuracy"] = sums["pl_correct"] / sums["pl_pass"]
    return rec | {k: v for k, v in scores.items() if not k.startswith("target_")}


def _bar(cfg: DaplConfig, iters: int, start: int, progress: str | bool, label: str | None) -> Progress:
    tc, d, left = cfg.train, cfg.data, cfg.train.epochs - start
    ahead = f"{left * iters:,} steps ({left} epoch{'s' if left != 1 else ''} × {iters:,})"
    desc = f"train {'+'.join(d.source)}->{'+'.join(d.target)}{f' {label}' if label else ''} seed {tc.seed}"
    return Progress(iters * tc.epochs, desc, "it", initial=start * iters, mode=progress, ahead=ahead)


@torch.no_grad()
def _text(model: DaplModel, tc: TrainConfig) -> torch.Tensor:
    return model.text_features(tc.text_chunk)


# -- the loop ---------------------------------------------------------------------------------------------
def train(cfg: DaplConfig, bundle: ClipBundle, data: AdaptationData, on_epoch: Callable[[dict], None] | None = None,
          resume: bool = True, progress: str | bool = True, label: str | None = None) -> TrainResult:
    """Train prompts for one adaptation problem as ``cfg`` says (the one implementation every layer calls).

    ``label`` names the run in progress lines (a sweep's runs train side by side: ``dapl``, ``m1m2:4x8``).

    Every draw comes from a generator seeded with ``train.seed``; torch's global RNG is neither read nor reseeded
    (other threads of a flow, and the caller, own it).
    """
    tc, dev, out, K = cfg.train, bundle.device, Path(cfg.output_dir), len(data.classnames)
    model = DaplModel(bundle, data.classnames, data.domains, cfg.prompt, cfg.pseudo.template)
    model.prompts.reset_parameters(tc.seed)
    src_views, tgt_views, src_test, tgt_test, tgt_own = load_features(cfg, bundle, data, progress)
    zs_text = zero_shot_text(bundle, data.classnames, labeller_templates(cfg.pseudo))
    zs = pseudo_label(tgt_test, zs_text, model.logit_scale, cfg.tau)
    pseudo, zero_shot = zero_shot_report(data, zs)
    train_idx, val_idx = split_source(len(data.source), cfg.eval.source_val_fraction, tc.seed)
    scores = EpochScores(data, tgt_test, src_test, val_idx, zs, tc.loss)
    if not model.learnable:  # the manual prompt: the zero-shot classifier, nothing to train
        ms = scores.target(model, _text(model, tc))[0]
        rec = {"epoch": 0, **headline(ms, data.metric)}
        return TrainResult(model, [rec], rec, zero_shot, {"criterion": "last", "epoch": 0, **rec},
                           {"epoch": 0, **rec}, pseudo, ms)

    iters = max(1, len(train_idx) // tc.batch_source)
    opt, sched = make_optimizer(model, tc, iters)
    step = TrainStep(model, opt, sched, tc, Side.of(src_views, data.source, dev),
                     Side.of(tgt_views, data.target, dev), zs_text, cfg.tau)
    probe = divergence.SourceProbe(src_test, data.source)
    probe_init = probe(model, _text(model, tc))  # the freshly initialised prompts, before any resume
    identity, history, best, diverged, start = run_identity(cfg, bundle.identity, data), [], None, None, 0
    target_probs = None  # the target prompts' probabilities at the last relabelling (refresh)
    if ck := load_checkpoint(out, identity, resume):
        model.prompts.load_context(ck["context"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, best, diverged, start = list(ck["history"]), ck["best"], ck.get("diverged"), int(ck["epoch"])
        target_probs = ck.get("target_probs")
    use_target, labelled_target = cfg.pseudo.enabled and len(data.target) > 0, bool((data.target.labels >= 0).all())
    ms: dict[str, Metrics] = {}

    with _bar(cfg, iters, start, progress, label) as bar:
        for epoch in range(start, tc.epochs):
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)  # (seed, epoch) alone: exact resume
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            torder = torch.randperm(len(data.target), generator=gen) if use_target else None
            w = blend_weight(cfg.pseudo, epoch, tc.epochs)
            if w and (epoch % cfg.pseudo.refresh_every == 0 or target_probs is None):  # relabel: one product
                target_probs = model.predict(tgt_own, step.target.domains, _text(model, tc))[1]
            step.blend(target_probs, w)
            sums = dict.fromkeys(STEP_STATS, 0.0)
            for it in range(iters):
                si = order[it * tc.batch_source:(it + 1) * tc.batch_source]
                for k, v in step(si, target_batch(torder, it, tc.batch_target), gen).items():
                    sums[k] += v
                bar.update()

            text = _text(model, tc)
            epoch_scores, ms = scores(model, text)
            rec = epoch_record(epoch, opt.param_groups[0]["lr"], sums, iters, epoch_scores, bool(tc.max_grad_norm),
                               labelled_target)
            rec["probe_source_loss"], rec["probe_source_acc"] = probe(model, text)
            if cfg.pseudo.refresh != "none":
                rec["pl_weight"] = w
            broke = divergence.check(rec, probe_init, K)
            if broke and diverged is None:
                diverged = broke
                divergence.warn(str(out), rec, broke, K)
            history.append(rec)
            best = update_best(best, rec, cfg.eval.selection, model)
            if on_epoch:
                on_epoch(dict(rec))
            if tc.checkpoint_every and ((epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs):
                save_checkpoint(out, {"epoch": epoch + 1, "digest": identity,
                                      "context": model.prompts.context_tensors(), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict(), "history": history, "best": best,
                                      "diverged": diverged, "target_probs": target_probs})
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('target_acc', float('nan')):.1f}")

    ms = ms or scores.target(model, _text(model, tc))[0]
    final = history[-1] if history else {}
    choice = selected(best, final, cfg.eval.selection)
    chosen = best["context"] if best and choice["epoch"] != final.get("epoch") else None
    return TrainResult(model, history, final, zero_shot, choice, oracle(history), pseudo, ms, diverged,
                       selection_report(history), chosen)
