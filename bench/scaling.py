"""Scaling with the number of classes and domains: step time and peak memory of our training step.

Each configuration gets a fresh learner; its first (untimed) step measures peak memory with the peak-RSS
counter reset just before it. The prompt-token count shows why the cost grows so slowly: a unified context
costs one prefix per domain plus only the class-name/EOT positions per (domain, class).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import Samples, domain_names, interleaved
from bench.step import OursStep, learner_for
from dapl.models import ClipBundle
from dapl.prompts import PromptLearner

MEMORY_LIMIT_GIB = 24.0


def prompt_tokens(learner: PromptLearner) -> int:
    """Positions the text transformer processes per forward (prefixes once + packed suffixes, or cut rows)."""
    K, D = learner.n_classes, learner.n_domains
    if learner.shares_prefix:
        prefix, suffix, eot = learner.shared_parts()
        Lp = prefix.shape[1]
        return prefix.shape[0] * Lp + int((eot - Lp + 1).clamp(1, suffix.shape[2]).sum())
    return D * K * learner.length


def official_tokens(K: int, D: int) -> int:
    """The released structure: (D·K learned + K zero-shot) prompts × 77 positions, twice per step."""
    return 2 * (D * K + K) * 77


@dataclass
class ScalePoint:
    setting: str
    K: int
    D: int
    chunk: int
    tokens: int
    samples: Samples

    @property
    def ok(self) -> bool:
        return self.samples.memory.get("peak_rss_gib", 0.0) < MEMORY_LIMIT_GIB


def auto_chunk(setting: str, K: int, D: int, limit_prompts: int = 1024) -> int:
    """Checkpoint the class-specific encoder in chunks beyond ``limit_prompts`` prompts (bounded memory)."""
    return 512 if setting == "csc" and limit_prompts < K * D else 0


def run_point(bundle: ClipBundle, names: list[str], D: int, setting: str, reps: int) -> ScalePoint:
    full = {"unified": "unified_domain", "csc": "class_specific_domain"}[setting]
    learner = learner_for(bundle, names, domain_names(D), full)
    chunk = auto_chunk(setting, len(names), D)
    step = OursStep(bundle, learner, chunk=chunk)
    samples, _ = interleaved({"step": step}, reps, bundle.device)
    return ScalePoint(setting, len(names), D, chunk, prompt_tokens(learner), samples["step"])
