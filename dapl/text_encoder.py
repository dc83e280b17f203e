"""CLIP's text encoder over prompt embeddings, cut after the last EOT, optionally with a shared prefix.

Both paths are exact with respect to CLIP's own ``encode_text``: the attention mask is causal, so no position
after an EOT can influence that EOT's row, and positions before a prompt's class tokens cannot see them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class TextEncoder(nn.Module):
    """Wraps a frozen open_clip ``CLIP`` text tower; holds no parameters of its own."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.clip = [clip_model]  # a list: not registered as a submodule (not trained, not saved)
        self.shared_ok = all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and not hasattr(b, "ln_1_kv")
            for b in clip_model.transformer.resblocks
        ) and getattr(clip_model, "text_pool_type", "argmax") == "argmax"

    @property
    def m(self) -> nn.Module:
        return self.clip[0]

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.m.ln_final(x)
        proj = self.m.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def forward(self, x: torch.Tensor, eot: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Encode ``[P, L, W]`` prompt embeddings (L ≤ context length) pooled at ``eot`` ``[P]``.

        ``chunk > 0`` encodes that many prompts at a time under activation checkpointing: the same result
        with the peak memory of one chunk (many classes × domains).
        """
        if chunk and x.shape[0] > chunk:
            outs = []
            for i in range(0, x.shape[0], chunk):
                xi, ei = x[i:i + chunk], eot[i:i + chunk]
                outs.append(checkpoint(self._encode, xi, ei, use_reentrant=False) if xi.requires_grad
                            else self._encode(xi, ei))
            return torch.cat(outs)
        return self._encode(x, eot)

    def _encode(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        x = x + self.m.positional_embedding[:L].to(x.dtype)
        x = self.m.transformer(x, attn_mask=self.m.attn_mask[:L, :L])
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self._project(x)

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Encode prompts that share a prefix: ``prefix [G, Lp, W]``, ``suffix [G, S, Ls, W]``.

        Each group's prefix runs through the transformer once; each suffix attends to its group's prefix
        keys/values plus its own earlier positions. ``eot [G, S]`` are absolute positions (≥ Lp).
        Returns ``[G, S, E]``.
        """
        G, S, Ls, W = suffix.shape
        Lp = prefix.shape[1]
        pos = self.m.positional_embedding.to(prefix.dtype)
        hp = prefix + pos[:Lp]
        hs = suffix + pos[Lp:Lp + Ls]
        causal = torch.ones(Ls, Ls, dtype=torch.bool, device=suffix.device).tril()
        for blk in self.m.transformer.resblocks:
            hp, hs = _shared_block(blk, hp, hs, causal)
        rel = (eot - Lp).clamp(min=0)
        out = hs.gather(2, rel[..., None, None].expand(G, S, 1, W)).squeeze(2)
        return self._project(out)


def _shared_block(
    blk: nn.Module, hp: torch.Tensor, hs: torch.Tensor, causal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual attention block for a shared prefix ``hp [G,Lp,W]`` and its suffixes ``hs [G,S,Ls,W]``."""
    attn: nn.MultiheadAttention = blk.attn
    H = attn.num_heads
    W = hp.shape[-1]
    dh = W // H
    w, b = attn.in_proj_weight, attn.in_proj_bias
    qp, kp, vp = F.linear(blk.ln_1(hp), w, b).chunk(3, dim=-1)
    qs, ks, vs = F.linear(blk.ln_1(hs), w, b).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:  # [..., L, W] -> [..., H, L, dh]
        return t.unflatten(-1, (H, dh)).transpose(-3, -2)

    qp, kp, vp, qs, ks, vs = map(heads, (qp, kp, vp, qs, ks, vs))
    ap = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # [G,H,Lp,dh]
    scale = 1.0 / math.sqrt(dh)
    # suffix queries against the group's prefix keys (broadcast over S) and their own causal keys
    sp = torch.einsum("gshqd,ghkd->gshqk", qs, kp) * scale  # [G,S,H,Ls,Lp]
    ss = (qs @ ks.transpose(-1, -2)) * scale  # [G,S,H,Ls,Ls]
    ss = ss.masked_fill(~causal, float("-inf"))
    probs = torch.cat([sp, ss], dim=-1).softmax(dim=-1)
    Lp = kp.shape[-2]
    as_ = torch.einsum("gshqk,ghkd->gshqd", probs[..., :Lp], vp) + probs[..., Lp:] @ vs

    def merge(t: torch.Tensor) -> torch.Tensor:  # [..., H, L, dh] -> [..., L, W]
        return t.transpose(-3, -2).flatten(-2)

    hp = hp + blk.ls_1(attn.out_proj(merge(ap)))
    hs = hs + blk.ls_1(attn.out_proj(merge(as_)))
    hp = hp + blk.ls_2(blk.mlp(blk.ln_2(hp)))
    hs = hs + blk.ls_2(blk.mlp(blk.ln_2(hs)))
    return hp, hs
