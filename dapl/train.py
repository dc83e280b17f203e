"""Prompt training: source images with labels, target images with zero-shot pseudo-labels above τ.

A step encodes every learned prompt once (shared by the source and target halves of the batch) and scores
cached image features against them; evaluation each epoch is one matrix product over cached test features.
Each epoch draws its order from ``(seed, epoch)`` alone, so a run resumed from an epoch checkpoint ends
bit-equal to an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dapl.config import DaplConfig
from dapl.datasets.loader import SEEDED_RNG_LOCK, ImageFileDataset
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from dapl.losses import dapl_loss, logits_own_domain
from dapl.metrics import Metrics, classification_metrics
from dapl.models import ClipBundle, train_transform
from dapl.prompts import PromptLearner
from dapl.pseudo_labels import pseudo_label, zero_shot_text

CHECKPOINT = "checkpoint.pt"
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
        self.bundle = bundle
        self.ds = ImageFileDataset(images, transform)

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=gen))
        with SEEDED_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = torch.stack([self.ds[int(i)][0] for i in idx])
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
        p = logits_own_domain(F.normalize(img[i:i + batch].float(), dim=-1), dom[i:i + batch], text, scale)
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


# -- the trainer ------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: DaplConfig, bundle: ClipBundle, task: AdaptationTask,
                 on_epoch: Callable[[dict], None] | None = None, progress: bool = True):
        self.cfg, self.bundle, self.task = cfg, bundle, task
        self.on_epoch = on_epoch
        self.progress = progress
        self.dev = bundle.device
        self.scale = bundle.logit_scale.to(self.dev)
        self.out = Path(cfg.output_dir)
        fc = cfg.features
        self.cache = FeatureCache.from_config(fc, bundle)

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

    def run(self, resume: bool = True) -> TrainResult:
        cfg, task, dev = self.cfg, self.task, self.dev
        tc = cfg.train
        torch.manual_seed(tc.seed)
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
        src_y = torch.as_tensor(task.source.labels, device=dev)
        src_d = torch.as_tensor(task.source.domains, device=dev)
        tgt_d = torch.as_tensor(task.target.domains, device=dev)

        params = [p for p in learner.parameters() if p.requires_grad]
        history: list[dict] = []
        state = {"epoch": 0, "best": None}
        if not params:  # manual prompt: nothing to learn, evaluate the zero-shot classifier
            text = _normalized_text(learner, tc.text_chunk).detach()
            ms, _ = self._evaluate(text, tgt_test)
            rec = {"epoch": 0, **_headline(ms, task.metric)}
            return TrainResult(learner, [rec], rec, zero_shot, {"criterion": "last", "epoch": 0, **rec},
                               {"epoch": 0, **rec}, pseudo_stats, ms)

        opt = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        bs, bt = tc.batch_source, tc.batch_target
        iters = max(1, len(train_idx) // bs)
        total = iters * tc.epochs
        ratio = tc.warmup_lr / tc.lr
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, tc.warmup_iters, ratio))
        start = self._maybe_resume(resume, learner, opt, sched, history, state)
        use_tgt = cfg.pseudo.enabled and len(task.target) > 0

        bar = tqdm(total=total, initial=start * iters, desc=f"train {'+'.join(task.domains)}", unit="it",
                   disable=None if self.progress else True)
        ms: dict[str, Metrics] = {}
        for epoch in range(start, tc.epochs):
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            torder = torch.randperm(len(task.target), generator=gen) if use_tgt else None
            sums = {"loss": 0.0, "loss_source": 0.0, "loss_target": 0.0, "pl_pass": 0.0, "pl_correct": 0.0,
                    "pl_seen": 0.0}
            for it in range(iters):
                si = order[it * bs:(it + 1) * bs]
                src_f = F.normalize(src_views(si, gen), dim=-1)
                kw = {}
                if use_tgt:
                    pos = (it * bt) % len(torder)
                    ti = torder[pos:pos + bt]
                    if len(ti) < bt:  # the target side cycles
                        ti = torch.cat([ti, torder[:bt - len(ti)]])
                    tgt_raw = tgt_views(ti, gen)
                    pl = pseudo_label(tgt_raw, zs_text, self.scale, cfg.tau)
                    kw = {"tgt_img": F.normalize(tgt_raw, dim=-1), "tgt_dom": tgt_d[ti.to(dev)],
                          "tgt_pl": pl.labels, "tgt_mask": pl.mask}
                    ty = torch.as_tensor(task.target.labels[ti.numpy()], device=dev)
                    sums["pl_pass"] += float(pl.mask.sum())
                    sums["pl_seen"] += len(ti)
                    sums["pl_correct"] += float(((pl.labels == ty) & pl.mask & (ty >= 0)).sum())
                text = _normalized_text(learner, tc.text_chunk)
                loss, parts = dapl_loss(text, self.scale, src_f, src_d[si.to(dev)], src_y[si.to(dev)],
                                        kind=tc.loss, **kw)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums["loss"] += float(loss.detach())
                sums["loss_source"] += float(parts["loss_source"])
                sums["loss_target"] += float(parts["loss_target"])
                bar.update(1)
            rec = self._end_epoch(epoch, learner, sums, iters, tgt_test, src_test, val_idx, zs, opt)
            ms = rec.pop("_metrics")
            history.append(rec)
            self._select(rec, learner, state)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('target_acc', float('nan')):.1f}")
            if self.on_epoch:
                self.on_epoch(dict(rec))
            last = epoch + 1 == tc.epochs
            if tc.checkpoint_every and ((epoch + 1) % tc.checkpoint_every == 0 or last):
                self._checkpoint(epoch + 1, learner, opt, sched, history, state)
        bar.close()
        if not ms:
            ms, _ = self._evaluate(_normalized_text(learner, tc.text_chunk).detach(), tgt_test)
        final = history[-1] if history else {}
        oracle = max(history, key=lambda r: r.get("target_metric", -1.0)) if history else {}
        best = state["best"] or {"epoch": final.get("epoch"), "score": None, "record": final}
        selection = {"criterion": cfg.eval.selection, "epoch": best["epoch"], **best["record"]}
        return TrainResult(learner, history, final, zero_shot, selection,
                           {"epoch": oracle.get("epoch"), "label": "oracle (selected with target labels)",
                            **{k: v for k, v in oracle.items() if k.startswith("target")}},
                           pseudo_stats, ms)

    @torch.no_grad()
    def _end_epoch(self, epoch: int, learner: PromptLearner, sums: dict, iters: int, tgt_test: torch.Tensor,
                   src_test: torch.Tensor, val_idx: torch.Tensor, zs, opt) -> dict:
        text = _normalized_text(learner, self.cfg.train.text_chunk)
        ms, pred = self._evaluate(text, tgt_test)
        rec = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
               "loss": sums["loss"] / iters, "loss_source": sums["loss_source"] / iters,
               "loss_target": sums["loss_target"] / iters, **_headline(ms, self.task.metric)}
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

    def _select(self, rec: dict, learner: PromptLearner, state: dict) -> None:
        crit = self.cfg.eval.selection
        if crit == "last":
            return
        key, sign = ("source_val_loss", -1.0) if crit == "source_val" else ("pl_agreement", 1.0)
        if key not in rec:
            return
        score = sign * rec[key]
        best = state["best"]
        if best is None or score > best["score"]:
            state["best"] = {"epoch": rec["epoch"], "score": score, "record": dict(rec),
                             "context": copy.deepcopy(learner.context_tensors())}

    # checkpoints ----------------------------------------------------------------------------------------
    def _run_identity(self) -> str:
        """What a checkpoint may be resumed into: the configuration, plus the weights' identity and the images'
        fingerprints (the same config path can point at a retrained checkpoint or a regenerated dataset)."""
        t = self.task
        parts = [self.cfg.digest(*TRAIN_SECTIONS), self.bundle.identity, t.source.fingerprint(),
                 t.target.fingerprint(), t.target_test.fingerprint() if t.target_test is not None else ""]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def _checkpoint(self, epoch: int, learner, opt, sched, history, state) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
        torch.save({"epoch": epoch, "digest": self._run_identity(),
                    "context": learner.context_tensors(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": history, "best": state["best"]}, tmp)
        os.replace(tmp, path)

    def _maybe_resume(self, resume: bool, learner, opt, sched, history: list, state: dict) -> int:
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
        learner.load_context(ck["context"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history.extend(ck["history"])
        state["best"] = ck["best"]
        return int(ck["epoch"])


def train(cfg: DaplConfig, bundle: ClipBundle, task: AdaptationTask,
          on_epoch: Callable[[dict], None] | None = None, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train prompts for one adaptation task as ``cfg`` says (the one implementation every layer calls)."""
    return Trainer(cfg, bundle, task, on_epoch, progress).run(resume=resume)
