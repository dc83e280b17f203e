"""Your own data: labelled source images in class folders and a flat folder of unlabelled target images.

The two folders are indexed with the dataset indexer's own rules (no link followed, every file verified and
kept in the manifest with its status) into one manifest whose domains are ``source`` and ``target``; the
target's rows have no class (``class_idx`` −1), so every stage treats them as unlabelled. A small labelled sample
(``path,label`` CSV) can score the result; it is read here and checked against the manifest, never trained on.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import polars as pl

from dapl.datasets.errors import DatasetLayoutError
from dapl.datasets.index import IndexItem, manifest_row, verify_items
from dapl.datasets.manifest import MANIFEST_SCHEMA, Manifest
from dapl.datasets.problems import note
from dapl.datasets.registry import DEFAULT_TAU, display_name
from dapl.datasets.tree import scan, shown, walk_files
from dapl.errors import UserError
from dapl.imageset import ImageSet

DATASET = "folder"  # the registry's any-folder dataset: its recipe (τ) and metric apply
SOURCE, TARGET = "source", "target"


def _folder(path: Path | str, flag: str) -> Path:
    p = Path(path).absolute()
    if os.path.lexists(p) and not p.is_dir():
        raise DatasetLayoutError(f"{flag} {path}: is a file, not a folder")
    if not p.is_dir():
        raise DatasetLayoutError(f"{flag} {path}: no such folder")
    return p


def own_root(source: Path | str, target: Path | str) -> Path:
    """The folder both your folders are under (decided lexically): the manifest's root."""
    return Path(os.path.commonpath([Path(source).absolute(), Path(target).absolute()]))


def _source_items(root: Path, source: Path, notes: list[dict]) -> list[IndexItem]:
    """One item per file below each class folder of ``source``; loose files are refused (they have no class)."""
    kids, refused = scan(source)
    notes += [note("excluded", r.kind, SOURCE, None, shown(str(r.path)), f"{shown(str(r.path))} {r.detail}")
              for r in refused]
    items: list[IndexItem] = []
    for entry, is_dir in kids:
        rel = entry.relative_to(root).as_posix()
        if is_dir:
            inside: list = []
            items += [IndexItem(f.relative_to(root).as_posix(), SOURCE, entry.name, "all")
                      for f in walk_files(entry, inside)]
            notes += [note("excluded", r.kind, SOURCE, display_name(entry.name), shown(str(r.path)),
                           f"{shown(str(r.path))} {r.detail}") for r in inside]
        else:
            items.append(IndexItem(rel, SOURCE, None, "all", problem="no_class: file is not inside a class folder"))
    if not any(it.class_folder for it in items):
        raise DatasetLayoutError(f"--source {source}: no class folder holding images; the source must be "
                                 "<class>/<image> folders (its labels come from the folder names)")
    return items


def _target_items(root: Path, target: Path, notes: list[dict]) -> list[IndexItem]:
    """One item per file directly in ``target``; a class folder in it means the target is not unlabelled."""
    kids, refused = scan(target)
    notes += [note("excluded", r.kind, TARGET, None, shown(str(r.path)), f"{shown(str(r.path))} {r.detail}")
              for r in refused]
    folders = [p.name for p, is_dir in kids if is_dir and any(True for _ in walk_files(p))]
    if folders:
        more = f" and {len(folders) - 3} more" if len(folders) > 3 else ""
        raise DatasetLayoutError(
            f"--target {target}: holds folders with files ({', '.join(f + '/' for f in folders[:3])}{more}); an "
            "unlabelled target is one flat folder of images. Move the images up into it, or, if the folders are "
            "classes, index it as a labelled domain (`dapl data index folder`)")
    items = [IndexItem(p.relative_to(root).as_posix(), TARGET, None, "all") for p, is_dir in kids if not is_dir]
    if not items:
        raise DatasetLayoutError(f"--target {target}: no image file in it; give the folder of target images")
    return items


def index_own_data(source: Path | str, target: Path | str, *, workers: int | None = None,
                   progress: str | bool = True) -> Manifest:
    """The manifest of a labelled ``source`` (class folders) and an unlabelled flat ``target`` folder."""
    src, tgt = _folder(source, "--source"), _folder(target, "--target")
    if src == tgt or tgt.is_relative_to(src) or src.is_relative_to(tgt):
        raise DatasetLayoutError(f"--source {source} and --target {target} overlap; give two separate folders")
    root = own_root(src, tgt)
    notes: list[dict] = []
    items = _source_items(root, src, notes) + _target_items(root, tgt, notes)
    folders = tuple(sorted({it.class_folder for it in items if it.domain == SOURCE and it.class_folder}))
    index = {f: i for i, f in enumerate(folders)}
    results = verify_items(root, "own data", items, workers, True, progress)
    rows = [manifest_row(root, item, results.get(i), index) for i, item in enumerate(items)]
    df = pl.DataFrame(rows, schema=MANIFEST_SCHEMA).sort(["domain", "path"])
    return Manifest(df=df, root=root, dataset=DATASET, classes=[display_name(f) for f in folders],
                    class_folders=list(folders), domains=[SOURCE, TARGET],
                    domain_folders=[src.relative_to(root).as_posix() or ".", tgt.relative_to(root).as_posix() or "."],
                    metric="accuracy", tau=DEFAULT_TAU, notes=notes)


def read_labelled_sample(csv_path: Path | str, manifest: Manifest, target: Path | str) -> ImageSet:
    """The labelled sample (``path,label`` rows; paths relative to the target folder or absolute; labels the
    source's class names or folder names) as a target image set with labels, checked against ``manifest``."""
    path = Path(csv_path)
    if not path.is_file():
        raise UserError(f"--labelled-sample {csv_path}: no such file (a CSV with columns path,label)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UserError(f"{csv_path}: expected a header `path,label` and one row per labelled image")
    tgt = Path(target).absolute()
    names = {**{f.lower(): i for i, f in enumerate(manifest.class_folders)},
             **{c.lower(): i for i, c in enumerate(manifest.classes)}}
    ok = manifest.ok.filter(pl.col("domain") == TARGET)
    known = dict(zip(ok["path"].to_list(), ok["sha256"].to_list(), strict=True))
    missing, unknown, paths, labels = [], [], [], []
    for r in rows:
        p = Path(r["path"])
        rel = os.path.relpath(os.path.normpath(p if p.is_absolute() else tgt / p), manifest.root)
        if rel not in known:
            missing.append(r["path"])
        elif r["label"].strip().lower() not in names:
            unknown.append(r["label"])
        else:
            paths.append(Path(rel).as_posix())
            labels.append(names[r["label"].strip().lower()])
    if missing:
        raise UserError(f"{csv_path}: {len(missing)} path(s) are not usable images of the target folder {tgt} "
                        f"(e.g. {', '.join(missing[:3])}); list files of that folder, relative to it")
    if unknown:
        raise UserError(f"{csv_path}: unknown class label(s) {', '.join(sorted(set(unknown))[:5])}; the source's "
                        f"classes are {', '.join(manifest.class_folders)}")
    domain = 1  # the run's domain list is [source, target]
    return ImageSet(tuple(paths), np.asarray(labels, np.int64), np.full(len(paths), domain, np.int64),
                    str(manifest.root), digests=tuple(known[p] for p in paths))
