"""Config resolution: the one way every entry point (CLI, flows, DVC) turns what it was given into a config.

Three layers, lowest first; a key set in a later one wins:

1. **the preset** (``paper``: the field defaults of :mod:`dapl.config`; ``official``: :data:`~dapl.config.PRESETS`)
   with the **dataset's recipe**: its τ from the registry and ``dapl/recipes/<dataset>.yaml`` if there is one;
2. **the config file** (``-c``/``config=``; ``params.yaml`` keeps it under ``dapl:``);
3. **the overrides**: named arguments (``dataset``, ``root``, ``backbone``, ``weights``, ``epochs``) and dotted
   overrides (``--set``, ``overrides=``).

**Paths**: a relative path written in a config file is relative to that file's folder (``params.yaml`` at the
project root: the project root); a relative path given as an argument, an override, or left at its default is
relative to ``workdir`` (the CLI: the current folder; the flow: its ``workdir`` parameter). Every path of the
result is absolute. A weights file that does not exist is an error, except the shipped toy checkpoint (which the
flow can pretrain). ``dapl config`` prints the result with the layer each value came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dapl.config import DaplConfig
from dapl.config_errors import describe_validation_error
from dapl.errors import ConfigError
from dapl.overrides import deep_merge, expand_dotted, flatten, load_yaml
from dapl.paths import TOY_CHECKPOINT, default_manifest, looks_like_path

RECIPES_DIR = Path(__file__).parent / "recipes"
PATH_FIELDS = ("data.root", "data.manifest", "features.cache_dir", "output_dir", "model.weights_dir")
# The fields that make a training recipe: printed with the results and logged.
RECIPE_FIELDS = ("preset", "model.name", "prompt.m1", "prompt.m2", "prompt.csc", "prompt.init", "prompt.init_std",
                 "prompt.text", "train.epochs", "train.lr", "train.max_grad_norm", "train.batch_source",
                 "train.batch_target", "train.loss", "features.views", "features.precision", "pseudo.tau")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML/JSON config as nested dict (``params.yaml`` keeps it under ``dapl:``), relative paths made
    absolute against the file's folder."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    raw = _mapping(load_yaml(p.read_text(), str(p)) or {}, p)
    if isinstance(raw.get("dapl"), dict):
        raw = raw["dapl"]
    return expand_dotted(_absolute_paths(flatten(raw), p.parent))


def _mapping(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    return raw


def _absolute_paths(flat: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths among ``flat``'s path fields (and weights files, model-config files) joined to ``base``."""
    out = dict(flat)
    for k, v in flat.items():
        if v is None or not isinstance(v, str | Path):
            continue
        s = str(v)
        is_path = (k in PATH_FIELDS or (k == "model.pretrained" and looks_like_path(s))
                   or (k == "model.name" and s.endswith(".json")))
        if is_path:
            q = Path(s).expanduser()
            out[k] = str(q if q.is_absolute() else base / q)
    return out


def recipe_file(dataset: str) -> Path:
    """Where a registry dataset's recipe is written (absent: the dataset trains with the preset as it is)."""
    from dapl.datasets.registry import get_spec

    return RECIPES_DIR / f"{get_spec(dataset).name}.yaml"


def _written(path: Path) -> dict[str, Any]:
    """A recipe file's settings as dotted keys ({} when there is no file)."""
    return flatten(_mapping(load_yaml(path.read_text(), str(path)) or {}, path)) if path.is_file() else {}


def dataset_recipe(dataset: str) -> dict[str, Any]:
    """The dataset's recipe (dotted overrides): its τ from the registry, so a resolved config always says the τ
    it trains with, then its recipe file."""
    from dapl.datasets.registry import get_spec

    return {"pseudo.tau": get_spec(dataset).tau, **_written(recipe_file(dataset))}


def default_weights(backbone: str) -> str:
    """The shipped toy checkpoint for ``toy-clip``; OpenAI's weights (tag ``openai``) for everything else."""
    return str(TOY_CHECKPOINT) if backbone == "toy-clip" else "openai"


@dataclass(frozen=True)
class Layers:
    """What a config is resolved from (see the module docstring): each layer a nested dict, paths absolute."""

    preset: str
    dataset: str
    recipe: dict[str, Any]
    file: dict[str, Any]
    file_path: Path | None
    overrides: dict[str, Any]
    workdir: Path

    def labelled(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, layer)`` above the preset's table; a label says where to fix a key ('' for an argument)."""
        return [(f"the {self.dataset} dataset recipe", self.recipe), (str(self.file_path or ""), self.file),
                ("", self.overrides)]

    def resolve(self) -> DaplConfig:
        """The config: the layers merged over the preset, then the defaults that depend on the result."""
        merged: dict[str, Any] = {}
        for _, layer in self.labelled():
            merged = deep_merge(merged, {k: v for k, v in layer.items() if k != "preset"})
        if "root" not in merged.get("data", {}):
            merged = deep_merge(merged, {"data": {"root": f"data/{self.dataset}"}})
        try:
            cfg = DaplConfig.from_preset(self.preset, merged)
        except ValidationError as e:  # one line naming the key, its layer (a file) and what it takes
            raise ConfigError(describe_validation_error(e, DaplConfig, _layer_of(self.labelled()))) from None
        if cfg.model.name == "toy-clip" and cfg.model.pretrained == "dapl":  # the shipped tag, as the file it names
            cfg = cfg.with_overrides({"model.pretrained": str(TOY_CHECKPOINT)})
        # what is still relative now came from a default: relative to workdir like the arguments
        keys = (*PATH_FIELDS, "model.pretrained", "model.name")
        cfg = cfg.with_overrides(_absolute_paths({k: v for k, v in cfg.flat().items() if k in keys}, self.workdir))
        if cfg.data.manifest is None:
            cfg = cfg.with_overrides({"data.manifest": str(default_manifest(cfg.data.dataset, cfg.data.root,
                                                                            self.workdir))})
        _check_weights(cfg)
        return cfg

    def origins(self) -> dict[str, str]:
        """``dotted key -> where its value came from``: the last layer that set it (a value none set is the
        preset's: a field default, or the preset's own table)."""
        out = dict.fromkeys(flatten(DaplConfig().to_dict()), f"preset {self.preset}")
        written = _written(recipe_file(self.dataset))
        stack = [*((_recipe_origin(self.dataset, k, written), {k: v}) for k, v in flatten(self.recipe).items()),
                 (_shown(self.file_path), flatten(self.file)), ("override", flatten(self.overrides))]
        for label, flat in stack:
            out |= dict.fromkeys((k for k in flat if k in out), label)
        return out


