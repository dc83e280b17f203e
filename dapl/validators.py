"""Label-free validators for domain adaptation, and how well the epoch each one picks scores against the oracle.

Every validator reads only the target probability matrix ``probs [N, K]`` (softmax outputs of the current
target prompts), so it can run every epoch on cached features; every score is oriented so that HIGHER is
better, which lets one ``pick`` serve all of them. Definitions follow Musgrave et al., "Benchmarking Validation
Methods for Unsupervised Domain Adaptation" (entropy, IM) and Saito et al., ICCV 2021 (SND).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

SND_TEMPERATURE = 0.05  # Saito et al.'s default, kept by every later benchmark of SND
SND_BLOCK_ROWS = 1024  # a [1024, N] float32 block is ~225 MB at VisDA's N ~ 55k
# SND is O(N²): above this many target images it scores a fixed random subset (the same every epoch and run), so an
# epoch's validators cost about a second on a CPU even for VisDA's or DomainNet's targets; the toy's are smaller.
SND_MAX_IMAGES = 8192


def _check(probs: torch.Tensor) -> torch.Tensor:
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"expected a non-empty [N, K] probability matrix, got shape {tuple(probs.shape)}")
    return probs.detach()


def _row_entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row; ``entr`` makes 0·log 0 = 0, so one-hot rows score exactly 0."""
    return torch.special.entr(p).sum(dim=1)


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean prediction entropy in nats: the raw quantity, LOWER is more confident (see ``entropy``)."""
    return float(_row_entropy(_check(probs).double()).mean())


def entropy(probs: torch.Tensor) -> float:
    """The entropy validator's score, ``−mean_entropy``: the sign is flipped so that higher is better like every
    other validator (uniform predictions score −log K, confident one-hot ones 0)."""
    return -mean_entropy(probs)


def information_maximization(probs: torch.Tensor) -> float:
    """H(mean prediction) − mean H(prediction), higher is better (SHOT's IM objective with the sign of a score):
    rewards predictions that are each confident yet spread over the classes; 0 for uniform ones, log K at best."""
    p = _check(probs).double()
    marginal = p.mean(dim=0, keepdim=True)
    return float(_row_entropy(marginal)[0] - _row_entropy(p).mean())


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE,
                              block_rows: int = SND_BLOCK_ROWS) -> float:
    """Saito et al.'s SND, higher is better: the mean entropy of each prediction's softmax over its cosine
    similarities to all *other* predictions (temperature ``temperature``), high when predictions form dense
    neighbourhoods. Computed ``block_rows`` rows at a time so memory is O(block_rows · N), never O(N²); the
    result does not depend on the block size beyond float rounding. NaN for fewer than two predictions."""
    p = _check(probs)
    n = p.shape[0]
    if n < 2:
        return float("nan")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    z = F.normalize(p.float(), dim=1)
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sim = z[start:stop] @ z.T / temperature
        rows = torch.arange(stop - start, device=z.device)
        sim[rows, rows + start] = float("-inf")  # a prediction is not its own neighbour
        total += _row_entropy(torch.softmax(sim, dim=1)).double().sum()
    return float(total / n)


VALIDATORS: dict[str, Callable[[torch.Tensor], float]] = {
    "entropy": entropy,
    "im": information_maximization,
    "snd": soft_neighborhood_density,
}

# history column -> +1 when higher is better, -1 when lower is; the two pre-existing label-free keys included
ORIENTATION: dict[str, float] = {
    **{f"val_{name}": 1.0 for name in VALIDATORS},
    "source_val_loss": -1.0,
    "pl_agreement": 1.0,
}


def snd_subset(n: int, limit: int = SND_MAX_IMAGES) -> torch.Tensor | None:
    """The rows SND scores when ``n`` exceeds ``limit``: ``limit`` of them, drawn once from a fixed seed (sorted);
    None means all rows."""
    if n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def score_all(probs: torch.Tensor) -> dict[str, float]:
    """Every validator's score on ``probs``, keyed by its ``history.csv`` column (``val_<name>``); SND on at most
    ``SND_MAX_IMAGES`` rows (:func:`snd_subset`)."""
    rows = snd_subset(probs.shape[0])
    snd_probs = probs if rows is None else probs[rows.to(probs.device)]
    return {f"val_{name}": fn(snd_probs if name == "snd" else probs) for name, fn in VALIDATORS.items()}


def _finite(x) -> float | None:
    """``x`` as a float when it is a finite number, else None (missing, None and NaN all count as absent)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def pick(history: list[dict], key: str) -> dict:
    """The epoch the label-free criterion ``key`` picks (best score, the first such epoch on ties, absent or NaN
    scores never picked), that epoch's ``target_metric``, the oracle's and ``regret = oracle − picked``.
    Without target labels (any epoch lacking a finite ``target_metric``) the accuracies and regret are None."""
    if key not in ORIENTATION:
        raise KeyError(f"unknown selection key {key!r}; known: {sorted(ORIENTATION)}")
    sign = ORIENTATION[key]
    best = None
    for rec in history:
        score = _finite(rec.get(key))
        if score is not None and (best is None or sign * score > sign * best[1]):
            best = (rec, score)
    targets = [_finite(rec.get("target_metric")) for rec in history]
    labelled = bool(history) and all(t is not None for t in targets)
    oracle = max(range(len(history)), key=lambda i: targets[i]) if labelled else None  # max(): first on ties
    picked_metric = _finite(best[0].get("target_metric")) if labelled and best is not None else None
    oracle_metric = targets[oracle] if oracle is not None else None
    return {
        "key": key,
        "epoch": best[0].get("epoch") if best is not None else None,
        "score": best[1] if best is not None else None,
        "target_metric": picked_metric,
        "oracle_epoch": history[oracle].get("epoch") if oracle is not None else None,
        "oracle_target_metric": oracle_metric,
        "regret": oracle_metric - picked_metric if picked_metric is not None and oracle_metric is not None else None,
    }


def selection_report(history: list[dict]) -> dict[str, dict]:
    """``pick`` for every label-free column present in ``history`` (validators, ``source_val_loss``,
    ``pl_agreement``), in ``ORIENTATION``'s order."""
    present = {k for rec in history for k in rec}
    return {key: pick(history, key) for key in ORIENTATION if key in present}
