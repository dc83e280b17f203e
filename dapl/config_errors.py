"""One-line config errors: the key at fault, the nearest valid key, the expected type or range, and the file."""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dapl.errors import ConfigError
from dapl.overrides import flatten

M = TypeVar("M", bound=BaseModel)
_BOUNDS = ((Gt, "gt", ">"), (Ge, "ge", ">="), (Lt, "lt", "<"), (Le, "le", "<="))


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
