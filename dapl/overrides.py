"""Settings as nested dicts: dotted overrides (``train.lr=0.01``), merging, flattening and ``--set`` parsing."""

from __future__ import annotations

from typing import Any

import yaml

from dapl.errors import ConfigError


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
