"""Zero-shot CLIP pseudo-labels for target images: the hand-written prompt scored on cached features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dapl.imageset import AdaptationData
from dapl.metrics import headline, target_metrics
from dapl.model import clip_logits, normalize
from dapl.models import ClipBundle
from dapl.prompts import prompt_classname


def zero_shot_text(bundle: ClipBundle, classnames: list[str], template: str) -> torch.Tensor:
    """The hand-written prompt for every class, encoded once: ``[K, E]`` L2-normalised (class names written as
    the prompt builder writes them: ``_`` -> space)."""
    if "{}" not in template:
        raise ValueError(f"pseudo.template={template!r} needs a '{{}}' where the class name goes")
    return normalize(bundle.encode_texts([template.format(prompt_classname(c)) for c in classnames]))


@dataclass
class PseudoLabels:
    """Per image (and per cached view): argmax label, its probability, and whether it passes τ."""

    labels: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor
    tau: float

    def coverage(self) -> float:
        return float(self.mask.float().mean()) if self.mask.numel() else 0.0

    def accuracy(self, true: np.ndarray | torch.Tensor) -> float | None:
        """Accuracy of the labels that pass τ (reporting only; None without labels or passing images)."""
        t = torch.as_tensor(np.asarray(true), device=self.labels.device)
        if (t < 0).any() or not bool(self.mask.any()):
            return None
        t = t.expand_as(self.labels)
        return float((self.labels[self.mask] == t[self.mask]).float().mean())


@torch.no_grad()
def pseudo_label(features: torch.Tensor, text: torch.Tensor, scale: float | torch.Tensor,
                 tau: float) -> PseudoLabels:
    """``features [..., N, E]`` (raw image features, any leading view dims) -> labels with shape ``[..., N]``."""
    probs = clip_logits(normalize(features), text, scale).softmax(dim=-1)
    conf, lab = probs.max(dim=-1)
    return PseudoLabels(lab, conf, conf >= tau, tau)


def zero_shot_report(data: AdaptationData, zs: PseudoLabels) -> tuple[dict, dict]:
    """``(pseudo-label stats, zero-shot metrics)`` of the labeller on the evaluation images: the one computation
    behind the zero-shot stage and every training run's baseline."""
    ms = target_metrics(data, zs.labels.cpu().numpy())
    stats = {"tau": zs.tau, "coverage": zs.coverage(), "accuracy": zs.accuracy(data.evaluation.labels)}
    return stats, {"metrics": {k: m.to_dict() for k, m in ms.items()}, **headline(ms, data.metric)}
