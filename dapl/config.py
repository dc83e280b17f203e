"""One typed configuration object: the single source of every hyper-parameter.

CLI flags (``--set section.field=value``), ``params.yaml`` and Prefect parameters all map onto
:class:`DaplConfig`. Two presets: ``paper`` (the default, the method as published) and ``official`` (the
authors' released code, minus its scheduler bug and oracle model selection).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dapl.overrides import deep_merge, expand_dotted, flatten

# The hand-written prompt, written once: zero-shot pseudo-labels, the manual setting, the prompt learner.
MANUAL_TEMPLATE = "a photo of a {}."


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(_Section):
    """Which frozen CLIP to load, and where from."""

    name: str = Field("toy-clip", description="open_clip model name, a name in dapl/model_configs, "
                      "or a path to an open_clip model-config JSON")
    pretrained: str | None = Field("dapl", description="pretrained tag (e.g. 'openai'; 'dapl' = shipped in "
                                   "dapl/assets, the toy-clip), a local weights file "
                                   "(OpenAI TorchScript/state dict or open_clip format), or null for random init")
    weights_dir: Path | None = Field(None, description="folder searched for '<name>_<tag>.pt' before any download "
                                     "(default: $DAPL_WEIGHTS_DIR or ~/.cache/dapl/weights)")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="autocast (fp16 images, bf16 text) on CUDA; CPU always runs fp32")


class PromptSetting(StrEnum):
    """The five prompt settings of the paper's ablation."""

    manual = "manual"  # MANUAL_TEMPLATE with the class name (zero-shot, nothing learned)
    unified = "unified"  # domain-agnostic unified context only (CoOp-style)
    class_specific = "class_specific"  # domain-agnostic class-specific context only
    unified_domain = "unified_domain"  # unified + domain-specific context (DAPL default)
    class_specific_domain = "class_specific_domain"  # class-specific + domain-specific context


class PromptConfig(_Section):
    """Learned context: M1 domain-agnostic vectors (shared or per class) + M2 vectors per domain."""

    m1: int = Field(16, ge=0, description="domain-agnostic context length")
    m2: int = Field(16, ge=0, description="domain-specific context length (per domain)")
    csc: bool = Field(False, description="class-specific domain-agnostic context")
    init: str | None = Field(None, description="initialise the first domain-agnostic vectors from these words "
                             "(their token embeddings; at most m1 tokens, the rest N(0, std^2)); null = N(0, std^2)")
    init_std: float = 0.02
    text: Literal["paper", "official"] = Field("paper", description="'paper': X.. {class}.  'official': "
                                               "X.. {class} , a {domain} image..")

    @property
    def learned(self) -> bool:
        return self.m1 + self.m2 > 0

    @property
    def setting(self) -> PromptSetting:
        if self.m1 == 0 and self.m2 == 0:
            return PromptSetting.manual
        if self.m2 == 0:
            return PromptSetting.class_specific if self.csc else PromptSetting.unified
        return PromptSetting.class_specific_domain if self.csc else PromptSetting.unified_domain

    @staticmethod
    def for_setting(setting: PromptSetting | str, m1: int = 16, m2: int = 16, **kw: Any) -> PromptConfig:
        s = PromptSetting(setting)
        table = {
            PromptSetting.manual: (0, 0, False),
            PromptSetting.unified: (m1, 0, False),
            PromptSetting.class_specific: (m1, 0, True),
            PromptSetting.unified_domain: (m1, m2, False),
            PromptSetting.class_specific_domain: (m1, m2, True),
        }
        a, b, c = table[s]
        return PromptConfig(m1=a, m2=b, csc=c, **kw)


class PseudoLabelConfig(_Section):
    """Zero-shot pseudo-labels for target images."""

    template: str = MANUAL_TEMPLATE
    tau: float | None = Field(None, ge=0.0, le=1.0, description="confidence threshold; null = the dataset's "
                              "default (DatasetSpec.tau in dapl/datasets/registry.py)")
    enabled: bool = Field(True, description="false = source-only prompt learning (no target loss)")
    templates: str | list[str] | None = Field(
        None, description="the zero-shot labeller as a template ensemble (each class: the normalised mean over "
        "templates): a set of dapl/templates.py (clip-imagenet-80, clip-imagenet-7, toy-captions) or a list; "
        "null = `template` alone (the paper)")
    refresh: Literal["none", "linear", "constant"] = Field(
        "none", description="relabel the target every refresh_every epochs from (1-w)·p_zero_shot + w·p_model: "
        "w = epoch/epochs (linear, as DAMP), refresh_weight (constant), or 0 (none: the paper)")
    refresh_every: int = Field(1, ge=1, description="epochs between relabellings of the target")
    refresh_weight: float = Field(0.5, ge=0.0, le=1.0, description="w of the constant schedule")


class FeatureConfig(_Section):
    """How images reach the trainer: cached frozen features (fast) or the encoder on every step."""

    mode: Literal["cached", "online"] = "cached"
    views: int = Field(8, ge=1, description="random augmented train views cached per image")
    cache_dir: Path = Path("cache/features")
    dtype: Literal["float16", "float32"] = Field("float16", description="on-disk feature precision")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="image-encoder precision for extraction: 'auto' = fp16 on CUDA, bf16 on a CPU with "
        "native bf16 (toy averages within 0.3 points of fp32, docs/PERFORMANCE.md), fp32 elsewhere; part of the "
        "cache key")
    batch_size: int = Field(64, ge=1, description="DataLoader batch (the encoder's batch is fixed by the format)")
    num_workers: int = Field(2, ge=0)
    chunk_size: int = Field(2048, ge=1, description="images per chunk file of a view: what a kill can lose")
    memmap: bool = Field(True, description="train views memory-mapped from the cache (training reads only each "
                         "batch's rows) instead of loaded whole")
    crop_scale_min: float = Field(0.08, gt=0.0, le=1.0, description="RandomResizedCrop lower scale")
    hflip: bool = True


