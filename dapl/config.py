"""One typed configuration object: the single source of every hyper-parameter.

CLI flags (``--set section.field=value``), ``params.yaml`` and Prefect parameters all map onto
:class:`DaplConfig`. Two presets: ``paper`` (the default, the method as published) and ``official`` (the
authors' released code, minus its scheduler bug and oracle model selection).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dapl.errors import UserError

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


def expand_dotted(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        v = expand_dotted(v) if isinstance(v, dict) else v
        parts = k.split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = deep_merge(cur.get(parts[-1], {}), v) if isinstance(v, dict) else v
    return out


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "data.target=[art,clipart]"]`` -> dotted overrides (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = load_yaml(v, f"--set {item}")
    return out


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` whose syntax errors are one :class:`ConfigError` line naming ``where`` (a file, a flag)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e}{at})") from None


# -- one-line config errors ---------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)
_BOUNDS = ((Gt, "gt", ">"), (Ge, "ge", ">="), (Lt, "lt", "<"), (Le, "le", "<="))


class ConfigError(UserError, ValueError):
    """A config key or value the user can fix: one line naming where it came from, the key and the fix."""


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model class of a nested section field (``train: TrainConfig``), else None."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model``: its sections and their fields (the candidates of "did you mean")."""
    out: list[str] = []
    for name, f in model.model_fields.items():
        out.append(prefix + name)
        sub = _section(f.annotation)
        if sub is not None:
            out += config_keys(sub, f"{prefix}{name}.")
    return out


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    """The field a validation error's location points at (list indices skipped), if it is one."""
    field = None
    for part in loc:
        if model is None:
            break
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _section(field.annotation)
    return field


def _type_name(t: Any) -> str:
    """A type annotation as a user reads it: ``float``, ``'paper' or 'official'``, ``list of str``, ..."""
    origin, args = get_origin(t), get_args(t)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__} of " + ", ".join(_type_name(a) for a in args if a is not Ellipsis)
    if _section(t) is not None:
        return "a section (a mapping of its keys)"
    if isinstance(t, type) and issubclass(t, StrEnum):
        return " or ".join(repr(m.value) for m in t)
    return {Path: "path"}.get(t, getattr(t, "__name__", str(t)))


def describe_field(field: FieldInfo) -> str:
    """What a field takes: its type, bounds and default (``float > 0 (default 0.003)``)."""
    t, args = field.annotation, get_args(field.annotation)
    optional = get_origin(t) in (Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        t = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 (a runtime-built union)
    bounds = [f"{sym} {getattr(m, attr)}" for m in field.metadata for cls, attr, sym in _BOUNDS if isinstance(m, cls)]
    text = _type_name(t) + (" " + " and ".join(bounds) if bounds else "") + (", or null" if optional else "")
    if field.default is not PydanticUndefined and _section(field.annotation) is None:
        text += f" (default {json.dumps(field.default, default=str)})"
    return text


def _show(value: Any, limit: int = 60) -> str:
    """A value on one short line (JSON, the way YAML/--set spelled it)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _section_at(model: type[BaseModel], dotted: str) -> type[BaseModel] | None:
    """The section model named by ``dotted`` (``""``: ``model`` itself), None if there is no such section."""
    if not dotted:
        return model
    field = _field_at(model, tuple(dotted.split(".")))
    return _section(field.annotation) if field is not None else None


def _nearest_key(key: str, model: type[BaseModel]) -> str | None:
    """The valid key ``key`` was most likely meant as: a sibling spelt alike, else the same name in another
    section (``lr`` -> ``train.lr``), else the closest whole key (``trian.lr`` -> ``train.lr``)."""
    parent, _, leaf = key.rpartition(".")
    level = _section_at(model, parent)
    if level is not None:
        near = difflib.get_close_matches(leaf, list(level.model_fields), n=1, cutoff=0.6)
        if near:
            return f"{parent}.{near[0]}" if parent else near[0]
        elsewhere = [k for k in config_keys(model) if difflib.get_close_matches(leaf, [k.rpartition(".")[2]],
                                                                                cutoff=0.8)]
        return elsewhere[0] if elsewhere else None
    near = difflib.get_close_matches(key, config_keys(model), n=1, cutoff=0.6)
    return near[0] if near else None


def unknown_key_message(key: str, model: type[BaseModel]) -> str:
    """``unknown key `train.lrr`; did you mean `train.lr`?`` (else the valid keys at that level)."""
    near = _nearest_key(key, model)
    if near:
        return f"unknown key `{key}`; did you mean `{near}`?"
    parent = key.rpartition(".")[0]
    level = _section_at(model, parent)
    if level is None:
        parent, level = "", model
    return f"unknown key `{key}`; valid keys{f' of `{parent}`' if parent else ''}: {', '.join(level.model_fields)}"


def describe_validation_error(err: ValidationError, model: type[BaseModel],
                              source: Callable[[str], str] | None = None) -> str:
    """A pydantic error as one line: where the value came from (``source(key)``: a file, or '' for an
    argument), the key, what is wrong and what the key takes; further problems are only counted."""
    errors = err.errors()
    e = errors[0]
    key = ".".join(str(p) for p in e["loc"])
    field_key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
    where = source(field_key) if source else ""
    if e["type"] == "extra_forbidden":
        if isinstance(e["input"], dict) and e["input"]:  # a misspelt section: name its first key in full
            key = f"{key}.{next(iter(flatten(e['input'])))}"
        text = unknown_key_message(key, model)
    elif e["type"] == "value_error":  # a model validator's own message (already says the fix)
        text = e["msg"].removeprefix("Value error, ")
    else:
        msg = e["msg"][:1].lower() + e["msg"][1:]
        field = _field_at(model, e["loc"])
        takes = f"; `{field_key}` takes {describe_field(field)}" if field is not None else ""
        text = f"{key}={_show(e['input'])}: {msg}{takes}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return " ".join(f"{where + ': ' if where else ''}{text}{more}".split())  # one line, whatever came in


def validated(model: type[M], data: dict[str, Any], where: str = "") -> M:
    """``model`` from ``data``, or a :class:`ConfigError` with a one-line message (``where``: a file, if any)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, model, lambda _key: where)) from None
