"""Index a dataset on disk into a validated polars manifest.

Every file found (or listed by a split file) becomes one row; a file that cannot be used is kept with
``status="excluded"`` and a ``problem`` of the form ``"<kind>: <detail>"``, so nothing is dropped silently and
one broken image never stops the run. Checks per file: zero bytes, unreadable or truncated data (full decode),
decompression bombs (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``), unknown class folders, files missing
from disk or listed twice, labels that disagree with their folder. The tree is walked without following a link
(:mod:`dapl.datasets.tree`): links, control-character names and special files are excluded and reported by
path, so a link loop cannot add a phantom class nor a link pull in a file from outside. Non-RGB modes
(grayscale, CMYK, palette, RGBA, 16-bit) stay ``ok``: their ``mode`` is recorded and the loader converts
them. Dataset-level checks (empty domains, classes missing from a domain, duplicate contents across domains)
are derived from the table by :func:`find_problems`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image, UnidentifiedImageError

from dapl.datasets.complete import check_counts as check_counts_on
from dapl.datasets.complete import check_root, describe, domain_dir, shortfalls
from dapl.datasets.download import sha256_file
from dapl.datasets.errors import DatasetLayoutError
from dapl.datasets.fetch import wrapper_folder, wrapper_message
from dapl.datasets.manifest import MANIFEST_SCHEMA, Manifest
from dapl.datasets.problems import note as _note
from dapl.datasets.registry import DatasetSpec, DomainSpec, discover, display_name, get_spec
from dapl.datasets.tree import LINK_FIX, Refused, link_on_path, scan, shown, walk_files
from dapl.progress import track


@dataclass
class IndexItem:
    path: str  # POSIX, relative to the dataset root
    domain: str
    class_folder: str | None
    split: str
    label: int | None = None  # from a split file / image list
    problem: str | None = None  # known before reading the file


# -- enumeration --------------------------------------------------------------------------------------
def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def _refused_notes(root: Path, refused: Iterable[Refused], domain: str | None = None,
                   class_folder: str | None = None) -> list[dict]:
    """One ``excluded`` note per entry the walk refused (a link, a control-character name, a special file)."""
    cls = display_name(class_folder) if class_folder is not None else None
    return [_note("excluded", r.kind, domain, cls, shown(_rel(root, r.path)), f"{shown(_rel(root, r.path))} "
                  f"{r.detail}") for r in refused]


def _folder_items(root: Path, d: DomainSpec, split: str, notes: list[dict]) -> list[IndexItem]:
    """Items below domain ``d``'s folder: one per file of each class folder, walked without following links."""
    ddir = domain_dir(root, d)
    if ddir is None:
        return []
    base = ddir
    kids, refused = scan(ddir)
    if not refused and [p.name for p, _ in kids] == ["images"] and kids[0][1]:  # Office-31 before normalisation
        base = kids[0][0]
        kids, refused = scan(base)
    notes += _refused_notes(root, refused, d.key)
    items: list[IndexItem] = []
    for entry, is_dir in kids:
        if is_dir:
            inside: list[Refused] = []
            items += [IndexItem(_rel(root, f), d.key, entry.name, split) for f in walk_files(entry, inside)]
            notes += _refused_notes(root, inside, d.key, entry.name)
        else:
            items.append(IndexItem(_rel(root, entry), d.key, None, split,
                               problem="no_class: file is not inside a class folder"))
    return items


def _root_notes(root: Path, spec: DatasetSpec) -> list[dict]:
    """Notes on ``root``'s own entries: links and bad names refused, unknown folders ignored."""
    kids, refused = scan(root)
    known = {f for d in spec.domains for f in d.all_folders}
    notes = []
    for r in refused:
        notes += _refused_notes(root, [r], next((d.key for d in spec.domains if r.path.name in d.all_folders), None))
    if spec.layout != "split_files":
        notes += [_note("info", "unknown_folder", None, None, p.name, f"folder is not a domain of {spec.name}; ignored")
                  for p, is_dir in kids if is_dir and p.name not in known]
    return notes


