"""DAPL objectives: the paper's contrastive loss over all domain×class prompts, or the released code's
per-domain K-way cross-entropy. The target term is masked by the pseudo-label threshold."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dapl.model import clip_logits


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; exactly 0 (finite, zero gradient) when nothing passes the mask."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def dapl_loss(
    text: torch.Tensor,
    scale: torch.Tensor | float,
    src_img: torch.Tensor,
    src_dom: torch.Tensor,
    src_y: torch.Tensor,
    tgt_img: torch.Tensor | None = None,
    tgt_dom: torch.Tensor | None = None,
    tgt_pl: torch.Tensor | None = None,
    tgt_mask: torch.Tensor | None = None,
    kind: str = "contrastive",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_src + L_tgt``. Images must be L2-normalised, ``text [D,K,E]`` too.

    contrastive (paper): the positive of an image is (its domain, its class) among all D·K prompts;
    kway (released code): cross-entropy over the K prompts of the image's own domain.
    """
    K = text.shape[1]

    def term(img: torch.Tensor, dom: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "contrastive":
            return F.cross_entropy(clip_logits(img, text, scale), dom * K + y, reduction="none")
        if kind == "kway":
            return F.cross_entropy(clip_logits(img, text, scale, dom), y, reduction="none")
        raise ValueError(f"unknown loss {kind!r}")

    l_src = term(src_img, src_dom, src_y).mean()
    if tgt_img is None or tgt_img.shape[0] == 0:
        l_tgt = torch.zeros((), device=text.device)
    else:
        pl = tgt_pl.clamp(min=0)  # masked rows may carry -1: keep the index valid, the mask drops them
        l_tgt = masked_mean(term(tgt_img, tgt_dom, pl), tgt_mask)
    return l_src + l_tgt, {"loss_source": l_src.detach(), "loss_target": l_tgt.detach()}
