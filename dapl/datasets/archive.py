"""Safe extraction of zip and tar archives.

Archives come from the internet or from users; a member named ``/etc/x``, ``../x`` or a link pointing out of
the destination must never write outside it. Every member is checked lexically (absolute paths, drive letters
and ``..`` components are refused; link targets must stay inside) and physically (the real path of each
write, after any link created by the archive, must stay inside). Extraction goes to a staging folder *inside*
the destination that is deleted on any error, and is merged into the destination only when the whole archive
passed, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from dapl.datasets.errors import DatasetError, UnsafeArchiveError

_DRIVE = re.compile(r"^[A-Za-z]:")


def member_path(name: str, archive: Path | str = "") -> str:
    """The normalised relative POSIX path of an archive member, or :class:`UnsafeArchiveError`."""
    n = name.replace("\\", "/")
    if n.startswith("/") or _DRIVE.match(n):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract "
                                 "this archive (nothing was written). Get a clean copy of the archive.")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' and could land outside the "
                                 "destination; refusing to extract this archive (nothing was written).")
    return "/".join(parts)


def _check_link(rel: str, target: str, archive: Path, hard: bool = False) -> None:
    t = target.replace("\\", "/")
    if t.startswith("/") or _DRIVE.match(t):
        bad = True
    else:
        base = "" if hard else posixpath.dirname(rel)  # hard links are relative to the archive root
        norm = posixpath.normpath(posixpath.join(base, t))
        bad = norm == ".." or norm.startswith("../")
    if bad:
        kind = "hard link" if hard else "symlink"
        raise UnsafeArchiveError(f"{archive}: member {rel!r} is a {kind} to {target!r}, outside the "
                                 "destination; refusing to extract this archive (nothing was written).")


def _inside(path: str | Path, base: str) -> bool:
    real = os.path.realpath(path)
    return real == base or real.startswith(base + os.sep)


def safe_extract(archive: Path | str, dest: Path | str, *, progress: bool = True) -> list[str]:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into ``dest``; return the top-level names it created.

    Raises :class:`UnsafeArchiveError` (and writes nothing) if any member would land outside ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DatasetError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extract-{archive.name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, progress)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, progress)
        else:
            raise DatasetError(f"{archive}: neither a zip nor a tar archive (incomplete download?); "
                               "delete it and download it again")
        _check_links_inside(staging, archive)
        top = sorted(os.listdir(staging))
        _merge(staging, dest)
        return top
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{archive}: corrupt or incomplete archive ({e}); delete it and download it "
                           "again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(archive: Path, staging: Path, progress: bool) -> None:
    base = os.path.realpath(staging)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=not progress):
            rel = member_path(info.filename, archive)
            if not rel:
                continue
            target = staging / rel
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", "replace")
                _check_link(rel, link, archive)
                _guard_parent(target, base, archive, rel)
                os.symlink(link, target)
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                if not _inside(target, base):
                    raise UnsafeArchiveError(f"{archive}: member {rel!r} resolves outside the destination "
                                             "through a link; refusing to extract (nothing was written).")
                continue
            _guard_parent(target, base, archive, rel)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _guard_parent(target: Path, base: str, archive: Path, rel: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target) and os.path.islink(target):
        raise UnsafeArchiveError(f"{archive}: member {rel!r} would write through a link; refusing to "
                                 "extract (nothing was written).")
    if not _inside(target.parent, base):
        raise UnsafeArchiveError(f"{archive}: member {rel!r} resolves outside the destination through a "
                                 "link; refusing to extract (nothing was written).")


def _extract_tar(archive: Path, staging: Path, progress: bool) -> None:
    base = os.path.realpath(staging)
    with tarfile.open(archive, "r:*") as tf, tqdm(desc=f"extract {archive.name}", unit="file",
                                                   disable=not progress) as bar:
        for m in tf:  # streaming: one pass, each member checked before it is written
            rel = member_path(m.name, archive)
            if not rel:
                continue
            if m.issym():
                _check_link(rel, m.linkname, archive)
            elif m.islnk():
                _check_link(rel, m.linkname, archive, hard=True)
                m.linkname = member_path(m.linkname, archive)
            elif not (m.isreg() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {rel!r} is a device or fifo; refusing to "
                                         "extract this archive (nothing was written).")
            if not m.isdir():
                _guard_parent(staging / rel, base, archive, rel)
            m.name = rel
            try:  # the 'data' filter re-checks real paths and strips permissions/ownership
                tf.extract(m, staging, filter="data")
            except tarfile.FilterError as e:
                raise UnsafeArchiveError(f"{archive}: member {rel!r} refused ({e}); refusing to extract "
                                         "this archive (nothing was written).") from e
            bar.update(1)


def _check_links_inside(staging: Path, archive: Path) -> None:
    base = os.path.realpath(staging)
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) and not _inside(p, base):
                raise UnsafeArchiveError(f"{archive}: link {os.path.relpath(p, staging)!r} points outside "
                                         "the destination; refusing to extract (nothing was kept).")


def _merge(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst``, merging folders that already exist there."""
    for name in sorted(os.listdir(src)):
        s, d = src / name, dst / name
        s_dir = s.is_dir() and not s.is_symlink()
        d_dir = d.is_dir() and not d.is_symlink()
        if s_dir and d_dir:
            _merge(s, d)
            continue
        if d_dir:
            shutil.rmtree(d)
        elif os.path.lexists(d):
            d.unlink()
        os.replace(s, d)
