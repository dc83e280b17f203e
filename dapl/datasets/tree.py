"""Walking a dataset folder without ever following a link: the one walk that ``index`` and the image counts use.

A link inside a dataset can point outside it or back at one of its own folders (a loop that would index a
folder twice as a phantom class), so every entry is judged by ``lstat`` alone: links are refused, never
resolved, and so are names holding control characters (a newline in a folder name would break every report
that shows it) and special files (a fifo would block the image check forever). A refused entry is returned with
its reason, so the caller reports it instead of dropping it silently.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Files and folders that operating systems and archivers leave behind: never images, never reported.
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "$recycle.bin"})


def ignored_name(name: str) -> bool:
    """Hidden files/folders (``.name``) and OS/archiver leftovers (``Thumbs.db``, ``__MACOSX``, ...)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


LINK_FIX = "links are never followed (one can point outside the dataset or loop back into it): put the real " \
           "file or folder there instead"


@dataclass(frozen=True)
class Refused:
    """An entry the walk did not take: ``kind`` is ``symlink``, ``bad_name`` or ``special_file``."""

    path: Path
    kind: str
    detail: str


def bad_name(name: str) -> bool:
    """Whether ``name`` holds a control character (``\\x00``-``\\x1f``, ``\\x7f``)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in name)


def shown(rel: str) -> str:
    """A path as reports print it: quoted with ``repr`` when it holds a control character, so it is visible."""
    return repr(rel) if bad_name(rel) else rel


def _refusal(path: Path, link: bool, regular: bool, folder: bool) -> Refused | None:
    if link:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return Refused(path, "symlink", f"is a symbolic link to {target!r}; {LINK_FIX}")
    if bad_name(path.name):
        return Refused(path, "bad_name", f"{path.name!r}: the name holds a control character (e.g. a newline); "
                       "rename it")
    if not (folder or regular):
        return Refused(path, "special_file", "is not a regular file (a device, fifo or socket); remove it")
    return None


def scan(folder: Path) -> tuple[list[tuple[Path, bool]], list[Refused]]:
    """Visible entries of ``folder`` as sorted ``(path, is_dir)``, and the refused ones (links, bad names,
    special files). Hidden and OS leftover names (``Thumbs.db``, ...) are skipped silently. The entry types
    come from the directory listing itself (``lstat`` where it has none), never from a link's target."""
    taken: list[tuple[Path, bool]] = []
    refused: list[Refused] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if ignored_name(e.name):
            continue
        p = Path(folder) / e.name
        is_dir = e.is_dir(follow_symlinks=False)
        bad = _refusal(p, e.is_symlink(), e.is_file(follow_symlinks=False), is_dir)
        if bad is not None:
            refused.append(bad)
        else:
            taken.append((p, is_dir))
    return taken, refused


def walk_files(base: Path, refused: list[Refused] | None = None) -> Iterator[Path]:
    """Regular files below folder ``base`` in sorted order, never through a link; refused entries are
    appended to ``refused`` when given."""
    taken, bad = scan(base)
    if refused is not None:
        refused.extend(bad)
    for p, is_dir in taken:
        if is_dir:
            yield from walk_files(p, refused)
        else:
            yield p


def plain_dir(path: Path) -> bool:
    """A real folder at ``path`` itself (``lstat``: a link to a folder is not one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def link_on_path(root: Path, rel: str, cache: dict[str, str | None] | None = None) -> str | None:
    """The first component of ``root/rel`` (relative, POSIX) that is a link or has a bad name, or ``None``.

    Decided lexically, one ``lstat`` per component (folders cached in ``cache``); nothing is resolved.
    """
    parts = rel.split("/")
    for k in range(1, len(parts) + 1):
        pre = "/".join(parts[:k])
        if cache is not None and k < len(parts) and pre in cache:
            if cache[pre] is not None:
                return cache[pre]
            continue
        try:
            bad: str | None = pre if stat.S_ISLNK(os.lstat(root / pre).st_mode) or bad_name(parts[k - 1]) else None
        except OSError:
            bad = None  # missing: the caller reports it as missing
        if cache is not None and k < len(parts):
            cache[pre] = bad
        if bad is not None:
            return bad
    return None