def _recipe_origin(dataset: str, key: str, written: dict[str, Any]) -> str:
    if key in written:
        return f"recipe {_shown(recipe_file(dataset))}"
    return f"the {dataset} dataset (registry)"


def _shown(path: Path | None) -> str:
    """A path as short as it can be said: relative to the current folder when under it."""
    if path is None:
        return ""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def config_layers(config: str | Path | None = None, *, preset: str | None = None, dataset: str | None = None,
                  root: str | Path | None = None, backbone: str | None = None, weights: str | None = None,
                  epochs: int | None = None, allow_incomplete: bool | None = None,
                  overrides: dict[str, Any] | None = None, workdir: str | Path | None = None) -> Layers:
    """The layers of a request (named arguments join the overrides); :func:`resolve_config` merges them."""
    wd = Path(workdir if workdir is not None else Path.cwd()).expanduser().absolute()
    file_layer = read_config_file(config) if config else {}
    named: dict[str, Any] = {}
    if dataset:
        from dapl.datasets.registry import get_spec

        named["data.dataset"] = get_spec(dataset).name
    if root:
        named["data.root"] = str(root)
    if backbone:
        named["model.name"] = backbone
        named["model.pretrained"] = weights or default_weights(backbone)
    elif weights:
        named["model.pretrained"] = weights
    if epochs:
        named["train.epochs"] = int(epochs)
    if allow_incomplete is not None:
        named["data.allow_incomplete"] = bool(allow_incomplete)
    over = expand_dotted(dict(overrides or {}))
    user = expand_dotted(_absolute_paths(flatten(deep_merge(expand_dotted(named), over)), wd))
    chosen_preset = preset or user.get("preset") or file_layer.get("preset") or "paper"
    if preset:
        user["preset"] = preset
    ds = user.get("data", {}).get("dataset") or file_layer.get("data", {}).get("dataset") or "toy"
    return Layers(chosen_preset, ds, expand_dotted(dataset_recipe(ds)), file_layer,
                  Path(config).expanduser().absolute() if config else None, user, wd)


def resolve_config(config: str | Path | None = None, **request: Any) -> DaplConfig:
    """The base configuration of every entry point; ``request``: the keywords of :func:`config_layers`."""
    return config_layers(config, **request).resolve()


def _layer_of(layers: list[tuple[str, dict[str, Any]]]) -> Callable[[str], str]:
    """``key -> label`` of the last layer that set ``key`` (or a section above or below it): where to fix it."""
    flats = [(label, flatten(layer)) for label, layer in layers]

    def source(key: str) -> str:
        for label, flat in reversed(flats):
            if any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in flat):
                return label
        return ""

    return source


def _check_weights(cfg: DaplConfig) -> None:
    pre = cfg.model.pretrained
    if pre and looks_like_path(pre) and not Path(pre).is_file() and Path(pre) != TOY_CHECKPOINT:
        raise FileNotFoundError(
            f"model.pretrained={pre}: no such file. Paths in a config file are relative to that file's folder, "
            "paths given as arguments to the current folder (the flow: its workdir); fix the path, or give a tag "
            "such as 'openai'.")


def format_config(layers: Layers) -> str:
    """The resolved config as YAML, each value followed by ``# <where it came from>`` (``dapl config``)."""
    cfg, origins = layers.resolve(), layers.origins()
    lines: list[str] = []

    def emit(d: dict[str, Any], prefix: str, indent: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"{indent}{k}:")
                emit(v, f"{prefix}{k}.", indent + "  ")
            else:
                value = yaml.safe_dump([v], default_flow_style=True, width=1 << 20).strip()[1:-1]  # one line
                lines.append(f"{indent}{k}: {value}  # {origins[prefix + k]}")

    emit(cfg.to_dict(), "", "")
    return "\n".join(lines) + "\n"


def recipe(cfg: DaplConfig) -> dict[str, Any]:
    """The training recipe of a resolved config (``pseudo.tau`` as used: the dataset default when unset)."""
    flat = cfg.flat()
    out = {k: flat[k] for k in RECIPE_FIELDS if k in flat}
    out["pseudo.tau"] = cfg.tau
    return out


def format_recipe(cfg: DaplConfig) -> str:
    subset = " (a subset: data.allow_incomplete=True)" if cfg.data.allow_incomplete else ""
    return f"recipe ({cfg.data.dataset}{subset}): " + ", ".join(f"{k}={v}" for k, v in recipe(cfg).items())
