"""Planning: from what was asked (a config and a sweep) to the list of runs, each with its own config.

The CLI (``dapl benchmark``/``dapl ablations``), the Prefect flow (``flows/``) and the DVC stages all go through
the two functions here, so they cannot disagree on a default:

* :func:`resolve_config` (:mod:`dapl.resolve`, imported here) builds the base :class:`DaplConfig` from its
  three layers: the preset with the dataset's recipe → the config file → the overrides.
* :class:`Sweep` says what to run (kind, seeds, methods, pairs, the ablation grids), with every default here;
  :func:`plan_runs` turns it into :class:`Run` s, each carrying its typed :class:`RunSpec` and its resolved
  config (computed once).

Pure: no Prefect, MLflow or DVC.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dapl.config import SECTIONS, DaplConfig, PromptConfig, PromptSetting
from dapl.resolve import format_recipe, recipe, resolve_config  # noqa: F401 (the planning layer's callers use them)

Kind = Literal["benchmark", "ablations"]
KINDS: tuple[str, ...] = ("benchmark", "ablations")
KIND_ALIASES = {"full-benchmark": "benchmark", "benchmark": "benchmark", "ablations": "ablations"}
METHODS: tuple[str, ...] = ("zero_shot", "source_only", "dapl", "dapl+")
DEFAULT_METHODS: tuple[str, ...] = METHODS[:3]  # the paper's comparison; dapl+ on request (--methods)
DEFAULT_SEEDS: tuple[int, ...] = (1,)
DEFAULT_SETTINGS: tuple[str, ...] = tuple(s.value for s in PromptSetting)
DEFAULT_M1M2: tuple[tuple[int, int], ...] = tuple(itertools.product((4, 8, 16), (4, 8, 16)))
DEFAULT_TAUS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7)
# How the target's pseudo-labels are made (ablation axis `pseudo`): the paper's fixed zero-shot labels, relabelled
# each epoch from a blend with the current prompts, a template-ensemble labeller, or both (= method dapl+).
PSEUDO_VARIANTS: tuple[str, ...] = ("paper", "refresh", "templates", "refresh+templates")
DEFAULT_PSEUDO: tuple[str, ...] = PSEUDO_VARIANTS


# -- the sweep ---------------------------------------------------------------------------------------------
def _items(value: Any) -> list[Any]:
    """A list from a CLI string (``"1,2"``) or a flow parameter (``[1, 2]``); None stays None."""
    if value is None:
        return None  # type: ignore[return-value]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def parse_pair(pair: str | Sequence[str]) -> tuple[str, str]:
    """``"real->art"`` (or a 2-sequence) as ``(source, target)``."""
    if not isinstance(pair, str):
        s, t = pair
        return str(s), str(t)
    if "->" not in pair:
        raise ValueError(f"pair {pair!r}: write it as 'source->target'")
    s, t = pair.split("->", 1)
    return s.strip(), t.strip()


def parse_m1m2(cell: str | Sequence[int]) -> tuple[int, int]:
    """``"4x8"`` (or ``[4, 8]``) as ``(M1, M2)``."""
    if not isinstance(cell, str):
        a, b = cell
        return int(a), int(b)
    a, sep, b = cell.lower().partition("x")
    if not sep:
        raise ValueError(f"M1xM2 cell {cell!r}: write it as '4x8'")
    return int(a), int(b)


@dataclass(frozen=True)
class Sweep:
    """What to run. ``pairs=None``: the dataset's pairs (benchmark) or ``data.source->data.target`` (ablations).

    Ablations run every prompt setting, every M1×M2 cell, every τ and every pseudo-label variant on each pair (an
    empty axis is skipped).
    """

    kind: Kind = "benchmark"
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    methods: tuple[str, ...] = DEFAULT_METHODS
    pairs: tuple[tuple[str, str], ...] | None = None
    settings: tuple[str, ...] = DEFAULT_SETTINGS
    m1m2: tuple[tuple[int, int], ...] = DEFAULT_M1M2
    taus: tuple[float, ...] = DEFAULT_TAUS
    pseudo: tuple[str, ...] = DEFAULT_PSEUDO

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}: choose one of {KINDS}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
        for s in self.settings:
            PromptSetting(s)
        bad = [v for v in self.pseudo if v not in PSEUDO_VARIANTS]
        if bad:
            raise ValueError(f"unknown pseudo-label variant(s) {bad}; choose from {PSEUDO_VARIANTS}")
        if not self.seeds:
            raise ValueError("seeds: give at least one")

    @classmethod
    def parse(cls, kind: str, seeds: Any = None, methods: Any = None, pairs: Any = None, settings: Any = None,
              m1m2: Any = None, taus: Any = None, pseudo: Any = None) -> Sweep:
        """From CLI strings (``"1,2"``, ``"real->art,art->real"``, ``"4x4,8x8"``) or flow lists; None = default."""
        if kind not in KIND_ALIASES:
            raise ValueError(f"kind {kind!r}: choose one of {sorted(KIND_ALIASES)}")
        kw: dict[str, Any] = {"kind": KIND_ALIASES[kind]}
        if seeds is not None:
            kw["seeds"] = tuple(int(s) for s in _items(seeds))
        if methods is not None:
            kw["methods"] = tuple(str(m) for m in _items(methods))
        if pairs is not None:
            raw = [pairs] if isinstance(pairs, str) and "," not in pairs else _items(pairs)
            kw["pairs"] = tuple(parse_pair(p) for p in raw) or None
        if settings is not None:
            kw["settings"] = tuple(PromptSetting(s).value for s in _items(settings))
        if m1m2 is not None:
            kw["m1m2"] = tuple(parse_m1m2(c) for c in _items(m1m2))
        if taus is not None:
            kw["taus"] = tuple(float(t) for t in _items(taus))
        if pseudo is not None:
            kw["pseudo"] = tuple(str(v) for v in _items(pseudo))
        return cls(**kw)


# The sections a run's result depends on (all but its output folder): dapl.config's list.
RUN_SECTIONS = SECTIONS


@dataclass(frozen=True)
class RunSpec:
    """One run: a pair, a seed, and what differs from the base config, as typed values.

    ``axis`` says which sweep axis the run belongs to: ``method`` (benchmark: zero_shot/source_only/dapl/dapl+),
    ``setting``, ``m1m2``, ``tau`` or ``pseudo`` (ablations; ``method`` is then ``dapl``).
    """

    source: str
    target: str
    seed: int
    method: str = "dapl"
    axis: str = "method"
    setting: str | None = None
    m1: int | None = None
    m2: int | None = None
    tau: float | None = None
    pseudo: str | None = None

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def label(self) -> str:
        """The row label of the results table (display only: never parsed back)."""
        if self.axis == "setting":
            return f"setting:{self.setting}"
        if self.axis == "m1m2":
            return f"m1m2:{self.m1}x{self.m2}"
        if self.axis == "tau":
            return f"tau:{self.tau}"
        if self.axis == "pseudo":
            return f"pseudo:{self.pseudo}"
        return self.method

    @property
    def slug(self) -> str:
        return f"{self.source}_{self.target}/{self.label.replace(':', '_')}/seed{self.seed}"


def pseudo_variant(base: DaplConfig, variant: str) -> dict[str, Any]:
    """The overrides of a pseudo-label variant. ``refresh``: relabelled every epoch from the zero-shot and the
    current target prompts' probabilities (linear schedule); ``templates``: the zero-shot side a template ensemble
    of the model's own phrasings (the toy CLIP: its caption templates; OpenAI's CLIP: its ImageNet set)."""
    refresh = {"pseudo.refresh": "linear", "pseudo.refresh_every": 1}
    templates = {"pseudo.templates": "toy-captions" if base.model.name == "toy-clip" else "clip-imagenet-80"}
    paper = {"pseudo.refresh": "none", "pseudo.templates": None}
    variants = {"paper": paper, "refresh": paper | refresh, "templates": paper | templates,
                "refresh+templates": refresh | templates}
    if variant not in variants:
        raise ValueError(f"unknown pseudo-label variant {variant!r}; choose from {PSEUDO_VARIANTS}")
    return variants[variant]


def dapl_plus(base: DaplConfig) -> dict[str, Any]:
    """DAPL with pseudo-labels that learn (issue 22): refreshed and from a template ensemble, fixed for every
    pair. Measured: docs/TOY.md."""
    return pseudo_variant(base, "refresh+templates")


def run_config(base: DaplConfig, spec: RunSpec, runs_dir: str | Path) -> DaplConfig:
    """The run's own config: the base with the pair, seed, output folder and the spec's typed changes."""
    over: dict[str, Any] = {"data.source": [spec.source], "data.target": [spec.target], "train.seed": spec.seed,
                            "output_dir": str(Path(runs_dir) / spec.slug)}
    p = base.prompt
    if spec.method == "zero_shot":
        over["prompt"] = PromptConfig.for_setting("manual").model_dump()
    elif spec.method == "source_only":
        # same prompt length, init and epochs as DAPL: one domain-agnostic context of M1 + M2 vectors (the
        # first M1 from prompt.init when set, the rest N(0, init_std^2): DAPL's own layout), no target loss
        over["prompt"] = PromptConfig.for_setting("unified", m1=(p.m1 + p.m2) or 16, init=p.init,
                                                  init_std=p.init_std, text=p.text).model_copy(
            update={"csc": p.csc}).model_dump()
        over["pseudo.enabled"] = False
    elif spec.method == "dapl+":
        over |= dapl_plus(base)
    elif spec.method != "dapl":
        raise ValueError(f"unknown method {spec.method!r}; choose from {METHODS}")
    if spec.axis == "setting":
        manual = PromptSetting(spec.setting) is PromptSetting.manual
        over["prompt"] = PromptConfig.for_setting(spec.setting, m1=p.m1 or 16, m2=p.m2 or 16,
                                                  init=None if manual else p.init, init_std=p.init_std,
                                                  text=p.text).model_dump()
    elif spec.axis == "m1m2":
        over["prompt.m1"], over["prompt.m2"] = spec.m1, spec.m2
        if p.init and spec.m1 != p.m1:
            over["prompt.init"] = None
    elif spec.axis == "tau":
        over["pseudo.tau"] = spec.tau
    elif spec.axis == "pseudo":
        over |= pseudo_variant(base, spec.pseudo or "paper")
    elif spec.axis != "method":
        raise ValueError(f"unknown sweep axis {spec.axis!r}")
    return base.with_overrides(over)


@dataclass(frozen=True)
class Run:
    """A planned run: its spec and its resolved config (computed once, by :func:`plan_runs`)."""

    spec: RunSpec
    config: DaplConfig

    @property
    def digest(self) -> str:
        """The config without its output folder: runs with equal digests train the same prompts."""
        return self.config.digest(*RUN_SECTIONS)

    def axes(self) -> dict[str, Any]:
        """The sweep axes as the run actually uses them (every run has all of them: MLflow can plot any)."""
        c = self.config
        return {"sweep.method": self.spec.method, "sweep.axis": self.spec.axis, "sweep.label": self.spec.label,
                "sweep.setting": c.prompt.setting.value, "sweep.m1": c.prompt.m1, "sweep.m2": c.prompt.m2,
                "sweep.tau": c.tau, "sweep.refresh": c.pseudo.refresh,
                "sweep.templates": _templates_name(c.pseudo.templates), "sweep.pair": self.spec.pair,
                "sweep.seed": self.spec.seed}


def _templates_name(templates: str | list[str] | None) -> str:
    """A template setting as one word for a tracker's axis: ``manual``, a named set, or ``<n> templates``."""
    if templates is None:
        return "manual"
    return templates if isinstance(templates, str) else f"{len(templates)} templates"


