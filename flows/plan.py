"""The flow's parameters mapped onto :mod:`dapl.plan` (the same resolution and sweep the CLI uses).

Pure (no Prefect), so tests can check that the deployment's defaults and ``dapl benchmark -c params.yaml`` plan
the same runs with the same configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapl.config import DaplConfig
from dapl.paths import PROJECT_ROOT
from dapl.plan import Run, Sweep, default_runs_dir, plan_runs, resolve_config


@dataclass(frozen=True)
class FlowRequest:
    config: DaplConfig
    sweep: Sweep
    workdir: Path

    @property
    def runs_dir(self) -> Path:
        return default_runs_dir(self.sweep.kind, self.config, self.workdir)

    def runs(self, domains: list[str]) -> list[Run]:
        """The flow's runs once the manifest has told which domains there are."""
        return plan_runs(self.sweep, self.config, domains, self.runs_dir)


def from_params(kind: str = "full-benchmark", dataset: str | None = None, root: str | None = None,
                backbone: str | None = None, weights: str | None = None, preset: str | None = None,
                seeds: list[int] | None = None, epochs: int | None = None, pairs: list[str] | None = None,
                methods: list[str] | None = None, pair: str | None = None, settings: list[str] | None = None,
                m1m2: list[Any] | None = None, taus: list[float] | None = None,
                overrides: dict[str, Any] | None = None, config: str | None = None,
                workdir: str | None = None, allow_incomplete: bool = False, **_: Any) -> FlowRequest:
    """Base config and sweep of one flow run; relative paths in arguments resolve against ``workdir`` (default:
    the project folder), those in the ``config`` file against the file's folder."""
    wd = Path(workdir or PROJECT_ROOT).expanduser().absolute()
    cfg = resolve_config(config if config is None else str(_under(config, wd)), preset=preset, dataset=dataset,
                         root=root, backbone=backbone, weights=weights, epochs=epochs,
                         allow_incomplete=allow_incomplete or None, overrides=overrides, workdir=wd)
    sweep = Sweep.parse(kind, seeds=seeds, methods=methods, pairs=pairs or ([pair] if pair else None),
                        settings=settings, m1m2=m1m2, taus=taus)
    return FlowRequest(cfg, sweep, wd)


def _under(path: str, workdir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p
