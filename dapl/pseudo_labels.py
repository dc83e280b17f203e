"""Zero-shot CLIP pseudo-labels for target images: the hand-written prompt scored on cached features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dapl.clip import ClipBundle
from dapl.config import PseudoLabelConfig
from dapl.imageset import AdaptationData
from dapl.metrics import headline, target_metrics
from dapl.model import clip_logits, normalize
from dapl.prompts import prompt_classname
from dapl.templates import resolve_templates


def zero_shot_text(bundle: ClipBundle, classnames: list[str], templates: str | Sequence[str]) -> torch.Tensor:
    """The hand-written prompt for every class, encoded once: ``[K, E]`` L2-normalised (class names written as
    the prompt builder writes them: ``_`` -> space). Several templates: each class's normalised mean over them
    (CLIP's prompt ensembling); one template is exactly the single prompt."""
    ts = [templates] if isinstance(templates, str) else list(templates)
    bad = [t for t in ts if "{}" not in t]
    if bad or not ts:
        raise ValueError(f"pseudo.template(s)={bad or ts!r}: each template needs a '{{}}' where the class name goes")
    names = [prompt_classname(c) for c in classnames]
    if len(ts) == 1:
        return normalize(bundle.encode_texts([ts[0].format(c) for c in names]))
    feats = normalize(bundle.encode_texts([t.format(c) for c in names for t in ts]))
    return normalize(feats.view(len(names), len(ts), -1).mean(1))


def labeller_templates(cfg: PseudoLabelConfig) -> list[str]:
    """The zero-shot labeller's templates as ``cfg`` names them (the ensemble, else the one template)."""
    return resolve_templates(cfg.template, cfg.templates)


def blend_weight(cfg: PseudoLabelConfig, epoch: int, epochs: int) -> float:
    """``w`` of ``(1 - w)·p_zero_shot + w·p_model`` in ``epoch`` (0-based): 0 for the paper."""
    if cfg.refresh == "linear":
        return epoch / epochs
    return cfg.refresh_weight if cfg.refresh == "constant" else 0.0


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
def pseudo_label(features: torch.Tensor, text: torch.Tensor, scale: float | torch.Tensor, tau: float,
                 model_probs: torch.Tensor | None = None, weight: float = 0.0) -> PseudoLabels:
    """``features [..., N, E]`` (raw image features, any leading view dims) -> labels with shape ``[..., N]``.

    With ``model_probs [N, K]`` and ``weight`` w > 0 the labels come from ``(1 - w)·p_zero_shot + w·p_model``
    (τ applies to the blend); w = 0 is the paper's labeller exactly.
    """
    probs = clip_logits(normalize(features), text, scale).softmax(dim=-1)
    if model_probs is not None and weight:
        probs = (1 - weight) * probs + weight * model_probs
    conf, lab = probs.max(dim=-1)
    return PseudoLabels(lab, conf, conf >= tau, tau)


def zero_shot_report(data: AdaptationData, zs: PseudoLabels) -> tuple[dict, dict]:
    """``(pseudo-label stats, zero-shot metrics)`` of the labeller on the evaluation images: the one computation
    behind the zero-shot stage and every training run's baseline."""
    ms = target_metrics(data, zs.labels.cpu().numpy())
    stats = {"tau": zs.tau, "coverage": zs.coverage(), "accuracy": zs.accuracy(data.evaluation.labels)}
    return stats, {"metrics": {k: m.to_dict() for k, m in ms.items()}, **headline(ms, data.metric)}
