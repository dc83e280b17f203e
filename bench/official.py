"""The released DAPL code's training-step structure, rebuilt on the same frozen CLIP for side-by-side timing.

What the released trainer does per step (CoOp-style): ``model(image_x)`` and ``model(image_u)`` are two full
forwards; each runs the image encoder on its 32 images and the text encoder over every prompt — the 2K learned
(domain, class) prompts plus the K hand-written zero-shot prompts — at CLIP's full 77 tokens. Pseudo-labels are
the softmax over the zero-shot columns of the target logits; the source loss is cross-entropy over the K
source-domain prompts, the target loss masked cross-entropy over the K target-domain prompts (the ``kway``
loss). The learned context tensors are *the same parameters* as our :class:`PromptLearner`, so both structures
can be compared on identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dapl.clip import ClipBundle
from dapl.losses import dapl_loss, masked_mean
from dapl.model import DaplModel, normalize
from dapl.prompts import PromptLearner
from dapl.pseudo_labels import pseudo_label, zero_shot_text


class OfficialCLIP(nn.Module):
    """``CustomCLIP`` of the released code: image encoder + prompt learner + text encoder at 77 tokens."""

    def __init__(self, bundle: ClipBundle, learner: PromptLearner, template: str = "a photo of a {}.") -> None:
        super().__init__()
        self.bundle = bundle
        self.learner = learner  # owns the learned context: the parameters both structures train
        m = bundle.model
        n_ctx = learner.cfg.m1 + learner.cfg.m2
        zs_tokens = bundle.tokenizer([template.format(c) for c in learner.classnames]).to(bundle.device)
        with torch.no_grad():
            emb = m.token_embedding(learner.tokens).float()  # [D*K, 77, W]
            zs = m.token_embedding(zs_tokens).float()  # [K, 77, W]
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("zs_embedding", zs, persistent=False)
        self.register_buffer("all_tokens", torch.cat([learner.tokens, zs_tokens]), persistent=False)

    def prompts(self) -> torch.Tensor:
        """All ``2K + K`` prompt embeddings at 77 tokens, learned rows spliced in: ``[D*K + K, 77, W]``."""
        learned = torch.cat([self.token_prefix, self.learner._context(), self.token_suffix], dim=1)
        return torch.cat([learned, self.zs_embedding])

    def encode_text(self, prompts: torch.Tensor) -> torch.Tensor:
        """CoOp's ``TextEncoder``: positional embedding, causal transformer, ln_final, EOT row, projection."""
        m = self.bundle.model
        x = prompts + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.all_tokens.argmax(dim=-1)]
        return x @ m.text_projection

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, D*K + K]``: every prompt, learned then zero-shot, at 77 tokens, on every call."""
        img = self.bundle.model.encode_image(image)
        text = self.encode_text(self.prompts())
        img = img / img.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.bundle.logit_scale * img @ text.T


@dataclass
class Batch:
    """One training batch as pixels (official) and as the features the cache would hold (ours)."""

    x_src: torch.Tensor
    y_src: torch.Tensor
    x_tgt: torch.Tensor


def official_loss(model: OfficialCLIP, batch: Batch, tau: float, src_domain: int = 0,
                  tgt_domain: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The released ``forward_backward`` (minus its NaN on an empty mask): two model forwards."""
    K = model.learner.n_classes
    out_x = model(batch.x_src)
    out_u = model(batch.x_tgt)
    probs = out_u[:, -K:].softmax(dim=-1)
    conf, pl = probs.max(dim=-1)
    mask = conf >= tau
    loss_x = F.cross_entropy(out_x[:, src_domain * K:(src_domain + 1) * K], batch.y_src)
    loss_u = masked_mean(F.cross_entropy(out_u[:, tgt_domain * K:(tgt_domain + 1) * K], pl, reduction="none"),
                         mask)
    return loss_x + loss_u, out_x, out_u


