"""The flow's parameters, declared once, and their mapping onto :mod:`dapl.plan` (the CLI's resolution and sweep).

:class:`FlowParams` is the one declaration: the flow's signature and the ``Args:`` of its docstring are built from
its fields (so ``-p key=value``, ``prefect deployment run --param key=value`` and the Prefect UI's form see flat,
typed, described parameters), and :meth:`FlowParams.request` resolves them. Pure (no Prefect), so tests can check
that the deployment's defaults and ``dapl benchmark -c params.yaml`` plan the same runs with the same configs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dapl.config import DaplConfig
from dapl.paths import PROJECT_ROOT
from dapl.plan import Run, Sweep, default_runs_dir, plan_runs, resolve_config


class FlowParams(BaseModel):
    """The ``dapl`` flow's parameters; None means the default of ``dapl.plan`` (shared with ``dapl benchmark``,
    ``dapl ablations`` and ``dvc repro``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field("full-benchmark", description='"full-benchmark", "ablations" or "adapt" (your own data).')
    dataset: str | None = Field(None, description=(
        "toy, office_home, visda2017, domainnet, mini_domainnet, office31 or folder (default: the config's "
        "data.dataset, else toy). Its registry recipe is applied above the preset."))
    root: str | None = Field(None, description="Dataset folder (default data/<dataset>).")
    backbone: str | None = Field(None, description="open_clip model name (default toy-clip).")
    weights: str | None = Field(None, description=(
        'A weights file or tag (default: the shipped toy checkpoint for toy-clip, else "openai").'))
    preset: str | None = Field(None, description='"paper" (default) or "official".')
    seeds: list[int] | None = Field(None, description="Training seeds (default [1]).")
    epochs: int | None = Field(None, description="Overrides train.epochs.")
    pairs: list[str] | None = Field(None, description=(
        '"source->target" pairs (default: the dataset\'s pairs; ablations: data.source->data.target).'))
    methods: list[str] | None = Field(None, description=(
        "Benchmark methods (default zero_shot, source_only, dapl; also dapl+, pseudo-labels that learn)."))
    pair: str | None = Field(None, description="The ablation pair (when pairs is not given).")
    settings: list[str] | None = Field(None, description="Ablation prompt settings (default all five).")
    m1m2: list[str] | None = Field(None, description='Ablation M1xM2 grid, e.g. ["8x8"] (default {4,8,16}x{4,8,16}).')
    taus: list[float] | None = Field(None, description="Ablation τ grid (default 0.4-0.7).")
    pseudo: list[str] | None = Field(None, description=(
        'Ablation pseudo-label variants (default "paper", "refresh", "templates", "refresh+templates").'))
    overrides: dict[str, Any] | None = Field(None, description=(
        'Dotted config overrides, e.g. {"train.lr": 0.002, "features.views": 4}.'))
    config: str | None = Field(None, description=(
        "A YAML config (e.g. params.yaml) to start from; paths in it are relative to its own folder."))
    sources: list[str] | None = Field(None, description="Local archives/folders for fetching a real dataset.")
    toy: dict[str, int] | None = Field(None, description="The toy world: {seed, images_per_class, size}.")
    workdir: str | None = Field(None, description=(
        "Base of relative arguments, runs/, artifacts/, cache/ (default: the project folder)."))
    tracking_uri: str | None = Field(None, description=(
        "MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db)."))
    experiment: str = Field("dapl", description="The MLflow experiment.")
    refresh: bool = Field(False, description=(
        "Ignore cached task results and stored runs and recompute (a finished training is re-read from its final "
        "checkpoint; delete its runs folder to train it again from scratch)."))
    source_dir: str | None = Field(None, description=(
        "adapt: your labelled source images, <class>/<image> folders (like `dapl adapt --source`)."))
    target_dir: str | None = Field(None, description="adapt: your unlabelled target images, one flat folder.")
    labelled_sample: str | None = Field(None, description=(
        "adapt: a CSV path,label of a few target images; the report scores each method on them (flagged)."))
    register_models: bool = Field(False, description=(
        "Register each trained run's prompts as an MLflow model dapl-<dataset>-<source>-<target>-<method> (a new "
        "version per run, alias champion on the latest; runs taken from the task cache are not registered)."))
    allow_incomplete: bool = Field(False, description=(
        "Accept a deliberate subset of a registry dataset (fewer images per domain than the official release), "
        "keeping its recipe, metric and manifest name; as `dapl data index --allow-incomplete`."))

    @classmethod
    def signature(cls) -> inspect.Signature:
        """The fields as keyword-only parameters with their types and defaults."""
        kw = inspect.Parameter.KEYWORD_ONLY
        return inspect.Signature([inspect.Parameter(name, kw, default=f.default, annotation=f.annotation)
                                  for name, f in cls.model_fields.items()])

    @classmethod
    def args_doc(cls) -> str:
        """The fields' descriptions as a docstring's ``Args:`` section (where Prefect's form reads them)."""
        return "Args:\n" + "".join(f"    {name}: {f.description}\n" for name, f in cls.model_fields.items())

    def request(self) -> FlowRequest:
        """Base config and sweep of one flow run; relative paths in arguments resolve against ``workdir``, those
        in the ``config`` file against the file's folder."""
        wd = Path(self.workdir or PROJECT_ROOT).expanduser().absolute()
        cfg = resolve_config(self.config if self.config is None else str(_under(self.config, wd)),
                             preset=self.preset, dataset=self.dataset, root=self.root, backbone=self.backbone,
                             weights=self.weights, epochs=self.epochs, allow_incomplete=self.allow_incomplete or None,
                             overrides=self.overrides, workdir=wd)
        if self.kind == "adapt":
            return self._adapt_request(cfg, wd)
        sweep = Sweep.parse(self.kind, seeds=self.seeds, methods=self.methods,
                            pairs=self.pairs or ([self.pair] if self.pair else None), settings=self.settings,
                            m1m2=self.m1m2, taus=self.taus, pseudo=self.pseudo)
        return FlowRequest(cfg, sweep, wd)

    def own_paths(self) -> tuple[str, str, str | None]:
        """adapt's folders and labelled sample, absolute (relative ones are under ``workdir``)."""
        wd = Path(self.workdir or PROJECT_ROOT).expanduser().absolute()
        paths = [str(_under(x, wd)) if x else None for x in (self.source_dir, self.target_dir, self.labelled_sample)]
        return paths[0] or "", paths[1] or "", paths[2]

    def _adapt_request(self, cfg: DaplConfig, wd: Path) -> FlowRequest:
        """`dapl adapt`'s plan: your folders as the pair source->target, runs under runs/adapt/<digest>."""
        from dapl.adapt_own import own_config, own_sweep
        from dapl.own_data import own_root

        if not (self.source_dir and self.target_dir):
            raise ValueError("kind adapt needs source_dir (class folders) and target_dir (a flat folder of images)")
        src, tgt = _under(self.source_dir, wd), _under(self.target_dir, wd)
        runs_dir = wd / "runs" / "adapt" / stable_name(str(src), str(tgt), cfg.digest())
        own = own_config(cfg, runs_dir / "manifest.parquet", own_root(src, tgt))
        return FlowRequest(own, own_sweep(tuple(self.seeds or (1,))), wd, runs_root=runs_dir)


@dataclass(frozen=True)
class FlowRequest:
    config: DaplConfig
    sweep: Sweep
    workdir: Path
    runs_root: Path | None = None  # adapt: its own folder (the manifest of your data lives there too)

    @property
    def runs_dir(self) -> Path:
        return self.runs_root or default_runs_dir(self.sweep.kind, self.config, self.workdir)

    def runs(self, domains: list[str]) -> list[Run]:
        """The flow's runs once the manifest has told which domains there are."""
        return plan_runs(self.sweep, self.config, domains, self.runs_dir)


def stable_name(*parts: str) -> str:
    """A short name that is the same for the same inputs (a folder per distinct adapt request)."""
    import hashlib

    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _under(path: str, workdir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p