def _parse_list(list_file: Path, prefix: str, notes: list[dict], domain: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            notes.append(_note("excluded", "bad_line", domain, None, str(list_file),
                               f"line {n} is not '<path> <label>': {line.strip()[:80]!r}"))
            continue
        rel = parts[0].replace("\\", "/").removeprefix("./")
        if rel.startswith("/") or ".." in rel.split("/"):  # a list file must not point outside the root
            notes.append(_note("excluded", "unsafe_path", domain, None, str(list_file),
                               f"line {n} points outside the dataset folder: {rel[:80]!r}"))
            continue
        out.append((prefix + rel, int(parts[1])))
    return out


def _refuse_linked_list(root: Path, spec: DatasetSpec, rel: str) -> None:
    """A split file reached through a link would be read from wherever the link points: an error naming it."""
    if (link := link_on_path(root, rel)) is not None:
        raise DatasetLayoutError(f"{root / shown(link)}: is a symbolic link (on the path of the {spec.name} "
                                 f"split file {rel}); {LINK_FIX}")


def _listed_items(root: Path, spec: DatasetSpec, notes: list[dict]) -> list[IndexItem]:
    """Items of image_list (VisDA) and split_files (DomainNet) layouts; unlisted files are counted."""
    items: list[IndexItem] = []
    seen: set[str] = set()
    links: dict[str, str | None] = {}  # folder -> first link on its path (see link_on_path)
    for d in spec.domains:
        ddir = domain_dir(root, d)
        folder = ddir.name if ddir is not None else d.folder
        lists: list[tuple[Path, str, str]] = []  # (file, split, path prefix)
        if spec.layout == "image_list":
            lf = root / folder / spec.split_file
            _refuse_linked_list(root, spec, f"{folder}/{spec.split_file}")
            if lf.is_file():
                lists.append((lf, d.split or "all", f"{folder}/"))
            elif ddir is not None:
                notes.append(_note("info", "no_image_list", d.key, None, _rel(root, ddir),
                                   f"{spec.split_file} not found; labels taken from the class folders"))
                items += _folder_items(root, d, d.split or "all", notes)
                continue
        else:
            for s in spec.splits:
                rel_lf = spec.split_file.format(domain=folder, split=s)
                lf = root / rel_lf
                _refuse_linked_list(root, spec, rel_lf)
                if not lf.is_file():
                    raise DatasetLayoutError(
                        f"{lf}: split file missing for {spec.name} domain {d.key!r} split {s!r}. Get it from "
                        f"{spec.homepage} (or run `dapl data fetch {spec.name} --root {root}`) and put it there.")
                lists.append((lf, s, ""))
        listed: set[str] = set()
        for lf, split, prefix in lists:
            for path, label in _parse_list(lf, prefix, notes, d.key):
                parts = path.split("/")
                cls = parts[1] if len(parts) >= 3 else None  # <domain folder>/<class>/.../<file>
                it = IndexItem(path, d.key, cls, split, label)
                if path in seen:
                    it.problem = f"duplicate_listing: listed more than once (again in {lf.name})"
                elif (link := link_on_path(root, path, links)) is not None:
                    it.problem = f"symlink: listed in {lf.name}, but {shown(link)} is a symbolic link; {LINK_FIX}"
                elif not (root / path).is_file():
                    it.problem = f"missing_file: listed in {lf.name} but not on disk"
                elif parts[0] != folder:
                    it.problem = f"wrong_domain: listed in {lf.name} for domain {d.key!r} but lies in {parts[0]!r}"
                seen.add(path)
                listed.add(path)
                items.append(it)
        if ddir is not None:
            listfiles = {_rel(root, lf) for lf, _, _ in lists}
            refused: list[Refused] = []
            unlisted = [r for f in walk_files(ddir, refused)
                        if (r := _rel(root, f)) not in listed and r not in listfiles]
            notes += _refused_notes(root, (r for r in refused if _rel(root, r.path) not in listed), d.key)
            if unlisted:
                ex = ", ".join(unlisted[:3])
                notes.append(_note("info", "not_listed", d.key, None, None,
                                   f"{len(unlisted)} file(s) on disk are in no split file and are not part of "
                                   f"{spec.name} (e.g. {ex})"))
    return items


def _assign_classes(spec: DatasetSpec, items: list[IndexItem]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class folders in index order, and folder -> index. Split-file datasets without a fixed list take
    their classes from the labels (folder named most often for each label), ordered by label."""
    folders = spec.class_folders
    label_idx = {lab: lab for lab in range(len(folders))}  # fixed lists: the label is the index
    if not folders and any(it.label is not None for it in items):
        by_label: dict[int, Counter] = defaultdict(Counter)
        for it in items:
            if it.label is not None and it.class_folder is not None and it.problem is None:
                by_label[it.label][it.class_folder] += 1
        folders = tuple(by_label[k].most_common(1)[0][0] for k in sorted(by_label))
        label_idx = {lab: k for k, lab in enumerate(sorted(by_label))}
    index = {f: i for i, f in enumerate(folders)}
    for it in items:
        if it.problem is not None or it.class_folder is None:
            continue
        if it.class_folder not in index:
            it.problem = (f"unknown_class: folder {it.class_folder!r} is not one of the {len(folders)} classes "
                          f"of {spec.name}")
        elif it.label is not None and label_idx.get(it.label) != index[it.class_folder]:
            it.problem = (f"label_mismatch: label {it.label} in the list file but folder {it.class_folder!r} "
                          f"is class {index[it.class_folder]}")
    return folders, index


def _check_collisions(root: Path, folders: tuple[str, ...], items: list[IndexItem]) -> None:
    """Two class folders with one display name (``Dog``/``dog``, ``hot_dog``/``hot dog``) would be two classes
    with the same prompt: an error naming both folders."""
    where: dict[str, str] = {}
    for it in items:
        if it.class_folder is not None and it.class_folder not in where:
            where[it.class_folder] = it.path.rsplit("/", 1)[0] if it.path.count("/") >= 2 else it.class_folder
    seen: dict[str, str] = {}
    for f in folders:
        name = display_name(f)
        if name in seen:
            a, b = where.get(seen[name], seen[name]), where.get(f, f)
            raise DatasetLayoutError(f"{root}: class folders {a!r} and {b!r} both become class {name!r} (case and "
                                     "'_'/space are ignored in class names); rename or merge one of them")
        seen[name] = f


# -- verification --------------------------------------------------------------------------------------
IN_MEMORY_BYTES = 64 << 20

def verify_image(path: Path | str, *, decode: bool = True) -> dict:
    """Size, content hash, pixel size and mode of one file, or the reason it cannot be used.

    Never raises: any failure becomes ``problem``. ``decode=False`` reads only the header (faster, but a
    truncated file then passes).
    """
    out: dict = {"file_size": None, "sha256": None, "width": None, "height": None, "mode": None, "problem": None}
    try:
        path = Path(path)
        size = path.stat().st_size
        out["file_size"] = size
        if size == 0:
            out["problem"] = "zero_byte: empty file (0 bytes)"
            return out
        if size <= IN_MEMORY_BYTES:  # read once: hash and decode the same bytes
            data = path.read_bytes()
            out["sha256"] = hashlib.sha256(data).hexdigest()
            source: Path | io.BytesIO = io.BytesIO(data)
        else:
            out["sha256"] = sha256_file(path)
            source = path
        limit = Image.MAX_IMAGE_PIXELS
        with Image.open(source) as im:
            out["width"], out["height"] = im.size
            out["mode"] = im.mode
            if limit and im.size[0] * im.size[1] > limit:
                out["problem"] = (f"decompression_bomb: {im.size[0]}x{im.size[1]} pixels exceeds "
                                  f"PIL.Image.MAX_IMAGE_PIXELS={limit}")
                return out
            if decode:
                im.load()
    except Image.DecompressionBombError as e:
        out["problem"] = f"decompression_bomb: {e}"
    except UnidentifiedImageError:
        out["problem"] = "unreadable: not an image format Pillow can identify"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        kind = "truncated" if "truncat" in str(e).lower() else "unreadable"
        out["problem"] = f"{kind}: {e.__class__.__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - one odd file must never stop the index
        out["problem"] = f"error: {e.__class__.__name__}: {e}"
    return out


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def index_dataset(name: str | DatasetSpec, root: Path | str, *, workers: int | None = None, decode: bool = True,
                  progress: str | bool = True, check_counts: bool = True) -> Manifest:
    """Index and validate dataset ``name`` under ``root`` (see the module docstring); never drops a file.

    Raises :class:`~dapl.datasets.errors.IncompleteDatasetError` when a domain has fewer images than the
    registry expects (``check_counts=False``: a deliberate subset, recorded as ``incomplete_domain``
    warnings), and :class:`DatasetLayoutError` for a wrapped ``folder`` tree or a ``root`` one level above the
    dataset (both naming the folder to pass), a split file reached through a link, class folders whose names
    collide once normalised, or no file found at all (never an empty manifest, whatever ``check_counts``).
    """
    spec, root = _checked_root(name if isinstance(name, DatasetSpec) else get_spec(name), Path(root))
    notes: list[dict] = _root_notes(root, spec)
    notes += _count_notes(spec, root, check_counts)
    items = _items(root, spec, notes)
    if not items:
        raise DatasetLayoutError(_nothing_found(root, spec, notes))
    folders, index = _assign_classes(spec, items)
    _check_collisions(root, folders, items)
    results = verify_items(root, spec.name, items, workers, decode, progress)
    rows = [manifest_row(root, item, results.get(i), index) for i, item in enumerate(items)]
    return Manifest(df=_in_domain_order(rows, spec), root=root, dataset=spec.name,
                    classes=[display_name(f) for f in folders], class_folders=list(folders),
                    domains=[d.key for d in spec.domains],
                    domain_folders=[(domain_dir(root, d) or root / d.folder).name for d in spec.domains],
                    metric=spec.metric, tau=spec.tau, notes=notes)


def _checked_root(spec: DatasetSpec, root: Path) -> tuple[DatasetSpec, Path]:
    """The dataset's folder (absolute) and its spec as discovered there; a wrong ``--root`` says which to pass."""
    if os.path.lexists(root) and not root.is_dir():
        raise DatasetLayoutError(f"--root {root}: is a file, not a folder; pass the dataset's folder")
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset folder not found; run `dapl data fetch {spec.name} --root "
                                 f"{root}` first (see docs/DATASETS.md)")
    root = root.absolute()
    if spec.name == "folder" and (w := wrapper_folder(root)) is not None:
        raise DatasetLayoutError(wrapper_message(root, w, "index"))
    spec = discover(spec, root)
    check_root(spec, root, "index")
    return spec, root


def _count_notes(spec: DatasetSpec, root: Path, check_counts: bool) -> list[dict]:
    """Raise on a domain short of the registry's count, or (a deliberate subset) note it as a warning."""
    if check_counts:
        check_counts_on(spec, root, "index")
        return []
    return [_note("warning", "incomplete_domain", short[0], None, None,
                  f"{describe(short)} (indexed with --allow-incomplete)") for short in shortfalls(spec, root)]


def _items(root: Path, spec: DatasetSpec, notes: list[dict]) -> list[IndexItem]:
    if spec.layout in ("image_list", "split_files"):
        return _listed_items(root, spec, notes)
    return [it for d in spec.domains for it in _folder_items(root, d, "all", notes)]


def verify_items(root: Path, name: str, items: list[IndexItem], workers: int | None, decode: bool,
                 progress: str | bool) -> dict[int, dict]:
    """:func:`verify_image` over every item not already refused, in a thread pool, keyed by item position."""
    todo = [i for i, it in enumerate(items) if it.problem is None]
    results: dict[int, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # recorded as a problem instead
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            it = pool.map(lambda i: verify_image(root / items[i].path, decode=decode), todo)
            for i, res in zip(todo, track(it, f"verify {name}", "img", total=len(todo), mode=progress),
                              strict=True):
                results[i] = res
    return results


def manifest_row(root: Path, item: IndexItem, res: dict | None, index: dict[str, int]) -> dict:
    """One manifest row: a refused item keeps its reason, and a link is never stat'ed through."""
    linked = (item.problem or "").startswith("symlink:")
    res = res or _stat_only(None if linked else root / item.path)
    problem = item.problem or res["problem"]
    cidx = index.get(item.class_folder, -1) if item.class_folder is not None else -1
    return {
        "path": item.path, "domain": item.domain,
        "class_name": display_name(item.class_folder) if cidx >= 0 else None,
        "class_folder": item.class_folder, "class_idx": cidx, "split": item.split,
        "width": res["width"], "height": res["height"], "mode": res["mode"],
        "file_size": res["file_size"], "sha256": res["sha256"],
        "status": "ok" if problem is None else "excluded", "problem": problem,
    }


def _in_domain_order(rows: list[dict], spec: DatasetSpec) -> pl.DataFrame:
    """The rows sorted by the registry's domain order, then path (unknown domains last)."""
    order = {d.key: k for k, d in enumerate(spec.domains)}
    df = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    return (df.with_columns(pl.col("domain").replace_strict(order, default=len(order)).alias("_rank"))
            .sort(["_rank", "path"]).drop("_rank"))


def _nothing_found(root: Path, spec: DatasetSpec, notes: list[dict]) -> str:
    """Why an index found no file at all (an empty manifest is never written, even for a subset)."""
    want = ", ".join(dict.fromkeys(d.folder for d in spec.domains)) or "<domain>/<class>/<image>"
    refused = [n for n in notes if n["severity"] == "excluded"]
    why = f"; {len(refused)} entr(ies) refused, e.g. {refused[0]['detail']}" if refused else ""
    return (f"--root {root}: no image file found for {spec.name} (looked for {want}){why}; nothing to index, "
            f"so no manifest is written (not even with --allow-incomplete). Pass the folder that holds the dataset "
            f"as --root, or run `dapl data fetch {spec.name} --root {root}`")


def _stat_only(path: Path | None) -> dict:
    out = {"file_size": None, "sha256": None, "width": None, "height": None, "mode": None, "problem": None}
    if path is None:
        return out
    try:
        out["file_size"] = path.stat().st_size
        out["sha256"] = sha256_file(path) if out["file_size"] else None
    except OSError:
        pass
    return out
