"""Training step and epoch: our step vs the released code's structure, side by side on one frozen CLIP.

Ours (``dapl.train.TrainStep``, the step ``dapl.train.train`` runs): batch features gathered from cached augmented
views, zero-shot pseudo-labels from cached text features, ONE prompt-encoder forward/backward over all D·K prompts
(shared-prefix or cut after EOT) shared by both halves of the batch, two small matrix products, SGD. Official: two
full model forwards (image encoder on the 32 + 32 images, text encoder over 2K + K prompts at 77 tokens each time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.common import Samples, interleaved, timed
from bench.official import Batch, OfficialCLIP, official_loss
from dapl.clip import ClipBundle
from dapl.config import PromptConfig, PromptSetting, PseudoLabelConfig, TrainConfig
from dapl.model import DaplModel
from dapl.pseudo_labels import zero_shot_text
from dapl.train import Side, TrainStep
from dapl.views import CachedViews

SGD = {"lr": 0.003, "momentum": 0.9, "weight_decay": 5e-4}
TEST_BATCH_OFFICIAL = 128  # DATALOADER.TEST.BATCH_SIZE of the released configs


def make_batch(bundle: ClipBundle, K: int, bs: int = 32, bt: int = 32, seed: int = 0) -> Batch:
    """Random normalised pixels at the model's resolution (speed and equivalence do not need real images)."""
    g = torch.Generator().manual_seed(seed)
    s = bundle.image_size
    dev = bundle.device
    return Batch(torch.randn(bs, 3, s, s, generator=g).to(dev), torch.randint(K, (bs,), generator=g).to(dev),
                 torch.randn(bt, 3, s, s, generator=g).to(dev))


def model_for(bundle: ClipBundle, classnames: list[str], domains: list[str], setting: str, m1: int = 16,
              m2: int = 16, seed: int = 1) -> DaplModel:
    model = DaplModel(bundle, classnames, domains, PromptConfig.for_setting(PromptSetting(setting), m1, m2),
                      PseudoLabelConfig().template)
    model.prompts.reset_parameters(seed)
    return model


class OursStep:
    """``dapl.train.TrainStep`` (the trainer's own step, not a copy) on synthetic cached features.

    Differences from a training run are only in the data: random features, random batch indices, a fixed
    learning rate (no schedule). The step's phases are annotated for ``bench/profile.py``.
    """

    def __init__(self, bundle: ClipBundle, model: DaplModel, n_images: int = 1024, views: int = 8,
                 bs: int = 32, bt: int = 32, tau: float = 0.0, chunk: int = 0, loss: str = "kway") -> None:
        self.bundle, self.model = bundle, model
        self.bs, self.bt, self.tau, self.chunk, self.loss = bs, bt, tau, chunk, loss
        dev = bundle.device
        E, K, D = bundle.embed_dim, len(model.classnames), len(model.domains)
        g = torch.Generator().manual_seed(0)
        src = CachedViews(torch.randn(views, n_images, E, generator=g).half(), dev)
        tgt = CachedViews(torch.randn(views, n_images, E, generator=g).half(), dev)
        src_y = torch.randint(K, (n_images,), generator=g).to(dev)
        # sources: every domain but the last (multi-source when D > 2); target: the last domain
        src_d = torch.randint(max(1, D - 1), (n_images,), generator=g).to(dev)
        tgt_d = torch.full((n_images,), D - 1, device=dev)
        unlabelled = torch.full((n_images,), -1, device=dev)
        self.opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
        tc = TrainConfig(loss=loss, text_chunk=chunk, max_grad_norm=0.0)
        self.step = TrainStep(model, self.opt, None, tc, Side(src, src_y, src_d), Side(tgt, unlabelled, tgt_d),
                              zero_shot_text(bundle, model.classnames, PseudoLabelConfig().template), tau)
        self.gen = torch.Generator().manual_seed(1)
        self.n = n_images

    def __call__(self) -> float:
        si = torch.randint(self.n, (self.bs,), generator=self.gen)
        ti = torch.randint(self.n, (self.bt,), generator=self.gen)
        return self.step(si, ti, self.gen)["loss"]

    @torch.no_grad()
    def evaluate(self, feats: torch.Tensor) -> torch.Tensor:
        """The per-epoch evaluation of ``dapl.train``: prompts once, one product over cached features."""
        dom = torch.full((feats.shape[0],), len(self.model.domains) - 1, device=feats.device)
        return self.model.predict(feats, dom, self.model.text_features(chunk=self.chunk))[0]


