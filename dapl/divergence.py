"""Telling a broken run from a healthy one without target labels: a K-way probe on fixed source images."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from dapl.imageset import ImageSet
from dapl.model import DaplModel

SHARE = 0.5  # share of the untrained prompts' probe accuracy above chance that a broken run has lost
PROBE_SIZE = 4096  # source images (a fixed subset, the same for every seed) the probe scores
log = logging.getLogger("dapl.train")


class SourceProbe:
    """Class-only loss and accuracy over each image's own-domain prompts on fixed source test-view features.

    Label-free for the target (it reads only the source labels the method trains on), and K-way rather than the
    training loss: prompts that stop reading the class name are at chance here whatever their domain terms do.
    """

    def __init__(self, features: torch.Tensor, source: ImageSet):
        dev = features.device
        idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:PROBE_SIZE].sort().values
        i = idx.to(dev)
        self.features = features[i]
        self.domains = torch.as_tensor(source.domains, device=dev)[i]
        self.labels = torch.as_tensor(source.labels, device=dev)[i]

    @torch.no_grad()
    def __call__(self, model: DaplModel, text: torch.Tensor) -> tuple[float, float]:
        logits = model.logits(self.features, self.domains, text)
        return float(F.cross_entropy(logits, self.labels)), float((logits.argmax(-1) == self.labels).float().mean())


def floor(init_acc: float, n_classes: int) -> float:
    """The probe accuracy below which prompts count as broken. Untrained prompts below twice chance (a random
    model) have nothing to lose: only a non-finite loss counts then (floor 0)."""
    chance = 1.0 / n_classes
    return init_acc - SHARE * (init_acc - chance) if init_acc >= 2 * chance else 0.0


def check(rec: dict, init: tuple[float, float], n_classes: int) -> dict | None:
    """Mark ``rec`` (an epoch record with the probe's figures) ``diverged`` and return what broke, or None.

    The loss alone is no criterion: untrained prompts are right but unsure, so their loss already sits near log K
    (the story: docs/PIPELINE.md, "Stable training").
    """
    acc, lo = rec["probe_source_acc"], floor(init[1], n_classes)
    finite = math.isfinite(rec["loss"]) and math.isfinite(rec["probe_source_loss"])
    rec["diverged"] = bool(not finite or acc < lo)
    if not rec["diverged"]:
        return None
    return {"epoch": rec["epoch"], "source_acc": acc, "source_acc_init": init[1], "floor": lo,
            "source_loss": rec["probe_source_loss"], "source_loss_init": init[0]}


def warn(run: str, rec: dict, what: dict, n_classes: int) -> None:
    """One warning line for the first diverged epoch of a run (the run goes on and is marked diverged)."""
    chance = 100.0 / n_classes
    finite = math.isfinite(rec["loss"]) and math.isfinite(rec["probe_source_loss"])
    why = ("the loss is not finite" if not finite else
           f"the prompts classify {100 * what['source_acc']:.1f} % of the source probe images (untrained: "
           f"{100 * what['source_acc_init']:.1f} %, chance {chance:.1f} %): they no longer tell the classes apart")
    log.warning("%s: training diverged at epoch %d: %s (lower train.lr or set train.max_grad_norm); the run goes "
                "on and is marked diverged", run, what["epoch"], why)