def default_pairs(dataset: str, domains: Sequence[str]) -> list[tuple[str, str]]:
    """The dataset's benchmark pairs (``DatasetSpec.pairs``; for discovered datasets every ordered pair)."""
    from dapl.datasets.registry import get_spec

    spec = get_spec(dataset)
    if spec.domain_keys:
        return list(spec.pairs)
    return list(itertools.permutations(domains, 2))


def sweep_specs(sweep: Sweep, base: DaplConfig, domains: Sequence[str]) -> list[RunSpec]:
    """Every run of the sweep, in table order (zero-shot and the manual setting are deterministic: one seed)."""
    seeds = list(sweep.seeds)
    out: list[RunSpec] = []
    if sweep.kind == "benchmark":
        pairs = list(sweep.pairs or default_pairs(base.data.dataset, domains))
        for (s, t), m in itertools.product(pairs, sweep.methods):
            out += [RunSpec(s, t, seed, m) for seed in (seeds[:1] if m == "zero_shot" else seeds)]
    else:
        if sweep.pairs:
            pairs = list(sweep.pairs)
        elif base.data.source[0] in domains and base.data.target[0] in domains:
            pairs = [(base.data.source[0], base.data.target[0])]
        else:
            pairs = default_pairs(base.data.dataset, domains)[:1]
        for s, t in pairs:
            for st in sweep.settings:
                one = PromptSetting(st) is PromptSetting.manual
                out += [RunSpec(s, t, seed, axis="setting", setting=st) for seed in (seeds[:1] if one else seeds)]
            out += [RunSpec(s, t, seed, axis="m1m2", m1=a, m2=b) for a, b in sweep.m1m2 for seed in seeds]
            out += [RunSpec(s, t, seed, axis="tau", tau=v) for v in sweep.taus for seed in seeds]
            out += [RunSpec(s, t, seed, axis="pseudo", pseudo=v) for v in sweep.pseudo for seed in seeds]
    unknown = sorted({d for r in out for d in (r.source, r.target)} - set(domains))
    if unknown:
        raise ValueError(f"domains {unknown} are not in {base.data.dataset} (domains: {list(domains)})")
    return out


