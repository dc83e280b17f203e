"""Get a dataset's files into ``root`` in the layout the indexer expects.

Order of preference: files already in place; local archives/folders the user names (``sources``) or left
in the download folder; a download, only where the source is a plain URL and the machine is online. Click-
through sources (Google Drive) and offline machines fail fast with :class:`DatasetUnavailable`, whose message
says which file to get and exactly where to put it. Downloads resume (HTTP Range) and are checked against the
registry's size/sha256 where known; archives are extracted with :func:`safe_extract`; the layout is then
normalised (an archive's wrapper folder hoisted, Office-Home's ``Real World`` renamed ``Real_World``,
Office-31's ``images/`` level removed) so every dataset ends up as ``root/<domain>/<class>/<image>`` or its
split-file equivalent.
"""

from __future__ import annotations

import os
import shutil
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

from dapl.datasets.archive import _merge, _remove, safe_extract
from dapl.datasets.complete import check_counts as check_counts_on
from dapl.datasets.complete import count_images, image_counts, is_stamped, write_stamp
from dapl.datasets.download import default_download_dir, download, offline_reason, verify_file
from dapl.datasets.errors import DatasetError, DatasetLayoutError, DatasetUnavailable, DatasetWarning
from dapl.datasets.registry import DatasetSpec, Resource, get_spec
from dapl.datasets.tree import ignored_name

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


# -- layout -------------------------------------------------------------------------------------------
def _expected_names(spec: DatasetSpec) -> set[str]:
    names = {f for d in spec.domains for f in d.all_folders}
    names.update(p.split("/")[0] for r in spec.resources for p in r.provides)
    return names


def normalise_layout(spec: DatasetSpec, root: Path | str) -> None:
    """Hoist wrapper folders, rename domain aliases, drop an ``images/`` level. Idempotent, deterministic."""
    root = Path(root)
    if not root.is_dir() or not spec.domains:
        return
    expected = _expected_names(spec)
    if not all(any((root / f).is_dir() for f in d.all_folders) for d in spec.domains):
        _hoist(root, expected, depth=3)  # only while domain folders are missing: never reshuffle a full tree
    for d in spec.domains:
        target = root / d.folder
        for alias in d.aliases:
            if not target.exists() and (root / alias).is_dir():
                (root / alias).rename(target)
        images = target / "images"
        if images.is_dir() and [p.name for p in target.iterdir() if not ignored_name(p.name)] == ["images"]:
            _merge(images, target)
            images.rmdir()


def _hoist(root: Path, expected: set[str], depth: int) -> None:
    """Move the contents of any non-dataset folder that (deeper down) holds dataset folders up to ``root``."""
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if child.name in expected or ignored_name(child.name):
            continue
        holder = _find_holder(child, expected, depth)
        if holder is not None:
            _merge(holder, root)
            if _empty_tree(child):
                shutil.rmtree(child)


def _find_holder(path: Path, expected: set[str], depth: int) -> Path | None:
    names = {p.name for p in path.iterdir()}
    if names & expected:
        return path
    if depth <= 1:
        return None
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
        found = _find_holder(sub, expected, depth - 1)
        if found is not None:
            return found
    return None


def _empty_tree(path: Path) -> bool:
    return all(p.is_dir() for p in path.rglob("*"))


def _provided(spec: DatasetSpec, root: Path, r: Resource) -> bool:
    def present(rel: str) -> bool:
        if (root / rel).exists():
            return True
        try:
            return any((root / f).exists() for f in spec.domain(rel).all_folders)
        except KeyError:
            return False

    return all(present(p) for p in r.provides)


def is_complete(spec: DatasetSpec, root: Path | str) -> bool:
    """Whether a fetch of ``spec`` into ``root`` finished with every check passed (its stamp is there)."""
    return is_stamped(spec, root)


# -- user paths -------------------------------------------------------------------------------------------
def check_folder_arg(path: Path | str, flag: str = "--root") -> None:
    """A folder argument must be a folder or not exist yet, under a parent that is a folder."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise DatasetError(f"{flag} {path}: is a file, not a folder; pass a folder (it is created if missing)")
    _parents_are_folders(path, flag)


def check_output_path(path: Path | str, flag: str = "--out") -> None:
    """An output file argument must not be a folder, and its nearest existing parent must be a folder."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{flag} {path}: is a folder; pass a file path")
    _parents_are_folders(path, flag)