class TrainConfig(_Section):
    """Prompt optimisation (paper recipe)."""

    epochs: int = Field(25, ge=1)
    lr: float = Field(0.003, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = Field(0, ge=0)
    warmup_lr: float = Field(1e-5, ge=0)
    max_grad_norm: float = Field(0.0, ge=0, description="clip the prompt gradient's total norm to this "
                                 "(0 = never; the paper does not clip): one loss spike then cannot throw the "
                                 "context out of the region where the text tower reads the class name")
    batch_source: int = Field(32, ge=1)
    batch_target: int = Field(32, ge=1)
    seed: int = 1
    loss: Literal["contrastive", "kway"] = Field("contrastive", description="'contrastive': paper, over all "
                                                 "domain x class prompts; 'kway': released code, per-domain")
    text_chunk: int = Field(0, ge=0, description="encode prompts in chunks of this many (0 = all at once); "
                            "lowers peak memory for many classes x domains")
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints (0 = never)")


class EvalConfig(_Section):
    """What is reported, and how a label-free epoch is chosen."""

    selection: Literal["last", "source_val", "pl_agreement", "entropy", "im", "snd"] = Field(
        "last", description="'last' (default, honest), 'source_val' (lowest loss on held-out source images), "
        "'pl_agreement' (highest agreement with confident zero-shot target pseudo-labels), or a validator of "
        "dapl/validators.py: 'entropy', 'im' (information maximisation), 'snd' (soft neighbourhood density)")
    source_val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="source images held out for selection")


class DataConfig(_Section):
    """Which images: a dataset of the registry (or the toy world), and the adaptation task."""

    dataset: str = "toy"
    root: Path = Path("data/toy")
    manifest: Path | None = None
    source: list[str] = Field(default_factory=lambda: ["real"])
    target: list[str] = Field(default_factory=lambda: ["art"])
    allow_incomplete: bool = Field(False, description="accept a deliberate subset: fewer images per domain than "
                                   "the official release (fetch and index record it as incomplete_domain)")

    @model_validator(mode="after")
    def _domains_distinct(self) -> DataConfig:
        if not self.source or not self.target:
            raise ValueError("data.source and data.target each need at least one domain")
        both = set(self.source) & set(self.target)
        if both:
            raise ValueError(f"domain(s) {sorted(both)} are both source and target; pick distinct domains")
        return self

    @property
    def domains(self) -> list[str]:
        """Run's domain order: sources first, then targets (prompt index = domain * K + class)."""
        return [*self.source, *self.target]


class DaplConfig(_Section):
    """Everything a run depends on. Serialise with :meth:`to_dict`; hash with :meth:`digest`."""

    preset: Literal["paper", "official"] = "paper"
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    pseudo: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    output_dir: Path = Path("runs/default")

    @model_validator(mode="after")
    def _check(self) -> DaplConfig:
        if self.eval.selection == "source_val" and self.eval.source_val_fraction <= 0:
            raise ValueError("eval.selection=source_val needs eval.source_val_fraction > 0 (e.g. 0.1)")
        return self

    @property
    def tau(self) -> float:
        """``pseudo.tau``, else the dataset's default from the registry (``DEFAULT_TAU`` for an unknown one)."""
        if self.pseudo.tau is not None:
            return self.pseudo.tau
        from dapl.datasets.registry import DEFAULT_TAU, get_spec

        try:
            return get_spec(self.data.dataset).tau
        except (KeyError, ValueError):
            return DEFAULT_TAU

    # -- presets and (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "paper", overrides: dict[str, Any] | None = None) -> DaplConfig:
        """A preset, then nested ``overrides`` (``{"train": {"lr": 0.01}}`` or ``{"train.lr": 0.01}``)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose 'paper' or 'official'")
        base: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
        return cls.model_validate(deep_merge(base, expand_dotted(overrides or {})))

    @classmethod
    def load(cls, path: str | Path) -> DaplConfig:
        """From YAML/JSON; a top-level ``preset`` key selects the base, the rest overrides it."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if "dapl" in raw and isinstance(raw["dapl"], dict):  # params.yaml keeps the config under `dapl:`
            raw = raw["dapl"]
        return cls.from_preset(raw.pop("preset", "paper"), raw)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: dict[str, Any]) -> DaplConfig:
        return type(self).model_validate(deep_merge(self.to_dict(), expand_dotted(overrides)))

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.003, ...}``: for experiment trackers."""
        return flatten(self.to_dict())

    def digest(self, *sections: str) -> str:
        """Stable hash of the given sections (all if none): cache keys for derived artifacts."""
        d = self.to_dict()
        part = {s: d[s] for s in sections} if sections else d
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


# What each preset changes from the field defaults above (which are the paper's).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "official": {"prompt": {"text": "official"}, "train": {"loss": "kway"}},  # the authors' released code
}
# The config sections (every field of DaplConfig but preset and output_dir): what a run's numbers depend on.
SECTIONS: tuple[str, ...] = tuple(n for n, f in DaplConfig.model_fields.items()
                                  if isinstance(f.annotation, type) and issubclass(f.annotation, _Section))