def default_runs_dir(kind: str, base: DaplConfig, workdir: str | Path | None = None) -> Path:
    """``<workdir>/runs/<kind>/<dataset>-<digest>``: one folder per (kind, base configuration), so a rerun with
    the same inputs finds its checkpoints and a changed configuration never resumes from an incompatible one.
    The base's own ``output_dir`` is not part of the digest (every run replaces it)."""
    wd = Path(workdir if workdir is not None else Path.cwd()).absolute()
    return wd / "runs" / KIND_ALIASES[kind] / f"{base.data.dataset}-{base.digest(*RUN_SECTIONS)[:10]}"


def plan_runs(sweep: Sweep, base: DaplConfig, domains: Sequence[str], runs_dir: str | Path) -> list[Run]:
    """The sweep's runs in table order, each with its config resolved once.

    A label whose config equals an earlier label's (the ablations' unified+domain setting, 16x16 cell and
    τ-default cell are one configuration) gets that run's config, output folder included: one run, one result,
    shown under every label."""
    rdir = Path(runs_dir).absolute()
    first: dict[str, DaplConfig] = {}
    runs = []
    for spec in sweep_specs(sweep, base, domains):
        run = Run(spec, run_config(base, spec, rdir))
        runs.append(Run(spec, first.setdefault(run.digest, run.config)))
    return runs


def distinct_runs(runs: Iterable[Run]) -> list[Run]:
    """The first label of each configuration: what is trained (the other labels share its result)."""
    first: dict[str, Run] = {}
    for r in runs:
        first.setdefault(r.digest, r)
    return list(first.values())


def feature_groups(runs: Iterable[Run]) -> list[tuple[str, str]]:
    """Pairs of domains that together cover every domain once: each image is encoded by one task only."""
    doms = list(dict.fromkeys(d for r in runs for d in (r.spec.source, r.spec.target)))
    groups = [tuple(doms[i:i + 2]) for i in range(0, len(doms), 2)]
    return [(g[0], g[1]) if len(g) == 2 else (g[0], doms[0]) for g in groups]


def pairs_of(runs: Iterable[Run]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.spec.source, r.spec.target) for r in runs))


def for_pair(cfg: DaplConfig, source: str, target: str) -> DaplConfig:
    return cfg.with_overrides({"data.source": [source], "data.target": [target]})
