"""Predictions as a table: one row per image with its class, probability, the top-k classes and any read error.

The same columns whichever way the images were classified (a prompts folder, a registered MLflow model, a served
one), so a CSV or parquet written by ``dapl predict --out`` reads the same for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from dapl.artifacts import UnreadableImageError
from dapl.errors import UserError
from dapl.progress import Progress

TABLE_SUFFIXES = (".csv", ".parquet")


def table_schema(top_k: int) -> dict[str, pl.DataType]:
    """``class``, ``probability``, ``top1_class``, ``top1_probability``, ... ``topK_probability``, ``error``
    (null unless the image could not be read): flat columns, so CSV and parquet hold the same table."""
    cols: dict[str, pl.DataType] = {"class": pl.String(), "probability": pl.Float64()}
    for i in range(1, top_k + 1):
        cols[f"top{i}_class"], cols[f"top{i}_probability"] = pl.String(), pl.Float64()
    return {**cols, "error": pl.String()}


def check_top_k(top_k: int, n_classes: int | None = None) -> int:
    """``top_k`` as used: at least 1, at most the number of classes."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: give 1 or more")
    return min(top_k, n_classes) if n_classes else top_k


def prediction_rows(results: Sequence[np.ndarray | UnreadableImageError], classnames: Sequence[str],
                    top_k: int) -> pl.DataFrame:
    """One row per result (class probabilities, or the error that kept an image from being read); classes of
    equal probability keep the prompts' class order."""
    k = check_top_k(top_k, len(classnames))
    schema = table_schema(k)
    cols: dict[str, list] = {c: [] for c in schema}
    for res in results:
        if isinstance(res, UnreadableImageError):
            for c in cols:
                cols[c].append(res.reason if c == "error" else None)
            continue
        order = np.argsort(-res, kind="stable")[:k]
        cols["class"].append(classnames[order[0]])
        cols["probability"].append(float(res[order[0]]))
        for i, j in enumerate(order, 1):
            cols[f"top{i}_class"].append(classnames[j])
            cols[f"top{i}_probability"].append(float(res[j]))
        cols["error"].append(None)
    return pl.DataFrame(cols, schema=schema)


def predict_table(classify: Callable[[list[Path]], pl.DataFrame], files: Sequence[Path], batch_size: int = 256,
                  progress: str | bool = "auto") -> pl.DataFrame:
    """``path`` plus ``classify``'s columns for every file, ``batch_size`` files at a time (a bar on a terminal,
    paced log lines elsewhere: a large folder shows how far it is)."""
    parts = []
    with Progress(len(files), "predict", "img", mode=progress) as bar:
        for i in range(0, len(files), batch_size):
            chunk = list(files[i:i + batch_size])
            rows = classify(chunk)
            parts.append(rows.insert_column(0, pl.Series("path", [str(p) for p in chunk], pl.String)))
            bar.update(len(chunk))
    return pl.concat(parts) if parts else pl.DataFrame()


def check_table_path(out: str | Path) -> Path:
    """An ``--out`` file ``dapl predict`` may write (decided before any image is classified): a .csv or .parquet
    path whose folder is a folder, not an existing link or folder itself."""
    from dapl.datasets.fetch import check_output_path

    path = Path(os.path.abspath(out))
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"--out {out}: give a file ending in .csv or .parquet")
    if os.path.islink(path):
        raise UserError(f"--out {out}: is a link; give the path of a regular file to write")
    check_output_path(path, "--out")
    return path


def write_table(table: pl.DataFrame, out: str | Path) -> Path:
    """Written beside ``out`` then moved onto it, as CSV or parquet by its suffix (never half a file)."""
    path = check_table_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() == ".csv":
            table.write_csv(tmp)
        else:
            table.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
