"""Datasets: registry, fetch (download, safe extraction, layout), index/validation into a polars manifest,
and torch loading. Pure library: the CLI, Prefect tasks and DVC stages call these functions."""

from dapl.datasets.archive import safe_extract
from dapl.datasets.errors import (
    ChecksumError,
    DatasetError,
    DatasetLayoutError,
    DatasetUnavailable,
    IncompleteDatasetError,
    UnknownDatasetError,
    UnsafeArchiveError,
    UnusableDatasetError,
)
from dapl.datasets.fetch import download, fetch_dataset, normalise_layout, offline_reason
from dapl.datasets.index import index_dataset, verify_image
from dapl.datasets.manifest import Manifest
from dapl.datasets.problems import check_usable, find_problems, problem_counts
from dapl.datasets.registry import REGISTRY, DatasetSpec, DomainSpec, Resource, get_spec, list_datasets

__all__ = [
    "REGISTRY", "ChecksumError", "DatasetError", "DatasetLayoutError", "DatasetSpec", "DatasetUnavailable",
    "DomainSpec", "IncompleteDatasetError", "Manifest", "Resource", "UnknownDatasetError", "UnsafeArchiveError",
    "UnusableDatasetError", "check_usable", "download", "fetch_dataset", "find_problems",
    "get_spec", "index_dataset", "list_datasets", "normalise_layout", "offline_reason", "problem_counts",
    "safe_extract", "verify_image",
]