def ours_logits_and_loss(model: DaplModel, zs_text: torch.Tensor, f_src: torch.Tensor,
                         y_src: torch.Tensor, f_tgt: torch.Tensor, tau: float, chunk: int = 0,
                         src_domain: int = 0, tgt_domain: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our step's computation on image features: one prompt forward, shared by both halves; pseudo-labels from
    the cached zero-shot text features. Also returns the logits in the official layout for the comparison."""
    scale = model.logit_scale
    text = model.text_features(chunk=chunk)
    pl = pseudo_label(f_tgt, zs_text, scale, tau)
    s, t = normalize(f_src), normalize(f_tgt)
    dev = f_src.device
    loss, _ = dapl_loss(text, scale, s, torch.full_like(y_src, src_domain), y_src,
                        tgt_img=t, tgt_dom=torch.full((len(t),), tgt_domain, device=dev),
                        tgt_pl=pl.labels, tgt_mask=pl.mask, kind="kway")
    flat = torch.cat([text.flatten(0, 1), zs_text])
    return loss, scale * s @ flat.T, scale * t @ flat.T


@dataclass
class Equivalence:
    setting: str
    logits_max_abs: float
    logits_max: float
    loss_official: float
    loss_ours: float
    grad_max_abs: float
    grad_max: float
    pseudo_agree: float
    ok: bool

    def row(self) -> list[object]:
        return [self.setting, f"{self.logits_max_abs:.2e}", f"{self.logits_max:.3g}",
                f"{self.loss_official:.6f}", f"{self.loss_ours:.6f}", f"{self.grad_max_abs:.2e}",
                f"{self.grad_max:.2e}", f"{self.pseudo_agree:.3f}", "yes" if self.ok else "NO"]


EQUIV_HEADERS = ["setting", "max abs Δ logit", "max logit", "loss (official)", "loss (ours)", "max abs Δ grad",
                 "max grad", "pseudo-labels agree", "equal"]


def check_equivalence(bundle: ClipBundle, model: DaplModel, batch: Batch, tau: float = 0.0,
                      template: str = "a photo of a {}.", rtol: float = 1e-4, grad_rtol: float = 1e-3,
                      chunk: int = 0) -> Equivalence:
    """Both structures on the same pixels and the same context: logits, loss and context gradients must agree.

    Ours gets the image features the feature cache would store (the frozen image encoder on the same pixels,
    fp32 here so the comparison is about the structure, not the cache's fp16 rounding).
    """
    learner = model.prompts
    official = OfficialCLIP(bundle, learner, template)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_o, out_x, out_u = official_loss(official, batch, tau)
    g_o = torch.autograd.grad(loss_o, params)
    with torch.no_grad():
        f_src = bundle.model.encode_image(batch.x_src).float()
        f_tgt = bundle.model.encode_image(batch.x_tgt).float()
    zs = zero_shot_text(bundle, learner.classnames, template)
    loss_u, lx, lu = ours_logits_and_loss(model, zs, f_src, batch.y_src, f_tgt, tau, chunk=chunk)
    g_u = torch.autograd.grad(loss_u, params)
    out_x, out_u, lx, lu, loss_o, loss_u = (t.detach() for t in (out_x, out_u, lx, lu, loss_o, loss_u))
    d_logit = max(float((lx - out_x).abs().max()), float((lu - out_u).abs().max()))
    m_logit = float(torch.cat([out_x, out_u]).abs().max())
    d_grad = max(float((a - b).abs().max()) for a, b in zip(g_o, g_u, strict=True))
    m_grad = max(float(a.abs().max()) for a in g_o)
    K = learner.n_classes
    agree = float((out_u[:, -K:].argmax(-1) == lu[:, -K:].argmax(-1)).float().mean())
    ok = (d_logit <= rtol * max(1.0, m_logit) and d_grad <= grad_rtol * max(m_grad, 1e-12)
          and abs(float(loss_o) - float(loss_u)) <= rtol * max(1.0, abs(float(loss_o))) and agree == 1.0)
    return Equivalence(learner.cfg.setting.value, d_logit, m_logit, float(loss_o), float(loss_u), d_grad, m_grad,
                       agree, ok)
