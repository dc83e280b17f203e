"""Learned prompts: ``[SOS] v_1..v_M1 d_1..d_M2 <class tokens> . [EOS]`` per (domain, class).

``v`` is the domain-agnostic context (one set, or one per class with CSC), ``d`` the domain-specific context
(M2 vectors per domain, shared by all classes). Prompt index = domain * K + class (domain-major).
"""

from __future__ import annotations

import torch
from torch import nn

from dapl.clip import ClipBundle
from dapl.config import MANUAL_TEMPLATE, PromptConfig
from dapl.text_encoder import TextEncoder

PLACEHOLDER = "X"


def prompt_classname(name: str) -> str:
    """The class name as it is written into a prompt: ``_`` -> space, as the released DAPL code does itself
    (``traffic_light`` and ``traffic light`` give the same tokens). Done here, once, for every caller; the
    tokenizer lower-cases anyway."""
    return name.replace("_", " ")


def prompt_text(cfg: PromptConfig, classname: str, domain: str) -> str:
    """The tokenised text behind a prompt; the ``X`` placeholders are replaced by learned vectors."""
    ctx = " ".join([PLACEHOLDER] * (cfg.m1 + cfg.m2))
    body = f"{classname} , a {domain} image.." if cfg.text == "official" else f"{classname}."
    return f"{ctx} {body}" if ctx else body


