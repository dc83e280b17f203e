"""Prompt training: source images with labels, target images with zero-shot pseudo-labels above τ.

A step encodes every learned prompt once (shared by the source and target halves of the batch) and scores
cached image features against them; evaluation each epoch is one matrix product over cached test features.
Each epoch draws its order from ``(seed, epoch)`` alone, so a run resumed from an epoch checkpoint ends
bit-equal to an uninterrupted one on the same machine with the same thread count (float sums depend on both).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from dapl.config import DaplConfig
from dapl.datasets.loader import load_rgb, seeded
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from dapl.losses import clip_logits, dapl_loss
from dapl.metrics import Metrics, classification_metrics
from dapl.models import ClipBundle, train_transform
from dapl.progress import Progress
from dapl.prompts import PromptLearner
from dapl.pseudo_labels import pseudo_label, zero_shot_text

CHECKPOINT = "checkpoint.pt"
DIVERGENCE_SHARE = 0.5  # share of the untrained prompts' source accuracy above chance that a broken run has lost
_PROBE = 4096  # source images (a fixed subset) on which the divergence check scores the prompts
log = logging.getLogger("dapl.train")
TRAIN_SECTIONS = ("model", "prompt", "pseudo", "features", "train", "eval", "data")


@dataclass
class AdaptationTask:
    """Classes, domains (sources first, then targets) and the images of each side."""

    classnames: list[str]
    domains: list[str]
    source: ImageSet
    target: ImageSet  # unlabelled adaptation images (labels, if any, are used for reporting only)
    metric: str = "accuracy"  # or "mean_per_class" (VisDA)
    target_test: ImageSet | None = None  # evaluation images when the dataset has a target test split

    @property
    def evaluation(self) -> ImageSet:
        """UDA convention: the target set is also the test set, unless a separate test split is given."""
        return self.target if self.target_test is None else self.target_test

    @property
    def target_domains(self) -> list[int]:
        return sorted({int(d) for d in self.target.domains})


# -- where batch features come from ------------------------------------------------------------------
class CachedViews:
    """Features of V cached augmented views; a batch takes one random view per image.

    ``views`` is a ``[V, N, E]`` tensor, or a sequence of V ``[N, E]`` arrays (memory maps of the cache): on the
    CPU those stay on disk and a batch reads only its rows (DomainNet's 8 views are ~9.6 GB); on a GPU they are
    copied there view by view. Both forms draw the same views and return the same numbers.
    """

    def __init__(self, views: torch.Tensor | list[np.ndarray], device: torch.device):
        self.arrays: list[np.ndarray] | None = None
        if isinstance(views, torch.Tensor):
            self.views = views.to(device)  # [V, N, E] fp16
        elif device.type == "cpu":
            self.arrays = list(views)
        else:
            first = np.asarray(views[0])
            self.views = torch.empty((len(views), *first.shape), dtype=torch.from_numpy(first[:0]).dtype,
                                     device=device)
            for k, a in enumerate(views):
                self.views[k].copy_(torch.from_numpy(np.ascontiguousarray(a)))

    @property
    def num_views(self) -> int:
        return len(self.arrays) if self.arrays is not None else self.views.shape[0]

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        v = torch.randint(self.num_views, (len(idx),), generator=gen)
        if self.arrays is None:
            return self.views[v.to(self.views.device), idx.to(self.views.device)].float()
        rows, vs = idx.cpu().numpy(), v.numpy()
        out = np.empty((len(rows), self.arrays[0].shape[1]), self.arrays[0].dtype)
        for k in np.unique(vs):
            sel = vs == k
            out[sel] = self.arrays[k][rows[sel]]
        return torch.from_numpy(out).float()


class OnlineViews:
    """The released code's way: load, augment and encode the batch's images on every step."""

    def __init__(self, bundle: ClipBundle, images: ImageSet, transform: Callable):
        self.bundle, self.images, self.transform = bundle, images, transform

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        g = seeded(int(torch.randint(2**62, (1,), generator=gen)))  # one private stream for the batch
        x = torch.stack([self.transform(load_rgb(self.images.resolve(int(i))), generator=g) for i in idx])
        return self.bundle.encode_images(x)


# -- results --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    learner: PromptLearner
    history: list[dict]
    final: dict  # metrics of the last epoch (the number to report)
    zero_shot: dict
    selection: dict  # label-free choice: {"criterion", "epoch", "metrics"}
    oracle: dict  # target-label choice, reported only as "oracle"
    pseudo: dict
    target_metrics: dict[str, Metrics] = field(default_factory=dict)
    diverged: dict | None = None  # first epoch whose prompts scored worse than at init (see Trainer._divergence)


def lr_factor(step: int, total: int, warmup: int, warmup_ratio: float) -> float:
    """Linear warm-up from ``warmup_ratio`` then cosine to 0 over the whole run (per step, no restarts)."""
    if warmup and step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _normalized_text(learner: PromptLearner, chunk: int) -> torch.Tensor:
    return F.normalize(learner.text_features(chunk=chunk), dim=-1)


def predict_own_domain(img: torch.Tensor, dom: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                       batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and softmax over each image's own-domain prompts (target images: target prompts)."""
    preds, probs = [], []
    for i in range(0, img.shape[0], batch):
        p = clip_logits(F.normalize(img[i:i + batch].float(), dim=-1), text, scale, dom[i:i + batch])
        p = p.softmax(-1)
        probs.append(p)
        preds.append(p.argmax(-1))
    return torch.cat(preds), torch.cat(probs)


def target_metrics(task: AdaptationTask, pred: np.ndarray) -> dict[str, Metrics]:
    """Per target domain (and ``"all"`` when there are several); empty without target labels."""
    y, dom = task.evaluation.labels, task.evaluation.domains
    if (y < 0).any():
        return {}
    K = len(task.classnames)
    out = {task.domains[d]: classification_metrics(pred[dom == d], y[dom == d], K) for d in task.target_domains}
    if len(out) > 1:
        out["all"] = classification_metrics(pred, y, K)
    return out


def _headline(ms: dict[str, Metrics], metric: str) -> dict[str, float]:
    if not ms:
        return {}
    m = ms.get("all") or next(iter(ms.values()))
    return {"target_acc": m.accuracy, "target_mean_per_class": m.mean_per_class,
            "target_metric": m.headline(metric)}


# -- one step ---------------------------------------------------------------------------------------------
class TrainStep:
    """One optimisation step: batch features (one cached view per image), zero-shot pseudo-labels for the target
    half, ONE forward of every learned prompt shared by both halves, the loss, backward, SGD (and the schedule).

    The trainer calls it every iteration and ``bench/step.py`` times it: what is measured is what trains.
    """

    def __init__(self, learner: PromptLearner, opt: torch.optim.Optimizer, scale: torch.Tensor, loss: str,
                 chunk: int, src_views: Callable, src_y: torch.Tensor, src_d: torch.Tensor,
                 tgt_views: Callable | None = None, tgt_d: torch.Tensor | None = None,
                 zs_text: torch.Tensor | None = None, tau: float = 0.0, tgt_y: torch.Tensor | None = None,
                 sched: torch.optim.lr_scheduler.LRScheduler | None = None, max_grad_norm: float = 0.0) -> None:
        self.learner, self.opt, self.sched, self.scale, self.loss, self.chunk = learner, opt, sched, scale, loss, chunk
        self.max_grad_norm = max_grad_norm
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.src_views, self.src_y, self.src_d = src_views, src_y, src_d
        self.tgt_views, self.tgt_d, self.zs_text, self.tau, self.tgt_y = tgt_views, tgt_d, zs_text, tau, tgt_y

    def __call__(self, si: torch.Tensor, ti: torch.Tensor | None, gen: torch.Generator) -> dict[str, float]:
        """Source indices ``si``, target indices ``ti`` (None: source only); ``gen`` draws the views."""
        dev = self.src_y.device
        out = {"pl_pass": 0.0, "pl_seen": 0.0, "pl_correct": 0.0}
        with record_function("step: batch features + pseudo-labels"):
            src_f = F.normalize(self.src_views(si, gen), dim=-1)
            kw = {}
            if ti is not None:
                tgt_raw = self.tgt_views(ti, gen)
                pl = pseudo_label(tgt_raw, self.zs_text, self.scale, self.tau)
                kw = {"tgt_img": F.normalize(tgt_raw, dim=-1), "tgt_dom": self.tgt_d[ti.to(dev)],
                      "tgt_pl": pl.labels, "tgt_mask": pl.mask}
                out["pl_pass"], out["pl_seen"] = float(pl.mask.sum()), float(len(ti))
                if self.tgt_y is not None:
                    ty = self.tgt_y[ti.to(dev)]
                    out["pl_correct"] = float(((pl.labels == ty) & pl.mask & (ty >= 0)).sum())
        with record_function("step: prompt encoder forward"):
            text = _normalized_text(self.learner, self.chunk)
        with record_function("step: loss"):
            loss, parts = dapl_loss(text, self.scale, src_f, self.src_d[si.to(dev)], self.src_y[si.to(dev)],
                                    kind=self.loss, **kw)
        with record_function("step: backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("step: optimizer"):
            if self.max_grad_norm:
                norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
                out["grad_clipped"] = float(norm > self.max_grad_norm)
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
        return {"loss": float(loss.detach()), "loss_source": float(parts["loss_source"]),
                "loss_target": float(parts["loss_target"]), **out}


# -- the trainer ------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything one training run carries from epoch to epoch (made by :meth:`Trainer.setup`)."""

    learner: PromptLearner
    src_test: torch.Tensor
    tgt_test: torch.Tensor
    zs: Any  # PseudoLabels of the target test view at tau
    zero_shot: dict
    pseudo: dict
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    step: TrainStep | None = None  # None: the manual prompt, nothing to learn
    opt: torch.optim.Optimizer | None = None
    sched: Any = None
    iters: int = 0
    start: int = 0  # first epoch to train (after a resumed checkpoint)
    use_tgt: bool = False
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # label-free selection
    probe: torch.Tensor | None = None  # source images of the divergence check
    probe_init: tuple[float, float] = (float("nan"), float("nan"))  # (loss, accuracy) of the untrained prompts
    diverged: dict | None = None
    metrics: dict[str, Metrics] = field(default_factory=dict)  # the last evaluation


class Trainer:
    """``run`` = ``setup``, then ``epoch`` for each epoch (``TrainStep`` per iteration), then ``finish``."""

    def __init__(self, cfg: DaplConfig, bundle: ClipBundle, task: AdaptationTask,
                 on_epoch: Callable[[dict], None] | None = None, progress: str | bool = True):
        self.cfg, self.bundle, self.task = cfg, bundle, task
        self.on_epoch = on_epoch
        self.progress = progress  # a dapl.progress mode (True: auto, False: off)
        self.dev = bundle.device
        self.scale = bundle.logit_scale.to(self.dev)
        self.out = Path(cfg.output_dir)
        fc = cfg.features
        self.cache = FeatureCache.from_config(fc, bundle, progress=progress)

    # features -------------------------------------------------------------------------------------------
    def _sources(self) -> tuple[Callable, Callable, torch.Tensor, torch.Tensor]:
        fc = self.cfg.features
        src, tgt = self.task.source, self.task.target
        src_test = self.cache.test_features(src, desc="source test view").to(self.dev)
        tgt_test = self.cache.test_features(self.task.evaluation, desc="target test view").to(self.dev)
        if fc.mode == "cached":
            s = CachedViews(self.cache.train_views(src, fc.views, fc, desc="source views"), self.dev)
            t = CachedViews(self.cache.train_views(tgt, fc.views, fc, desc="target views"), self.dev)
        else:
            tf = train_transform(self.bundle, fc)
            s, t = OnlineViews(self.bundle, src, tf), OnlineViews(self.bundle, tgt, tf)
        return s, t, src_test, tgt_test

    # evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, text: torch.Tensor, tgt_test: torch.Tensor) -> tuple[dict[str, Metrics], np.ndarray]:
        dom = torch.as_tensor(self.task.evaluation.domains, device=self.dev)
        pred, _ = predict_own_domain(tgt_test, dom, text, self.scale)
        pred = pred.cpu().numpy()
        return target_metrics(self.task, pred), pred

    # the run --------------------------------------------------------------------------------------------
    def run(self, resume: bool = True) -> TrainResult:
        st = self.setup(resume)
        if st.step is not None:
            epochs = self.cfg.train.epochs
            left = epochs - st.start
            ahead = f"{left * st.iters:,} steps ({left} epoch{'s' if left != 1 else ''} × {st.iters:,})"
            d = self.cfg.data
            desc = f"train {'+'.join(d.source)}->{'+'.join(d.target)} seed {self.cfg.train.seed}"
            with Progress(st.iters * epochs, desc, "it", initial=st.start * st.iters, mode=self.progress,
                          ahead=ahead) as bar:
                for epoch in range(st.start, epochs):
                    rec = self.epoch(st, epoch, on_step=bar.update)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('target_acc', float('nan')):.1f}")
        return self.finish(st)

    def setup(self, resume: bool = True) -> TrainState:
        """Learner, cached features, zero-shot pseudo-labels, source split, optimiser; resume a checkpoint."""
        cfg, task, dev = self.cfg, self.task, self.dev
        tc = cfg.train
        # every draw below comes from a generator seeded with tc.seed; torch's global RNG is neither read nor
        # reseeded (other threads of a flow, and the caller, own it)
        learner = PromptLearner(self.bundle, task.classnames, task.domains, cfg.prompt, cfg.pseudo.template)
        learner.reset_parameters(tc.seed)
        src_views, tgt_views, src_test, tgt_test = self._sources()

        zs_text = zero_shot_text(self.bundle, task.classnames, cfg.pseudo.template)
        zs = pseudo_label(tgt_test, zs_text, self.scale, cfg.tau)
        zs_metrics = target_metrics(task, zs.labels.cpu().numpy())
        pseudo_stats = {"tau": cfg.tau, "coverage": zs.coverage(), "accuracy": zs.accuracy(task.evaluation.labels)}
        zero_shot = {"metrics": {k: m.to_dict() for k, m in zs_metrics.items()}, **_headline(zs_metrics, task.metric)}

        # source split: held-out images only for the label-free source-validation criterion
        n_src = len(task.source)
        perm = torch.randperm(n_src, generator=torch.Generator().manual_seed(tc.seed))
        n_val = int(round(cfg.eval.source_val_fraction * n_src))
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        st = TrainState(learner, src_test, tgt_test, zs, zero_shot, pseudo_stats, train_idx, val_idx)
        params = [p for p in learner.parameters() if p.requires_grad]
        if not params:  # manual prompt: nothing to learn, finish() evaluates the zero-shot classifier
            return st

        st.opt = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        st.iters = max(1, len(train_idx) // tc.batch_source)
        total, ratio = st.iters * tc.epochs, tc.warmup_lr / tc.lr
        st.sched = torch.optim.lr_scheduler.LambdaLR(st.opt, lambda s: lr_factor(s, total, tc.warmup_iters, ratio))
        gen = torch.Generator().manual_seed(0)  # the same probe images for every seed
        st.probe = torch.randperm(len(task.source), generator=gen)[:_PROBE].sort().values
        st.probe_init = self._probe(learner, st)  # the freshly initialised prompts (before any resume)
        st.start = self._maybe_resume(resume, st)
        st.use_tgt = cfg.pseudo.enabled and len(task.target) > 0
        st.step = TrainStep(learner, st.opt, self.scale, tc.loss, tc.text_chunk, src_views,
                            torch.as_tensor(task.source.labels, device=dev),
                            torch.as_tensor(task.source.domains, device=dev), tgt_views,
                            torch.as_tensor(task.target.domains, device=dev), zs_text, cfg.tau,
                            torch.as_tensor(task.target.labels, device=dev), st.sched, tc.max_grad_norm)
        return st

    def epoch(self, st: TrainState, epoch: int, on_step: Callable[[], None] | None = None) -> dict:
        """One pass over the source images (the target side cycles), then evaluation, selection, checkpoint."""
        tc, n_tgt = self.cfg.train, len(self.task.target)
        bs, bt = tc.batch_source, tc.batch_target
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)  # (seed, epoch) alone: bit-equal resume
        order = st.train_idx[torch.randperm(len(st.train_idx), generator=gen)]
        torder = torch.randperm(n_tgt, generator=gen) if st.use_tgt else None
        sums = dict.fromkeys(("loss", "loss_source", "loss_target", "pl_pass", "pl_correct", "pl_seen", "grad_clipped"),
                             0.0)
        for it in range(st.iters):
            ti = None
            if torder is not None:
                pos = (it * bt) % len(torder)
                ti = torder[pos:pos + bt]
                if len(ti) < bt:  # the target side cycles
                    ti = torch.cat([ti, torder[:bt - len(ti)]])
            for k, v in st.step(order[it * bs:(it + 1) * bs], ti, gen).items():
                sums[k] += v
            if on_step:
                on_step()
        rec = self._end_epoch(epoch, st.learner, sums, st.iters, st.tgt_test, st.src_test, st.val_idx, st.zs, st.opt)
        st.metrics = rec.pop("_metrics")
        rec["probe_source_loss"], rec["probe_source_acc"] = self._probe(st.learner, st)
        self._divergence(rec, st)
        st.history.append(rec)
        self._select(rec, st)
        if self.on_epoch:
            self.on_epoch(dict(rec))
        last = epoch + 1 == tc.epochs
        if tc.checkpoint_every and ((epoch + 1) % tc.checkpoint_every == 0 or last):
            self._checkpoint(epoch + 1, st)
        return rec

    def finish(self, st: TrainState) -> TrainResult:
        """The reported numbers: last epoch, the label-free selection, the oracle (labelled as such)."""
        learner, tc = st.learner, self.cfg.train
        if st.step is None:  # the manual prompt
            ms, _ = self._evaluate(_normalized_text(learner, tc.text_chunk).detach(), st.tgt_test)
            rec = {"epoch": 0, **_headline(ms, self.task.metric)}
            return TrainResult(learner, [rec], rec, st.zero_shot, {"criterion": "last", "epoch": 0, **rec},
                               {"epoch": 0, **rec}, st.pseudo, ms)
        ms = st.metrics or self._evaluate(_normalized_text(learner, tc.text_chunk).detach(), st.tgt_test)[0]
        history = st.history
        final = history[-1] if history else {}
        oracle = max(history, key=lambda r: r.get("target_metric", -1.0)) if history else {}
        best = st.best or {"epoch": final.get("epoch"), "score": None, "record": final}
        selection = {"criterion": self.cfg.eval.selection, "epoch": best["epoch"], **best["record"]}
        return TrainResult(learner, history, final, st.zero_shot, selection,
                           {"epoch": oracle.get("epoch"), "label": "oracle (selected with target labels)",
                            **{k: v for k, v in oracle.items() if k.startswith("target")}},
                           st.pseudo, ms, st.diverged)

    # divergence -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _probe(self, learner: PromptLearner, st: TrainState) -> tuple[float, float]:
        """Class-only loss and accuracy (K-way, over each image's own-domain prompts) of the current prompts on a
        fixed subset of source test-view features: label-free for the target, it uses only the source labels the
        method trains on. K-way, not the training loss: prompts that stop reading the class name are at chance here
        whatever their domain terms do."""
        i = st.probe.to(self.dev)
        f = F.normalize(st.src_test[i].float(), dim=-1)
        d = torch.as_tensor(self.task.source.domains, device=self.dev)[i]
        y = torch.as_tensor(self.task.source.labels, device=self.dev)[i]
        logits = clip_logits(f, _normalized_text(learner, self.cfg.train.text_chunk), self.scale, d)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())

    def _divergence(self, rec: dict, st: TrainState) -> None:
        """Say so when training broke the prompts: a non-finite loss, or a source probe accuracy (``_probe``) that
        lost more than ``DIVERGENCE_SHARE`` of what the untrained prompts had above chance (1/K). Measured on the
        toy: prompts thrown by a loss spike out of the region where the text tower reads the class name drop to
        near chance in their first epoch; healthy runs end far above their start, and prompts already
        near-perfect at init (product) lose a few points at most while training on small crops. The loss is not
        the criterion: untrained prompts are right but unsure, so their loss is already near log K. Untrained
        prompts below twice chance (a random model) have nothing to lose: only a non-finite loss counts then."""
        acc, init = rec["probe_source_acc"], st.probe_init[1]
        chance = 1.0 / len(self.task.classnames)
        floor = init - DIVERGENCE_SHARE * (init - chance) if init >= 2 * chance else 0.0
        finite = math.isfinite(rec["loss"]) and math.isfinite(rec["probe_source_loss"])
        bad = not finite or acc < floor
        rec["diverged"] = bool(bad)
        if bad and st.diverged is None:
            st.diverged = {"epoch": rec["epoch"], "source_acc": acc, "source_acc_init": init, "floor": floor,
                           "source_loss": rec["probe_source_loss"], "source_loss_init": st.probe_init[0]}
            what = ("the loss is not finite" if not finite else
                    f"the prompts classify {100 * acc:.1f} % of the source probe images (untrained: {100 * init:.1f} "
                    f"%, chance {100 * chance:.1f} %): they no longer tell the classes apart")
            log.warning("%s: training diverged at epoch %d: %s (lower train.lr or set train.max_grad_norm); the run "
                        "goes on and is marked diverged", self.out, rec["epoch"], what)

    @torch.no_grad()
    def _end_epoch(self, epoch: int, learner: PromptLearner, sums: dict, iters: int, tgt_test: torch.Tensor,
                   src_test: torch.Tensor, val_idx: torch.Tensor, zs, opt) -> dict:
        text = _normalized_text(learner, self.cfg.train.text_chunk)
        ms, pred = self._evaluate(text, tgt_test)
        rec = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
               "loss": sums["loss"] / iters, "loss_source": sums["loss_source"] / iters,
               "loss_target": sums["loss_target"] / iters, **_headline(ms, self.task.metric)}
        if self.cfg.train.max_grad_norm:
            rec["grad_clipped"] = sums["grad_clipped"] / iters  # share of this epoch's steps that were clipped
        if sums["pl_seen"]:
            rec["pl_coverage"] = sums["pl_pass"] / sums["pl_seen"]
            if (self.task.target.labels >= 0).all() and sums["pl_pass"]:
                rec["pl_accuracy"] = sums["pl_correct"] / sums["pl_pass"]
        if bool(zs.mask.any()):
            agree = torch.as_tensor(pred, device=zs.labels.device)[zs.mask] == zs.labels[zs.mask]
            rec["pl_agreement"] = float(agree.float().mean())
        if len(val_idx):
            vi = val_idx.to(self.dev)
            f = F.normalize(src_test[vi].float(), dim=-1)
            d = torch.as_tensor(self.task.source.domains, device=self.dev)[vi]
            y = torch.as_tensor(self.task.source.labels, device=self.dev)[vi]
            _, parts = dapl_loss(text, self.scale, f, d, y, kind=self.cfg.train.loss)
            rec["source_val_loss"] = float(parts["loss_source"])
        rec["_metrics"] = ms
        return rec

    def _select(self, rec: dict, st: TrainState) -> None:
        crit = self.cfg.eval.selection
        if crit == "last":
            return
        key, sign = ("source_val_loss", -1.0) if crit == "source_val" else ("pl_agreement", 1.0)
        if key not in rec:
            return
        score = sign * rec[key]
        if st.best is None or score > st.best["score"]:
            st.best = {"epoch": rec["epoch"], "score": score, "record": dict(rec),
                       "context": copy.deepcopy(st.learner.context_tensors())}

    # checkpoints ----------------------------------------------------------------------------------------
    def _run_identity(self) -> str:
        """What a checkpoint may be resumed into: the configuration, plus the weights' identity and the images'
        fingerprints (the same config path can point at a retrained checkpoint or a regenerated dataset)."""
        t = self.task
        parts = [self.cfg.digest(*TRAIN_SECTIONS), self.bundle.identity, t.source.fingerprint(),
                 t.target.fingerprint(), t.target_test.fingerprint() if t.target_test is not None else ""]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def _checkpoint(self, epoch: int, st: TrainState) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
        torch.save({"epoch": epoch, "digest": self._run_identity(),
                    "context": st.learner.context_tensors(), "optimizer": st.opt.state_dict(),
                    "scheduler": st.sched.state_dict(), "history": st.history, "best": st.best,
                    "diverged": st.diverged}, tmp)
        os.replace(tmp, path)

    def _maybe_resume(self, resume: bool, st: TrainState) -> int:
        path = self.out / CHECKPOINT
        if not path.exists():
            return 0
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("digest") != self._run_identity():
            if not resume:
                return 0
            raise RuntimeError(f"{path} was written by a different run (configuration, model weights or image "
                               f"files differ); use another output_dir, or delete the checkpoint to start over")
        if not resume:
            return 0
        st.learner.load_context(ck["context"])
        st.opt.load_state_dict(ck["optimizer"])
        st.sched.load_state_dict(ck["scheduler"])
        st.history.extend(ck["history"])
        st.best = ck["best"]
        st.diverged = ck.get("diverged")
        return int(ck["epoch"])


def train(cfg: DaplConfig, bundle: ClipBundle, task: AdaptationTask,
          on_epoch: Callable[[dict], None] | None = None, resume: bool = True, progress: str | bool = True
          ) -> TrainResult:
    """Train prompts for one adaptation task as ``cfg`` says (the one implementation every layer calls)."""
    return Trainer(cfg, bundle, task, on_epoch, progress).run(resume=resume)
