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

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor,
                       chunk: int = 0) -> torch.Tensor:
        """Encode prompts that share a prefix: ``prefix [G, Lp, W]``, ``suffix [G, S, Ls, W]``.

        Each group's prefix runs through the transformer once; each suffix attends to its group's prefix
        keys/values plus its own earlier positions. ``eot [G, S]`` are absolute positions (≥ Lp). Suffix
        positions after a prompt's own EOT are never computed in the linear layers (the suffixes are packed
        without padding; only the cheap attention sees a padded view). ``chunk > 0`` encodes groups holding
        about that many prompts at a time under activation checkpointing (same result, the peak memory of
        one chunk). Returns ``[G, S, E]``.
        """
        G, S = suffix.shape[:2]
        per = max(1, chunk // S) if chunk else G
        if per >= G:
            return self._encode_shared(prefix, suffix, eot)
        grad = prefix.requires_grad or suffix.requires_grad
        outs = []
        for i in range(0, G, per):
            args = (prefix[i:i + per], suffix[i:i + per], eot[i:i + per])
            outs.append(checkpoint(self._encode_shared, *args, use_reentrant=False) if grad
                        else self._encode_shared(*args))
        return torch.cat(outs)

    def _encode_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        G, S, Ls, W = suffix.shape
        Lp = prefix.shape[1]
        pos = self.m.positional_embedding.to(prefix.dtype)
        pack = _Packing((eot - Lp + 1).clamp(1, Ls), Ls)
        hp = prefix + pos[:Lp]
        hs = pack.unpad(suffix + pos[Lp:Lp + Ls])  # [T, W]: only positions up to each prompt's EOT
        causal = torch.ones(Ls, Ls, dtype=torch.bool, device=suffix.device).tril()
        *blocks, last = self.m.transformer.resblocks
        for blk in blocks:
            hp, hs = _shared_block(blk, hp, hs, pack, causal)
        return self._project(_last_block(last, hp, hs, pack)).view(G, S, -1)


class _Packing:
    """Index maps between padded suffixes ``[G, S, Ls]`` and the packed valid positions ``[T]``.

    A padded position past a prompt's EOT reads that prompt's last valid row: under the causal mask no valid
    query ever attends to it, and its own query output is dropped, so the padding is exact.
    """

    def __init__(self, n: torch.Tensor, Ls: int) -> None:
        self.shape = (*n.shape, Ls)
        j = torch.arange(Ls, device=n.device)
        counts = n.reshape(-1)
        start = counts.cumsum(0) - counts
        self.dense = bool((counts == Ls).all())
        self.valid = (j < counts[:, None]).reshape(-1).nonzero().squeeze(1)  # [T] into the padded rows
        self.src = (start[:, None] + torch.minimum(j, counts[:, None] - 1)).reshape(-1)  # [P*Ls] into packed
        self.last = start + counts - 1  # [P] packed row of each prompt's EOT
        self.keys = (j < counts[:, None]).view(*n.shape, 1, 1, Ls)  # [G,S,1,1,Ls] valid keys of each prompt

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[G, S, Ls, C]`` -> ``[T, C]``."""
        x = x.reshape(-1, x.shape[-1])
        return x if self.dense else x.index_select(0, self.valid)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` -> ``[G, S, Ls, C]``."""
        x = x if self.dense else x.index_select(0, self.src)
        return x.view(*self.shape, x.shape[-1])


def _shared_block(
    blk: nn.Module, hp: torch.Tensor, hs: torch.Tensor, pack: _Packing, causal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual attention block for shared prefixes ``hp [G,Lp,W]`` and packed suffix rows ``hs [T,W]``."""
    attn: nn.MultiheadAttention = blk.attn
    H = attn.num_heads
    W = hp.shape[-1]
    dh = W // H
    w, b = attn.in_proj_weight, attn.in_proj_bias
    qp, kp, vp = F.linear(blk.ln_1(hp), w, b).chunk(3, dim=-1)
    qs, ks, vs = pack.pad(F.linear(blk.ln_1(hs), w, b)).chunk(3, dim=-1)  # linear layers on packed rows only

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
    hs = hs + blk.ls_1(attn.out_proj(pack.unpad(merge(as_))))
    hp = hp + blk.ls_2(blk.mlp(blk.ln_2(hp)))
    hs = hs + blk.ls_2(blk.mlp(blk.ln_2(hs)))
    return hp, hs


def _last_block(blk: nn.Module, hp: torch.Tensor, hs: torch.Tensor, pack: _Packing) -> torch.Tensor:
    """The final block, where only each prompt's EOT row is read: keys/values for every position, but the
    query, attention output, projection and MLP only at the EOT rows (``[P, W]``)."""
    attn: nn.MultiheadAttention = blk.attn
    H = attn.num_heads
    W = hp.shape[-1]
    dh = W // H
    w, b = attn.in_proj_weight, attn.in_proj_bias
    kp, vp = F.linear(blk.ln_1(hp), w[W:], b[W:]).chunk(2, dim=-1)  # the prefix's own outputs are never read
    ks, vs = pack.pad(F.linear(blk.ln_1(hs), w[W:], b[W:])).chunk(2, dim=-1)
    he = hs[pack.last]  # [P, W]
    G, S, Ls = pack.shape
    qe = F.linear(blk.ln_1(he), w[:W], b[:W]).view(G, S, 1, H, dh).transpose(-3, -2)  # [G,S,H,1,dh]

    def heads(t: torch.Tensor) -> torch.Tensor:  # [..., L, W] -> [..., H, L, dh]
        return t.unflatten(-1, (H, dh)).transpose(-3, -2)

    kp, vp, ks, vs = map(heads, (kp, vp, ks, vs))
    scale = 1.0 / math.sqrt(dh)
    sp = torch.einsum("gshqd,ghkd->gshqk", qe, kp) * scale  # [G,S,H,1,Lp]
    ss = (qe @ ks.transpose(-1, -2)) * scale  # [G,S,H,1,Ls]: the EOT sees every valid position of its suffix
    ss = ss.masked_fill(~pack.keys, float("-inf"))
    probs = torch.cat([sp, ss], dim=-1).softmax(dim=-1)
    Lp = kp.shape[-2]
    ae = torch.einsum("gshqk,ghkd->gshqd", probs[..., :Lp], vp) + probs[..., Lp:] @ vs  # [G,S,H,1,dh]
    he = he + blk.ls_1(attn.out_proj(ae.transpose(-3, -2).reshape(-1, W)))
    return he + blk.ls_2(blk.mlp(blk.ln_2(he)))