class PromptLearner(nn.Module):
    """Holds the learned context vectors and assembles prompt embeddings for every (domain, class)."""

    def __init__(
        self,
        bundle: ClipBundle,
        classnames: list[str],
        domains: list[str],
        cfg: PromptConfig,
        manual_template: str = MANUAL_TEMPLATE,
    ) -> None:
        super().__init__()
        if cfg.m1 == 0 and cfg.csc:
            raise ValueError("prompt.csc=true needs prompt.m1 > 0 (class-specific context of length M1)")
        self.cfg = cfg
        self.classnames = list(classnames)
        self.domains = list(domains)
        self.encoder = TextEncoder(bundle.model)
        K, D = len(classnames), len(domains)
        model = bundle.model
        width = bundle.width
        dev = bundle.device

        if not cfg.learned:  # manual prompt: nothing to learn, identical for every domain
            texts = [manual_template.format(prompt_classname(c)) for c in classnames] * D
        else:
            texts = [prompt_text(cfg, prompt_classname(c), d) for d in domains for c in classnames]
        tokens = bundle.tokenizer(texts).to(dev)
        eot = tokens.argmax(dim=-1)
        with torch.no_grad():
            emb = model.token_embedding(tokens).float()
        L = int(eot.max()) + 1  # cut after the last EOT: exact under the causal mask
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.length = L
        n_ctx = cfg.m1 + cfg.m2
        self.n_prefix = 1 + n_ctx
        if cfg.learned:
            x_id = int(bundle.tokenizer([PLACEHOLDER])[0, 1])
            if not bool((tokens[:, 1:1 + n_ctx] == x_id).all()):
                raise ValueError("prompt assembly: placeholder tokens not where expected (tokenizer mismatch)")
        self.register_buffer("sos", emb[:1, :1].clone(), persistent=False)  # [1,1,W]
        self.register_buffer("suffix", emb[:, self.n_prefix:L].clone(), persistent=False)  # [D*K, Ls, W]
        self.register_buffer("manual", emb[:, :L].clone(), persistent=False)

        g = torch.Generator().manual_seed(0)
        self.n_init = 0  # leading domain-agnostic vectors initialised from prompt.init's words
        if cfg.m1:
            if cfg.init:
                init = self._init_from_words(bundle, cfg.init, cfg.m1)
                self.n_init = int(init.shape[0])
                ctx = init.expand(K, -1, -1).clone() if cfg.csc else init.clone()
                if self.n_init < cfg.m1:  # words shorter than M1: the rest N(0, std²), like DAPL's M2 vectors
                    tail = (K, cfg.m1 - self.n_init, width) if cfg.csc else (cfg.m1 - self.n_init, width)
                    ctx = torch.cat([ctx, torch.randn(tail, generator=g) * cfg.init_std], dim=-2)
            else:
                shape = (K, cfg.m1, width) if cfg.csc else (cfg.m1, width)
                ctx = torch.randn(shape, generator=g) * cfg.init_std
            self.ctx_agnostic = nn.Parameter(ctx.to(dev))
        else:
            self.ctx_agnostic = None
        if cfg.m2:
            self.ctx_domain = nn.Parameter((torch.randn(D, cfg.m2, width, generator=g) * cfg.init_std).to(dev))
        else:
            self.ctx_domain = None

    @staticmethod
    def _init_from_words(bundle: ClipBundle, words: str, m1: int) -> torch.Tensor:
        tok = bundle.tokenizer([words])[0]
        n = int(tok.argmax()) - 1
        if n > m1:
            raise ValueError(f"prompt.init={words!r} is {n} tokens but prompt.m1={m1}; use words of at most "
                             f"m1 tokens or set prompt.m1={n}")
        with torch.no_grad():
            return bundle.model.token_embedding(tok[1:1 + n].to(bundle.device)).float().cpu()

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic re-initialisation (N(0, std²), or the init words) from a training seed."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if self.ctx_agnostic is not None and not self.cfg.init:
                self.ctx_agnostic.copy_(torch.randn(self.ctx_agnostic.shape, generator=g) * self.cfg.init_std)
            elif self.ctx_agnostic is not None and self.n_init < self.cfg.m1:  # the part the words leave
                tail = self.ctx_agnostic[..., self.n_init:, :]
                tail.copy_(torch.randn(tail.shape, generator=g) * self.cfg.init_std)
            if self.ctx_domain is not None:
                self.ctx_domain.copy_(torch.randn(self.ctx_domain.shape, generator=g) * self.cfg.init_std)

    # -- assembly ----------------------------------------------------------------------------------
    def _context(self) -> torch.Tensor:
        """Context rows for every prompt: ``[D*K, M1+M2, W]``."""
        K, D = self.n_classes, self.n_domains
        parts = []
        if self.ctx_agnostic is not None:
            a = self.ctx_agnostic
            a = a.unsqueeze(0).expand(D, K, -1, -1) if a.dim() == 3 else a.expand(D, K, -1, -1)
            parts.append(a)
        if self.ctx_domain is not None:
            parts.append(self.ctx_domain.unsqueeze(1).expand(D, K, -1, -1))
        return torch.cat(parts, dim=2).flatten(0, 1)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full prompt embeddings cut after the last EOT: ``([D*K, L, W], eot [D*K])``."""
        if not self.cfg.learned:
            return self.manual, self.eot
        P = self.suffix.shape[0]
        return torch.cat([self.sos.expand(P, -1, -1), self._context(), self.suffix], dim=1), self.eot

    @property
    def shares_prefix(self) -> bool:
        """Prompts share a prefix the encoder can run once: with a unified context every prompt of a domain
        begins with the same ``1 + M1 + M2`` positions; with a class-specific context the D prompts of a class
        begin with the same ``1 + M1`` positions (``[SOS] v_k``)."""
        return (self.cfg.learned and self.encoder.shared_ok
                and (not self.cfg.csc or self.n_domains > 1))

    def shared_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``prefix [G, Lp, W]``, ``suffix [G, S, Ls, W]``, ``eot [G, S]``: with a unified context one group per
        domain (a single group when there is no domain-specific context) holding its K classes; with a
        class-specific context one group per class holding its D domains (the domain context is then part of
        the suffix)."""
        K, D = self.n_classes, self.n_domains
        if self.cfg.csc:
            prefix = torch.cat([self.sos.expand(K, -1, -1), self.ctx_agnostic], dim=1)  # [K, 1+M1, W]
            fixed = self.suffix.view(D, K, *self.suffix.shape[1:]).transpose(0, 1)  # [K, D, Ls, W]
            if self.ctx_domain is not None:
                dom = self.ctx_domain.unsqueeze(0).expand(K, -1, -1, -1)  # [K, D, M2, W]
                fixed = torch.cat([dom, fixed], dim=2)
            return prefix, fixed, self.eot.view(D, K).T
        parts = [self.sos.expand(1, -1, -1)]
        if self.ctx_agnostic is not None:
            parts.append(self.ctx_agnostic.unsqueeze(0))
        if self.ctx_domain is None:
            prefix = torch.cat(parts, dim=1)  # [1, Lp, W]
            return prefix, self.suffix.unsqueeze(0), self.eot.unsqueeze(0)
        prefix = torch.cat([p.expand(D, -1, -1) for p in parts] + [self.ctx_domain], dim=1)
        return prefix, self.suffix.view(D, K, *self.suffix.shape[1:]), self.eot.view(D, K)

    def text_features(self, chunk: int = 0, shared: bool | None = None) -> torch.Tensor:
        """Encode every prompt once: ``[D, K, E]`` (unnormalised).

        Uses the shared-prefix path whenever prompts share a prefix (exact and several times cheaper),
        the cut full sequences otherwise. ``chunk`` bounds memory (prompts per checkpointed chunk) on both paths.
        """
        K, D = self.n_classes, self.n_domains
        use_shared = self.shares_prefix if shared is None else shared
        if use_shared:
            prefix, suffix, eot = self.shared_parts()
            out = self.encoder.forward_shared(prefix, suffix, eot, chunk=chunk)
            return out.transpose(0, 1).reshape(D, K, -1) if self.cfg.csc else out.reshape(D, K, -1)
        x, eot = self.embeddings()
        return self.encoder(x, eot, chunk=chunk).view(D, K, -1)

    def context_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.ctx_agnostic is not None:
            out["ctx_agnostic"] = self.ctx_agnostic.detach().cpu().contiguous()
        if self.ctx_domain is not None:
            out["ctx_domain"] = self.ctx_domain.detach().cpu().contiguous()
        return out

    def load_context(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, t in tensors.items():
                p = getattr(self, name)
                if p is None or p.shape != t.shape:
                    raise ValueError(f"saved {name} of shape {tuple(t.shape)} does not fit this prompt config "
                                     f"({None if p is None else tuple(p.shape)})")
                p.copy_(t.to(p.device))
