"""Dataset errors. Every message names the file involved and what to do about it."""

from __future__ import annotations

from dapl.errors import UserError


class DatasetError(UserError):
    """Base class of every error raised by :mod:`dapl.datasets` (a user error: the CLI exits 2)."""


class DatasetUnavailable(DatasetError):
    """The dataset's files are not here and cannot be downloaded now (click-through source or offline).

    The message lists each missing file, where to get it and exactly where to put it.
    """


class UnsafeArchiveError(DatasetError):
    """An archive member would land outside the destination, or is a link, device or fifo."""


class ChecksumError(DatasetError):
    """A downloaded or user-supplied file does not have the expected size or hash."""


class DatasetLayoutError(DatasetError):
    """The files on disk do not have the layout the dataset needs (e.g. a split file is missing)."""


class IncompleteDatasetError(DatasetLayoutError):
    """Fewer images than the registry expects for a domain (a cut-short archive or download)."""


class UnusableDatasetError(DatasetError):
    """A stage's source or target domain has no usable image, or a class has no source image."""


class DatasetWarning(UserWarning):
    """Something the user asked for was not done, though nothing failed (a ``--source`` not used)."""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is not in the registry (also a ``KeyError`` for older callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
