"""Is a dataset complete? Image counts against the registry, and the stamp a finished fetch leaves.

A cut-short archive or download can leave every domain folder present with images missing, so "the folders
exist" proves nothing. Where the release's size is known (``DomainSpec.images``: Office-Home, Office-31,
VisDA-2017; for DomainNet-style layouts, the lines of the split files) ``fetch`` and ``index`` count the images
on disk and fail naming each short domain. ``fetch`` marks a dataset complete only after every check passed,
by writing a small stamp last and atomically; "already in place" means "the stamp is there".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dapl.datasets.errors import DatasetLayoutError, IncompleteDatasetError
from dapl.datasets.registry import IMAGE_SUFFIXES, DatasetSpec, DomainSpec
from dapl.datasets.tree import link_on_path, plain_dir, scan, walk_files

STAMP = ".dapl-complete.json"  # hidden: never indexed (see DATASETS.md for DVC)
STAMP_FORMAT = 1


def domain_dir(root: Path, d: DomainSpec) -> Path | None:
    """The real folder of domain ``d`` under ``root`` (its folder name or an alias); a link is never one."""
    for f in d.all_folders:
        if plain_dir(root / f):
            return root / f
    return None


def linked_domains(spec: DatasetSpec, root: Path) -> dict[str, Path]:
    """Domain key -> its folder under ``root`` where that is a symbolic link (and no real folder is there)."""
    return {d.key: root / f for d in spec.domains if domain_dir(root, d) is None
            for f in d.all_folders if (root / f).is_symlink()}


def count_images(folder: Path) -> int:
    """Image files (by suffix) below ``folder`` as the index takes them: no link followed, junk and hidden
    names, control-character names and special files skipped."""
    return sum(1 for f in walk_files(folder) if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES)


def _listed(root: Path, spec: DatasetSpec, d: DomainSpec) -> tuple[int, int] | None:
    """(listed, on disk) for a split-file layout, or ``None`` while a split file is missing."""
    folder = (domain_dir(root, d) or root / d.folder).name
    listed = present = 0
    cache: dict[str, str | None] = {}
    for s in spec.splits:
        rel_lf = spec.split_file.format(domain=folder, split=s)
        lf = root / rel_lf
        if link_on_path(root, rel_lf) is not None or not lf.is_file():
            return None
        for line in lf.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].replace("\\", "/")
            if rel.startswith("/") or ".." in rel.split("/"):
                continue  # never looked at: the index reports it as unsafe
            listed += 1
            present += link_on_path(root, rel, cache) is None and (root / rel).is_file()
    return listed, present


def image_counts(spec: DatasetSpec, root: Path | str) -> dict[str, tuple[int, int | None]]:
    """Per domain key: (images there, images expected or ``None`` when unknown)."""
    root = Path(root)
    out: dict[str, tuple[int, int | None]] = {}
    for d in spec.domains:
        if spec.layout == "split_files":
            got = _listed(root, spec, d)
            out[d.key] = (got[1], got[0]) if got is not None else (0, None)
            continue
        ddir = domain_dir(root, d)
        out[d.key] = (count_images(ddir) if ddir is not None else 0, d.images)
    return out


def shortfalls(spec: DatasetSpec, root: Path | str) -> list[tuple[str, int, int]]:
    """(domain key, images there, images expected) for each domain with fewer images than expected."""
    return [(key, have, want) for key, (have, want) in image_counts(spec, root).items()
            if want is not None and have < want]


def describe(short: tuple[str, int, int]) -> str:
    return f"domain {short[0]!r} has {short[1]} of {short[2]} images"


def check_counts(spec: DatasetSpec, root: Path | str, what: str = "fetch") -> None:
    """Raise :class:`IncompleteDatasetError` naming every short domain and its counts."""
    short = shortfalls(spec, root)
    if short:
        links = linked_domains(spec, Path(root))
        linked = "".join(f" ({links[s[0]]} is a symbolic link, never followed: put the real folder there)"
                         for s in short if s[0] in links)
        raise IncompleteDatasetError(
            f"{root}: {spec.title} is incomplete: {'; '.join(map(describe, short))}{linked}. The archive or download "
            f"was cut short or is another version: delete it, download it again and rerun `dapl data {what} "
            f"{spec.name} --root {root}` (or pass --allow-incomplete to use a subset on purpose)")


def dataset_below(spec: DatasetSpec, root: Path) -> Path | None:
    """The one sub-folder of ``root`` that holds ``spec``'s domain folders when ``root`` holds none of them
    itself (``--root`` one level too high, e.g. above an archive's wrapper folder), else ``None``."""
    if not spec.domains or not plain_dir(root):
        return None
    folders = {f for d in spec.domains for f in d.all_folders}
    if any(plain_dir(root / f) or (root / f).is_symlink() for f in folders):
        return None
    holders = [p for p, is_dir in scan(root)[0] if is_dir and any(plain_dir(p / f) for f in folders)]
    return holders[0] if len(holders) == 1 else None


def check_root(spec: DatasetSpec, root: Path, what: str = "index") -> None:
    """Raise :class:`DatasetLayoutError` naming the folder to pass when the dataset is one level below ``root``."""
    below = dataset_below(spec, root)
    if below is not None:
        found = sorted(f for d in spec.domains for f in d.all_folders if plain_dir(below / f))
        raise DatasetLayoutError(
            f"--root {root}: holds none of the {spec.title} domain folders, but its folder {below.name!r} does "
            f"({', '.join(found)}): the dataset seems to be one level down; rerun with --root {below} "
            f"(`dapl data {what} {spec.name} --root {below}`)")


# -- the stamp ---------------------------------------------------------------------------------------------
def read_stamp(root: Path | str) -> dict | None:
    p = Path(root) / STAMP
    if p.is_symlink() or not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_stamped(spec: DatasetSpec, root: Path | str) -> bool:
    meta = read_stamp(root)
    return meta is not None and meta.get("dataset") == spec.name and meta.get("format") == STAMP_FORMAT


def write_stamp(spec: DatasetSpec, root: Path | str, counts: dict[str, tuple[int, int | None]]) -> Path:
    """Write the stamp last, atomically (temporary file, fsync, rename); deterministic bytes for DVC."""
    root = Path(root)
    meta = {"format": STAMP_FORMAT, "dataset": spec.name, "images": {k: v[0] for k, v in counts.items()}}
    tmp = root / (STAMP + ".tmp")
    if os.path.lexists(tmp):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / STAMP)
    return root / STAMP


def remove_stamp(root: Path | str) -> None:
    p = Path(root) / STAMP
    if os.path.lexists(p):
        p.unlink()