class OfficialStep:
    """``DAPL.forward_backward`` of the released code (fp32), on pixels already in memory."""

    def __init__(self, bundle: ClipBundle, model: DaplModel, batch: Batch, tau: float = 0.0) -> None:
        self.model = OfficialCLIP(bundle, model.prompts)
        self.batch, self.tau = batch, tau
        self.opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)

    def __call__(self) -> float:
        loss, _, _ = official_loss(self.model, self.batch, self.tau)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def eval_text(self) -> torch.Tensor:
        """What every test batch of the released evaluation recomputes: all prompts at 77 tokens."""
        return self.model.encode_text(self.model.prompts())

    @torch.no_grad()
    def eval_images(self, n: int) -> torch.Tensor:
        return self.model.bundle.model.encode_image(self.batch.x_src[:n])


@dataclass
class StepResult:
    model: str
    K: int
    samples: dict[str, Samples]
    load: tuple[float, float, float]
    official_eval_text_s: float  # one no-grad pass over all prompts at 77 tokens
    ours: dict[str, OursStep]

    def ratio(self, ours: str, official: str) -> float:
        return self.samples[official].median / self.samples[ours].median


SETTINGS = {"unified": "unified_domain", "csc": "class_specific_domain"}


def compare_steps(bundle: ClipBundle, model_name: str, classnames: list[str], reps_official: int, reps_ours: int,
                  official_variants: tuple[str, ...] = ("unified", "csc"), tau: float = 0.0) -> StepResult:
    """Interleave the official step(s) and our unified / class-specific steps; medians over rounds."""
    domains = ["source", "target"]
    K = len(classnames)
    batch = make_batch(bundle, K)
    fns: dict = {}
    reps: dict[str, int] = {}
    official: dict[str, OfficialStep] = {}
    for v in official_variants:
        official[v] = OfficialStep(bundle, model_for(bundle, classnames, domains, SETTINGS[v]), batch, tau)
        fns[f"official {v}"] = official[v]
        reps[f"official {v}"] = reps_official
    ours = {}
    for v, setting in SETTINGS.items():
        ours[v] = OursStep(bundle, model_for(bundle, classnames, domains, setting), tau=tau)
        fns[f"ours {v}"] = ours[v]
        reps[f"ours {v}"] = reps_ours
    samples, load = interleaved(fns, reps, bundle.device)
    first = official[official_variants[0]]
    t_text = min(timed(first.eval_text, bundle.device) for _ in range(2))
    return StepResult(model_name, K, samples, load, t_text, ours)


# -- epochs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """Sizes of one adaptation task's epoch (source images set the iterations; the target set is evaluated)."""

    name: str
    K: int
    n_source: int
    n_target: int
    epochs: int
    tasks: int = 1


# Office-Home: 15,588 images over 4 domains (Art 2,427, Clipart 4,365, Product 4,439, Real World 4,357):
# over its 12 tasks every domain is source 3 times and target 3 times, so a task averages 3,897 each.
OFFICE_HOME = Protocol("Office-Home (RN50, 12 tasks, 200 epochs)", 65, 3897, 3897, 200, 12)
VISDA = Protocol("VisDA-2017 (RN101, 25 epochs)", 12, 152_397, 55_388, 25, 1)


@dataclass
class EpochEstimate:
    protocol: Protocol
    iters: int
    official_s: float
    ours_s: float
    ours_eval_s: float
    official_eval_s: float

    @property
    def ratio(self) -> float:
        return self.official_s / self.ours_s


def measure_our_eval(step: OursStep, n_target: int, reps: int = 3) -> float:
    """Our per-epoch evaluation, measured at the real target-set size on synthetic cached features."""
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(n_target, step.bundle.embed_dim, generator=g).half().to(step.bundle.device)
    return min(timed(lambda: step.evaluate(feats), step.bundle.device) for _ in range(reps))


def epoch_estimate(protocol: Protocol, step_official_s: float, step_ours_s: float, our_eval_s: float,
                   official_eval_text_s: float, official_img_per_s: float, batch_source: int = 32) -> EpochEstimate:
    """One epoch = iterations × step + the per-epoch target evaluation, from measured parts.

    Official evaluation (Dassl's ``test``): every test batch of 128 runs ``model(image)``, i.e. the image
    encoder over the batch *and* the text encoder over all prompts at 77 tokens. Its training data loading
    (decode + augment 64 images a step) is not counted, in its favour: on a GPU workers hide it.
    """
    iters = protocol.n_source // batch_source
    n_batches = math.ceil(protocol.n_target / TEST_BATCH_OFFICIAL)
    official_eval = protocol.n_target / official_img_per_s + n_batches * official_eval_text_s
    official = iters * step_official_s + official_eval
    ours = iters * step_ours_s + our_eval_s
    return EpochEstimate(protocol, iters, official, ours, our_eval_s, official_eval)
