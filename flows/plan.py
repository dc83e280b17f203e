"""From flow parameters to work: the base :class:`DaplConfig`, the runs (pair, method, seed) and the feature
groups. Pure functions (no Prefect), so the plan can be tested and printed without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapl.benchmark import METHODS, RunSpec, ablation_specs, benchmark_specs
from dapl.config import DaplConfig
from dapl.datasets.registry import get_spec
from tasks.common import PROJECT_ROOT, stable_hash

KINDS = ("full-benchmark", "ablations")
TOY_CHECKPOINT = PROJECT_ROOT / "dapl" / "assets" / "toy-clip.pt"
DEFAULT_M1M2 = ("4x4", "8x8", "16x16", "4x16", "16x4")
DEFAULT_TAUS = (0.4, 0.5, 0.6, 0.7)


def default_weights(backbone: str) -> str:
    """The shipped toy checkpoint for ``toy-clip``; OpenAI's weights (tag ``openai``) for everything else."""
    return str(TOY_CHECKPOINT) if backbone == "toy-clip" else "openai"


def _abs(path: str | Path | None, workdir: Path) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else (workdir / p)


def base_config(dataset: str = "toy", root: str | None = None, backbone: str | None = None,
                weights: str | None = None, preset: str | None = None, epochs: int | None = None,
                overrides: dict[str, Any] | None = None, config: str | None = None,
                workdir: str | Path = PROJECT_ROOT) -> DaplConfig:
    """The configuration every run of the flow starts from (before the run's pair/method/seed are applied).

    Order: ``config`` YAML (or ``preset``), then the named parameters, then ``overrides`` (dotted keys); relative
    paths are resolved against ``workdir`` so served runs and Dask workers see the same files.
    """
    wd = Path(workdir).absolute()
    if config:
        cfg = DaplConfig.load(_abs(config, wd))
        if preset and preset != cfg.preset:
            cfg = DaplConfig.from_preset(preset, {k: v for k, v in cfg.to_dict().items() if k != "preset"})
    else:
        cfg = DaplConfig.from_preset(preset or "paper")
    spec = get_spec(dataset)
    over: dict[str, Any] = {"data.dataset": spec.name}
    if root or not config:
        over["data.root"] = root or f"data/{spec.name}"
    if backbone or not config:
        over["model.name"] = backbone or "toy-clip"
        over["model.pretrained"] = weights or default_weights(backbone or "toy-clip")
    elif weights:
        over["model.pretrained"] = weights
    if epochs:
        over["train.epochs"] = int(epochs)
    cfg = cfg.with_overrides(over).with_overrides(dict(overrides or {}))
    data_root = _abs(cfg.data.root, wd)
    manifest = _abs(cfg.data.manifest, wd) or default_manifest(spec.name, data_root, wd)
    paths: dict[str, Any] = {"data.root": str(data_root), "data.manifest": str(manifest),
                             "features.cache_dir": str(_abs(cfg.features.cache_dir, wd))}
    pre = cfg.model.pretrained
    if pre and (pre.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in pre):
        paths["model.pretrained"] = str(_abs(pre, wd))
    if cfg.model.name.endswith(".json"):
        paths["model.name"] = str(_abs(cfg.model.name, wd))
    return cfg.with_overrides(paths)


def default_manifest(dataset: str, root: Path, workdir: Path) -> Path:
    """``artifacts/manifests/<dataset>.parquet`` for ``data/<dataset>``; another root gets its own file."""
    folder = workdir / "artifacts" / "manifests"
    if root.absolute() == (workdir / "data" / dataset).absolute():
        return folder / f"{dataset}.parquet"
    return folder / f"{dataset}-{stable_hash(str(root.absolute()))[:8]}.parquet"


def runs_dir(kind: str, cfg: DaplConfig, workdir: str | Path = PROJECT_ROOT) -> Path:
    """One folder per (kind, base configuration): a rerun with the same parameters finds its checkpoints, a
    changed configuration can never resume from an incompatible one."""
    return Path(workdir).absolute() / "runs" / kind / f"{cfg.data.dataset}-{cfg.digest()[:10]}"


def parse_pair(pair: str) -> tuple[str, str]:
    for sep in ("->", ":", ","):
        if sep in pair:
            s, t = pair.split(sep, 1)
            return s.strip(), t.strip()
    raise ValueError(f"pair {pair!r}: write it as 'source->target'")


def parse_grid(items: list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    out = []
    for it in items:
        a, b = str(it).lower().split("x")
        out.append((int(a), int(b)))
    return out


def plan_runs(kind: str, cfg: DaplConfig, domains: list[str], seeds: list[int], pairs: list[str] | None = None,
              methods: list[str] | None = None, pair: str | None = None, m1m2: list[str] | None = None,
              taus: list[float] | None = None) -> list[RunSpec]:
    """Every independent run of the flow: the benchmark's pair × method × seed, or the ablation grid on one pair."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {KINDS}")
    seeds = [int(s) for s in seeds] or [1]
    if kind == "full-benchmark":
        chosen = [parse_pair(p) for p in pairs] if pairs else list(get_spec(cfg.data.dataset).tasks) or None
        specs = benchmark_specs(domains, seeds, tuple(methods or METHODS), chosen)
    else:
        if pair:
            the_pair = parse_pair(pair)
        elif cfg.data.source[0] in domains and cfg.data.target[0] in domains:
            the_pair = (cfg.data.source[0], cfg.data.target[0])
        else:
            the_pair = (domains[0], domains[1])
        grid = parse_grid(list(DEFAULT_M1M2) if m1m2 is None else m1m2)
        specs = ablation_specs(the_pair, seeds, grid, list(DEFAULT_TAUS) if taus is None else taus)
    unknown = {d for s in specs for d in (s.source, s.target)} - set(domains)
    if unknown:
        raise ValueError(f"domains {sorted(unknown)} are not in {cfg.data.dataset} (domains: {domains})")
    return specs


def feature_groups(specs: list[RunSpec]) -> list[tuple[str, str]]:
    """Pairs of domains that together cover every domain once: each image is encoded by one task only."""
    doms = list(dict.fromkeys(d for s in specs for d in (s.source, s.target)))
    groups = [tuple(doms[i:i + 2]) for i in range(0, len(doms), 2)]
    return [(g[0], g[1]) if len(g) == 2 else (g[0], doms[0]) for g in groups]


def pairs_of(specs: list[RunSpec]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s.source, s.target) for s in specs))


def for_pair(cfg: DaplConfig, source: str, target: str) -> DaplConfig:
    return cfg.with_overrides({"data.source": [source], "data.target": [target]})
