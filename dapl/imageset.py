"""The unit of image data every stage exchanges: paths with labels and domain indices."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """Images of one or more domains.

    ``labels`` holds class indices (``-1`` where unknown); target labels are only ever used for reporting.
    ``domains`` holds indices into the run's domain list (source domains first, then target domains).
    ``digests`` holds each file's content hash where known (a manifest's sha256), so that caches keyed on the
    set see a file rewritten in place (a regenerated toy world keeps every path).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    domains: np.ndarray
    root: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    digests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.labels) != n or len(self.domains) != n:
            raise ValueError(f"ImageSet: {n} paths but {len(self.labels)} labels and {len(self.domains)} domains")
        if self.digests and len(self.digests) != n:
            raise ValueError(f"ImageSet: {n} paths but {len(self.digests)} digests")

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray | None = None,
        domains: Sequence[int] | np.ndarray | int = 0,
        root: str | Path = "",
    ) -> ImageSet:
        n = len(paths)
        lab = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        dom = np.full(n, domains, np.int64) if isinstance(domains, int) else np.asarray(domains, np.int64)
        return cls(tuple(str(p) for p in paths), lab, dom, str(root))

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() or not self.root else Path(self.root) / p

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def fingerprint(self) -> str:
        """Identity of the list and of its files' contents, used in feature-cache keys: paths and order, plus
        each file's digest, or its size and mtime where no digest is known (a file rewritten under the same path
        must not be served stale features). Computed once per set: a run asks for it several times."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(Path(self.root).resolve() if self.root else "").encode())
        for i, p in enumerate(self.paths):
            h.update(p.encode())
            h.update(b"\0")
            if self.digests:
                h.update(self.digests[i].encode())
            else:
                try:
                    st = self.resolve(i).stat()
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(b"missing")
            h.update(b"\0")
        return h.hexdigest()[:16]

    def subset(self, idx: np.ndarray | Sequence[int]) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        digests = tuple(self.digests[i] for i in idx) if self.digests else ()
        return ImageSet(tuple(self.paths[i] for i in idx), self.labels[idx], self.domains[idx], self.root,
                        digests=digests)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        roots = {s.root for s in sets}
        if len(roots) > 1:
            paths = tuple(str(s.resolve(i)) for s in sets for i in range(len(s)))
            root = ""
        else:
            paths = tuple(p for s in sets for p in s.paths)
            root = roots.pop() if roots else ""
        return ImageSet(
            paths,
            np.concatenate([s.labels for s in sets]) if sets else np.zeros(0, np.int64),
            np.concatenate([s.domains for s in sets]) if sets else np.zeros(0, np.int64),
            root,
            digests=tuple(d for s in sets for d in s.digests) if sets and all(s.digests for s in sets) else (),
        )


@dataclass
class AdaptationData:
    """One adaptation problem's images: classes, domains (sources first, then targets) and each side's set."""

    classnames: list[str]
    domains: list[str]
    source: ImageSet
    target: ImageSet  # unlabelled adaptation images (labels, if any, are used for reporting only)
    metric: str = "accuracy"  # or "mean_per_class" (VisDA)
    target_test: ImageSet | None = None  # evaluation images when the dataset has a target test split

    @property
    def evaluation(self) -> ImageSet:
        """UDA convention: the target set is also the test set, unless a separate test split is given."""
        return self.target if self.target_test is None else self.target_test

    @property
    def target_domains(self) -> list[int]:
        return sorted({int(d) for d in self.target.domains})
