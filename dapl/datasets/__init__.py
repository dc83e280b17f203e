"""Datasets: registry, fetch (download, safe extraction, layout), index/validation into a polars manifest,
and torch loading. Pure library: the CLI, Prefect tasks and DVC stages call these functions.

The names below are imported on first use (PEP 562), so ``dapl.datasets.registry`` (``dapl data list``,
``dapl config``) does not pay for polars and PIL, which only indexing and manifests need.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "safe_extract": "archive",
    **dict.fromkeys(("ChecksumError", "DatasetError", "DatasetLayoutError", "DatasetUnavailable",
                     "IncompleteDatasetError", "UnknownDatasetError", "UnsafeArchiveError",
                     "UnusableDatasetError"), "errors"),
    **dict.fromkeys(("download", "offline_reason"), "download"),
    **dict.fromkeys(("fetch_dataset", "normalise_layout"), "fetch"),
    **dict.fromkeys(("index_dataset", "verify_image"), "index"),
    "Manifest": "manifest",
    **dict.fromkeys(("check_usable", "find_problems", "problem_counts"), "problems"),
    **dict.fromkeys(("REGISTRY", "DatasetSpec", "DomainSpec", "Resource", "get_spec", "list_datasets"), "registry"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's submodule when the name is first read (then cache it here)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

