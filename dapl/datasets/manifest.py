"""The manifest: one validated row per file of a dataset, saved as parquet plus a small JSON sidecar.

The sidecar holds what the table cannot (root, class and domain order, metric, dataset-level notes). The root
is stored relative to the sidecar's folder, so a manifest committed or DVC-tracked next to ``data/`` still
works in a clone at another path. Both files are written deterministically (sorted rows, sorted JSON keys,
no timestamps) so DVC sees identical bytes for identical data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from dapl.datasets.problems import find_problems, problem_counts
from dapl.datasets.registry import DEFAULT_TAU
from dapl.imageset import ImageSet

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.Utf8, "domain": pl.Utf8, "class_name": pl.Utf8, "class_folder": pl.Utf8,
    "class_idx": pl.Int32, "split": pl.Utf8, "width": pl.Int32, "height": pl.Int32, "mode": pl.Utf8,
    "file_size": pl.Int64, "sha256": pl.Utf8, "status": pl.Utf8, "problem": pl.Utf8,
}
FORMAT_VERSION = 1


def sidecar_path(path: Path | str) -> Path:
    return Path(path).with_suffix(".json")


@dataclass(eq=False)  # a DataFrame has no truth value: compare manifests by their fields explicitly
class Manifest:
    """A dataset's files with labels, domains, splits and validation status (``df``), rooted at ``root``."""

    df: pl.DataFrame
    root: Path
    dataset: str
    classes: list[str]  # display names, in class-index order
    domains: list[str]  # domain keys, in registry order
    class_folders: list[str] = field(default_factory=list)
    domain_folders: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    tau: float = DEFAULT_TAU
    notes: list[dict] = field(default_factory=list)  # dataset-level problems found while indexing

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write ``path`` (parquet) and ``path`` with suffix ``.json`` (sidecar); return the parquet path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.df.write_parquet(path, compression="zstd", statistics=False)
        try:
            root = os.path.relpath(self.root, path.parent.absolute())
        except ValueError:  # another drive on Windows
            root = str(self.root.absolute())
        meta = {
            "format": FORMAT_VERSION, "dataset": self.dataset, "root": Path(root).as_posix(),
            "classes": self.classes, "class_folders": self.class_folders, "domains": self.domains,
            "domain_folders": self.domain_folders, "metric": self.metric, "tau": self.tau, "notes": self.notes,
            "counts": {"ok": self.n_ok, "excluded": len(self.df) - self.n_ok},
        }
        sidecar_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str, root: Path | str | None = None) -> Manifest:
        """Read a saved manifest; ``root`` overrides the stored dataset root (e.g. data moved elsewhere)."""
        path = Path(path)
        side = sidecar_path(path)
        if not path.is_file() or not side.is_file():
            raise FileNotFoundError(f"manifest {path} or its sidecar {side} is missing; build it with "
                                    "`dapl data index DATASET --root ROOT --out {path}`")
        meta = json.loads(side.read_text())
        df = pl.read_parquet(path)
        stored = Path(meta["root"])
        base = Path(root) if root is not None else (
            stored if stored.is_absolute() else Path(os.path.normpath(path.parent.absolute() / stored)))
        return cls(df=df, root=base, dataset=meta["dataset"], classes=list(meta["classes"]),
                   domains=list(meta["domains"]), class_folders=list(meta.get("class_folders", [])),
                   domain_folders=list(meta.get("domain_folders", [])), metric=meta.get("metric", "accuracy"),
                   tau=float(meta.get("tau", DEFAULT_TAU)), notes=list(meta.get("notes", [])))

    # -- views ---------------------------------------------------------------------------------------
    @property
    def ok(self) -> pl.DataFrame:
        return self.df.filter(pl.col("status") == "ok")

    @property
    def n_ok(self) -> int:
        return int((self.df["status"] == "ok").sum())

    @property
    def excluded(self) -> pl.DataFrame:
        return self.df.filter(pl.col("status") == "excluded")

    @property
    def problems(self) -> pl.DataFrame:
        """Every problem (see :func:`dapl.datasets.problems.find_problems`)."""
        return find_problems(self.df, self.classes, self.domains, self.notes)

    def counts(self) -> pl.DataFrame:
        """Files per domain and split: ok, excluded, classes present."""
        return (self.df.group_by("domain", "split", maintain_order=True)
                .agg((pl.col("status") == "ok").sum().alias("ok"),
                     (pl.col("status") == "excluded").sum().alias("excluded"),
                     pl.col("class_idx").filter(pl.col("status") == "ok").n_unique().alias("classes")))

    def summary(self, examples: int = 3) -> str:
        """A printable report: totals, per-domain counts and problem counts with example files."""
        n, ok = len(self.df), self.n_ok
        lines = [f"{self.dataset}: {n} files indexed under {self.root}: {ok} ok, {n - ok} excluded; "
                 f"{len(self.classes)} classes, domains {', '.join(self.domains)}"]
        with pl.Config(tbl_rows=200, tbl_cols=10, fmt_str_lengths=90, tbl_hide_dataframe_shape=True,
                       tbl_hide_column_data_types=True, tbl_width_chars=160):
            lines.append(str(self.counts()))
            pc = problem_counts(self.problems, examples)
            lines.append("no problems found" if pc.is_empty() else "problems:\n" + str(pc))
        return "\n".join(lines)

    # -- to the trainer ------------------------------------------------------------------------------
    def _domain_key(self, name: str) -> str:
        if name in self.domains:
            return name
        low = name.lower()
        for i, d in enumerate(self.domains):
            folder = self.domain_folders[i] if i < len(self.domain_folders) else d
            if low in (d.lower(), folder.lower(), folder.lower().replace(" ", "_")):
                return d
        raise KeyError(f"{self.dataset} manifest has no domain {name!r}; its domains are {self.domains}")

    def image_set(self, domains: Sequence[str], split: str | None = None,
                  domain_order: Sequence[str] | None = None) -> ImageSet:
        """The usable (``status == "ok"``) images of ``domains`` as an :class:`ImageSet`.

        Domain indices are positions in ``domain_order`` (the run's domain list: sources then targets;
        default: ``domains``). ``split`` keeps one split (``train``/``test``/...); ``None`` keeps all.
        Rows are ordered by domain position, then path, so the order never depends on the file system.
        """
        keys = [self._domain_key(d) for d in domains]
        order = [self._domain_key(d) for d in (domain_order if domain_order is not None else domains)]
        missing = [d for d in keys if d not in order]
        if missing:
            raise ValueError(f"domains {missing} are not in domain_order {order}")
        pos = {d: i for i, d in enumerate(order)}
        sel = self.ok.filter(pl.col("domain").is_in(keys))
        if split is not None:
            sel = sel.filter(pl.col("split") == split)
            empty = [d for d in keys if sel.filter(pl.col("domain") == d).is_empty()]
            if empty:
                splits = self.ok.filter(pl.col("domain").is_in(empty))["split"].unique().sort().to_list()
                raise ValueError(f"{self.dataset}: no usable image of domain(s) {empty} in split {split!r}; "
                                 f"splits there: {splits}")
        sel = (sel.with_columns(pl.col("domain").replace_strict(pos, return_dtype=pl.Int64).alias("_d"))
               .sort(["_d", "path"]))
        return ImageSet(tuple(sel["path"].to_list()), sel["class_idx"].to_numpy().astype(np.int64),
                        sel["_d"].to_numpy().astype(np.int64), str(self.root),
                        meta={"dataset": self.dataset, "domains": order, "split": split,
                              "classes": list(self.classes)},
                        digests=tuple(sel["sha256"].to_list()) if sel["sha256"].null_count() == 0 else ())
