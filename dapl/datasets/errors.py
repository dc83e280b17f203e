"""Dataset errors. Every message names the file involved and what to do about it."""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of every error raised by :mod:`dapl.datasets`."""


class DatasetUnavailable(DatasetError):
    """The dataset's files are not here and cannot be downloaded now (click-through source or offline).

    The message lists each missing file, where to get it and exactly where to put it.
    """


class UnsafeArchiveError(DatasetError):
    """An archive member would land outside the destination (absolute path, ``..``, link pointing out)."""


class ChecksumError(DatasetError):
    """A downloaded or user-supplied file does not have the expected size or hash."""


class DatasetLayoutError(DatasetError):
    """The files on disk do not have the layout the dataset needs (e.g. a split file is missing)."""