def _parents_are_folders(path: Path, flag: str) -> None:
    for anc in path.absolute().parents:
        if os.path.lexists(anc):
            if not anc.is_dir():
                raise DatasetError(f"{flag} {path}: {anc} is a file, not a folder; choose another path")
            return


# -- installing local files ---------------------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy folder ``src`` into ``dst`` without following links: files are hard-linked where possible.

    A link inside ``src`` (a loop included) or a special file is an error naming it; the caller copies into a
    staging folder, so an error leaves nothing partial.
    """
    src_real = os.path.realpath(src)  # the folder the user named (its own path may be a link they made)
    for dirpath, dirnames, filenames in os.walk(src_real):
        rel = os.path.relpath(dirpath, src_real)
        out = dst if rel == "." else dst / rel
        out.mkdir(parents=True, exist_ok=True)
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            shown = Path(src) / os.path.relpath(p, src_real)
            if stat.S_ISLNK(mode):
                target = os.readlink(p)
                up = os.path.realpath(p)
                loop = " (a loop: it points back to one of its own parent folders)" if (
                    up == src_real or dirpath == up or dirpath.startswith(up + os.sep)) else ""
                raise DatasetError(f"{shown}: is a symbolic link to {target!r}{loop}; --source folders are copied "
                                   "without following links: replace it with the real file or folder, or remove "
                                   "it (nothing was copied)")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise DatasetError(f"{shown}: is not a regular file (a device, fifo or socket); remove it from the "
                                   "folder (nothing was copied)")
            try:
                os.link(p, out / name, follow_symlinks=False)  # no extra disk for a folder extracted elsewhere
            except OSError:
                shutil.copy2(p, out / name, follow_symlinks=False)
        dirnames.sort()


def install(spec: DatasetSpec, root: Path, source: Path, *, progress: bool = True,
            final_root: Path | None = None) -> None:
    """Put a local archive, plain file (split list) or extracted folder into ``root`` (a staging folder)."""
    source = Path(source)
    final = final_root if final_root is not None else root
    if not source.exists():
        raise DatasetError(f"--source {source}: no such file or folder; check the path")
    if source.is_dir():
        src, dest = source.resolve(), final.resolve()
        if src == dest or dest in src.parents:
            return  # already inside the dataset folder
        if src in dest.parents:
            raise DatasetError(f"--source {source}: contains the dataset folder {final}; pass the dataset's own "
                               "folders or an archive instead")
        expected = _expected_names(spec)
        copy_tree(source, root / source.name if source.name in expected else root)
    elif _is_archive(source):
        safe_extract(source, root, progress=progress)
    else:
        target = root / _file_target(spec, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _file_target(spec: DatasetSpec, name: str) -> str:
    """Where a plain file belongs: the resource that provides it, or a split-file location."""
    for r in spec.resources:
        if r.kind == "file" and r.filename == name:
            return r.provides[0] if r.provides else name
    if spec.split_file and "/" in spec.split_file:
        return f"{spec.split_file.rsplit('/', 1)[0]}/{name}"
    return name


def _find_local(r: Resource, places: Sequence[Path]) -> Path | None:
    for p in places:
        cand = p / r.filename
        if cand.is_file():
            return cand
    return None


# -- the `folder` layout: one wrapper folder is hoisted ------------------------------------------------------
def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not ignored_name(p.name))


def wrapper_folder(root: Path) -> Path | None:
    """The single folder of ``root`` if it wraps the real tree (``root/W/<domain>/<class>/<image>``).

    It does when ``root`` holds nothing else visible but that folder, and every folder in it holds only
    folders (class folders, not images): a one-domain tree would have images there.
    """
    kids = _visible(root) if root.is_dir() else []
    if len(kids) != 1 or not kids[0].is_dir() or kids[0].is_symlink():
        return None
    inner = [p for p in _visible(kids[0])]
    doms = [p for p in inner if p.is_dir() and not p.is_symlink()]
    if not doms or len(doms) != len(inner):
        return None
    for d in doms:
        sub = _visible(d)
        if not sub or not all(p.is_dir() and not p.is_symlink() for p in sub):
            return None
    return kids[0]


def hoist_wrapper(root: Path) -> None:
    """Hoist wrapper folders (see :func:`wrapper_folder`), at most three levels, as DATASETS.md documents."""
    for _ in range(3):
        w = wrapper_folder(root)
        if w is None:
            return
        tmp = root / f".hoist-{w.name}.tmp"
        os.replace(w, tmp)
        _merge(tmp, root)
        shutil.rmtree(tmp)


def _undo(created: Sequence[Path]) -> None:
    for p in reversed(created):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif os.path.lexists(p):
                p.unlink()
        except OSError:
            pass


# -- the entry point ----------------------------------------------------------------------------------
STAGING = ".dapl-fetch.tmp"


def fetch_dataset(name: str, root: Path | str, *, sources: Sequence[Path | str] = (),
                  download_dir: Path | str | None = None, seed: int = 0, force: bool = False,
                  probe: tuple[str, int] | None = None, progress: bool = True, check_counts: bool = True) -> Path:
    """Make ``root`` hold dataset ``name``; return ``root``.

    ``sources``: archives, split files or already-extracted folders the user has (any order). Everything new
    goes to a staging folder inside ``root`` first, merged into ``root`` only when the needed files are all
    there; the image counts are then checked (``check_counts=False``: a deliberate subset) and the completion
    stamp written last. A failed fetch undoes its merge and removes its staging folder, so a rerun starts
    clean; a stamped dataset is "in place" and left alone unless ``force`` (its ``sources`` then unused, with a
    :class:`DatasetWarning` saying so). ``force`` with ``sources`` on a stamped dataset replaces it (see
    :func:`replace_dataset`); ``force`` alone rechecks it in place. ``seed`` and ``force`` also drive the
    generated ``toy`` world, which writes no stamp (its bytes are versioned by ``data.dvc``).
    Raises :class:`DatasetUnavailable` (within ~3 s when offline, at once for click-through sources) with
    instructions when files are missing.
    """
    spec = get_spec(name)
    root = Path(root)
    check_folder_arg(root, "--root")
    if spec.layout == "toy":
        return generate_toy(root, seed=seed, force=force)
    if is_stamped(spec, root):
        if sources and force:
            return replace_dataset(spec, root, sources, download_dir=download_dir, probe=probe, progress=progress,
                                   check_counts=check_counts)
        if not force:
            if sources:
                warnings.warn(DatasetWarning(sources_not_used(spec, root, sources)), stacklevel=2)
            return root
    root.mkdir(parents=True, exist_ok=True)
    staging = root / STAGING
    _remove(staging)  # left by an interrupted run: start clean
    os.mkdir(staging)
    try:
        for s in sources:
            install(spec, staging, Path(s), progress=progress, final_root=root)
        if spec.name == "folder":
            return _finish_folder(spec, root, staging)
        _fetch_missing(spec, root, staging, download_dir, probe, progress)
        created = _merge(staging, root)
        try:
            normalise_layout(spec, root)
            if check_counts:
                check_counts_on(spec, root)
            write_stamp(spec, root, image_counts(spec, root))
        except BaseException:
            _undo(created)
            raise
        return root
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sources_not_used(spec: DatasetSpec, root: Path, sources: Sequence[Path | str]) -> str:
    names = ", ".join(str(s) for s in sources)
    return (f"{root}: {spec.title} is already complete (fetched and checked before), so --source {names} was not "
            f"used (not even opened). To replace the folder with it, rerun with --force: the new tree is built "
            f"beside it and swapped in only once every check passed")


def replace_dataset(spec: DatasetSpec, root: Path, sources: Sequence[Path | str], **kw) -> Path:
    """Rebuild complete dataset ``root`` from ``sources`` in a fresh sibling folder, then swap it in.

    Paths are decided lexically: ``root`` must not be a link and no source may lie inside it (it is deleted
    with the old tree). A failure before the swap leaves the old tree as it was.
    """
    root = Path(os.path.abspath(root))
    if root.is_symlink():
        raise DatasetError(f"--root {root}: is a symbolic link; --force replaces the folder itself, so pass the "
                           "real folder as --root")
    inside = [s for s in sources if Path(os.path.abspath(s)).is_relative_to(root)]
    if inside:
        raise DatasetError(f"--source {inside[0]}: lies inside {root}, which --force deletes once replaced; move "
                           "it out of the dataset folder first (nothing was changed)")
    fresh, old = (root.parent / f".{root.name}.dapl-{what}.tmp" for what in ("new", "old"))
    _remove(fresh)  # left by an interrupted run
    try:
        fetch_dataset(spec.name, fresh, sources=sources, **kw)
        _remove(old)
        try:
            os.replace(root, old)
        except OSError as e:
            raise DatasetError(f"--root {root}: cannot move it aside to swap in the new tree ({e}); nothing was "
                               "changed") from e
        try:
            os.replace(fresh, root)
        except BaseException:
            os.replace(old, root)
            raise
    finally:
        _remove(fresh)
    _remove(old)
    return root


def _finish_folder(spec: DatasetSpec, root: Path, staging: Path) -> Path:
    hoist_wrapper(staging)
    created = _merge(staging, root)
    try:
        w = wrapper_folder(root)
        if w is not None:
            raise DatasetLayoutError(wrapper_message(root, w, "fetch"))
        doms = [p for p in _visible(root) if p.is_dir() and p.name != STAGING]
        if not doms:
            raise DatasetUnavailable(f"no images at {root}: put them as {root}/<domain>/<class>/<image> "
                                     "(or pass the folder or an archive of it with --source)")
        write_stamp(spec, root, {p.name: (count_images(p), None) for p in doms})
    except BaseException:
        _undo(created)
        raise
    return root


def wrapper_message(root: Path, w: Path, what: str) -> str:
    return (f"{root}: its only folder {w.name!r} holds the domain folders ({w.name}/<domain>/<class>/<image>); "
            f"use --root {w} instead (or fetch the archive with --source, which hoists such a folder)")


def _fetch_missing(spec: DatasetSpec, root: Path, staging: Path, download_dir: Path | str | None,
                   probe: tuple[str, int] | None, progress: bool) -> None:
    normalise_layout(spec, staging)
    dl_dir = Path(download_dir) if download_dir is not None else default_download_dir()
    places = [dl_dir, root, root.parent]

    def have(r: Resource) -> bool:
        return _provided(spec, root, r) or _provided(spec, staging, r)

    missing = [r for r in spec.resources if not have(r)]
    for r in list(missing):
        local = _find_local(r, places)
        if local is not None:
            verify_file(local, size=r.size, sha256=r.sha256, label=r.filename)
            install(spec, staging, local, progress=progress, final_root=root)
            normalise_layout(spec, staging)
            missing.remove(r)
    if missing:
        manual = [r for r in missing if r.manual or not r.url]
        reason = "its files are behind a click-through and cannot be downloaded automatically" if manual \
            else offline_reason(missing[0].url, probe)
        if reason:
            raise DatasetUnavailable(instructions(spec, root, missing, dl_dir, reason))
        for r in missing:
            assert r.url is not None
            path = download(r.url, dl_dir / r.filename, size=r.size, sha256=r.sha256, progress=progress)
            install(spec, staging, path, progress=progress, final_root=root)
            normalise_layout(spec, staging)
    still = [r.filename for r in spec.resources if not have(r)]
    if still:
        raise DatasetLayoutError(f"{root}: after installing {', '.join(still)} the expected folders/files "
                                 f"{[p for r in spec.resources for p in r.provides]} are still missing; "
                                 "check that the archives are the official ones")


def instructions(spec: DatasetSpec, root: Path, missing: Sequence[Resource], dl_dir: Path, reason: str) -> str:
    """The message of :class:`DatasetUnavailable`: which files, from where, to which exact path."""
    lines = [f"Dataset {spec.name} ({spec.title}) is not complete in {root} and cannot be fetched: {reason}.",
             "Download these files yourself:"]
    for r in missing:
        size = f" ({r.approx})" if r.approx else ""
        src = r.url if r.url and not r.manual else (r.where or spec.homepage or "the dataset's homepage")
        lines.append(f"  - {r.filename}{size} from {src}")
        lines.append(f"    put it at: {(dl_dir / r.filename).absolute()}")
    lines.append(f"then run again: dapl data fetch {spec.name} --root {root}")
    folders = ", ".join(str(root / p) for p in dict.fromkeys(p for r in missing for p in r.provides))
    lines.append(f"(or pass each file with --source PATH, or extract them yourself so that {folders} exist; "
                 "see docs/DATASETS.md)")
    return "\n".join(lines)


def generate_toy(root: Path | str, *, seed: int = 0, force: bool = False, **kwargs) -> Path:
    """"Fetch" the toy world: generate it (byte-deterministic for a seed) unless ``root`` already holds it."""
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not force:
        return root
    try:
        from dapl.toy.world import generate_world  # lazy: only the toy dataset needs it
    except ImportError as e:
        raise DatasetError(f"the toy world generator dapl.toy.world.generate_world is not available ({e}); "
                           "it is part of this package: reinstall dapl") from e
    generate_world(root, seed=seed, **kwargs)
    return root
