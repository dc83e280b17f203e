"""The DAPL classifier: a frozen CLIP text tower over learned prompts, scored against image features.

Open this file first. Every logit the project computes (training, evaluation, pseudo-labels, prediction, export)
comes from :func:`clip_logits` over features normalised by :func:`normalize`; :class:`DaplModel` holds the learned
prompts and classifies an image with the prompts of its own domain (target images: the target prompts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dapl.clip import ClipBundle
from dapl.config import PromptConfig
from dapl.prompts import PromptLearner


def normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised fp32 features (cached image features may be fp16 or bf16)."""
    return F.normalize(features.float(), dim=-1)


def clip_logits(img: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                dom: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's logits ``scale · img · textᵀ`` of normalised features.

    ``text [K,E]`` (one prompt per class): ``img [..., E]`` -> ``[..., K]``. ``text [D,K,E]`` (per domain): every
    domain × class prompt, ``[B, D*K]`` (index d·K + k); with ``dom [B]``, each image against the K prompts of its
    own domain, ``[B, K]``.
    """
    if text.ndim == 2:
        return scale * img @ text.T
    if dom is None:
        return scale * img @ text.flatten(0, 1).T
    return scale * torch.einsum("be,bke->bk", img, text[dom])


class DaplModel(nn.Module):
    """Learned prompts for every (domain, class) over a frozen CLIP; only the context vectors train."""

    def __init__(self, bundle: ClipBundle, classnames: list[str], domains: list[str], cfg: PromptConfig,
                 manual_template: str) -> None:
        super().__init__()
        self.prompts = PromptLearner(bundle, classnames, domains, cfg, manual_template)
        self.register_buffer("logit_scale", bundle.logit_scale, persistent=False)

    @property
    def classnames(self) -> list[str]:
        return self.prompts.classnames

    @property
    def domains(self) -> list[str]:
        return self.prompts.domains

    @property
    def learnable(self) -> bool:
        """False for the manual prompt: nothing to train, the model is the zero-shot classifier."""
        return any(p.requires_grad for p in self.parameters())

    def text_features(self, chunk: int = 0) -> torch.Tensor:
        """Every prompt encoded once, normalised: ``[D, K, E]`` (``chunk`` bounds the encoder's memory)."""
        return F.normalize(self.prompts.text_features(chunk=chunk), dim=-1)

    def logits(self, image_features: torch.Tensor, domain: torch.Tensor | None = None,
               text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, K]`` against each image's own-domain prompts (``domain [B]``), else ``[B, D*K]`` against all;
        ``text`` reuses prompts already encoded this step."""
        text = self.text_features() if text is None else text
        return clip_logits(normalize(image_features), text, self.logit_scale, domain)

    @torch.no_grad()
    def predict(self, image_features: torch.Tensor, domain: torch.Tensor, text: torch.Tensor | None = None,
                batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax and softmax over each image's own-domain prompts, ``batch`` images at a time."""
        text = self.text_features() if text is None else text
        preds, probs = [], []
        for i in range(0, image_features.shape[0], batch):
            p = self.logits(image_features[i:i + batch], domain[i:i + batch], text).softmax(-1)
            probs.append(p)
            preds.append(p.argmax(-1))
        return torch.cat(preds), torch.cat(probs)
