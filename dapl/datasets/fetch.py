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

import hashlib
import os
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from dapl.datasets.archive import _merge, safe_extract
from dapl.datasets.errors import ChecksumError, DatasetError, DatasetLayoutError, DatasetUnavailable
from dapl.datasets.registry import DatasetSpec, Resource, get_spec

OFFLINE_ENV = ("DAPL_OFFLINE", "HF_HUB_OFFLINE")
PROBE_ENV = "DAPL_NET_PROBE"  # "host:port" to probe instead of the download host (tests use a closed port)
PROBE_TIMEOUT = 3.0
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def default_download_dir() -> Path:
    """``$DAPL_DOWNLOAD_DIR`` or ``~/.cache/dapl/downloads``: outside ``data/`` so DVC does not track archives."""
    env = os.environ.get("DAPL_DOWNLOAD_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dapl" / "downloads"


# -- network -----------------------------------------------------------------------------------------
def offline_reason(url: str | None = None, probe: tuple[str, int] | None = None,
                   timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` if ``url``'s host answers a TCP connect within ``timeout`` seconds, else why not.

    ``DAPL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` skip the probe. The connect runs in a daemon thread so that a
    hanging DNS lookup cannot stretch the wait past ``timeout``.
    """
    for var in OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    if probe is None and os.environ.get(PROBE_ENV):
        host, _, port = os.environ[PROBE_ENV].rpartition(":")
        probe = (host, int(port))
    if probe is None:
        if not url:
            return None
        u = urllib.parse.urlsplit(url)
        probe = (u.hostname or "", u.port or (443 if u.scheme == "https" else 80))
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(probe, timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot reach {probe[0]}:{probe[1]} ({e.__class__.__name__}: {e})")

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return result[0] if result else f"cannot reach {probe[0]}:{probe[1]} (no answer in {timeout:.0f} s)"


def download(url: str, dest: Path | str, *, size: int | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run (HTTP Range)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is None or have < size:
        headers = {"User-Agent": "dapl-fetch"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                resumed = have > 0 and r.status == 206
                if not resumed:
                    have = 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else size
                with open(part, "ab" if resumed else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            if not (e.code == 416 and have and (size is None or have == size)):  # 416: .part already whole
                raise DatasetUnavailable(f"downloading {url} failed: HTTP {e.code} {e.reason}. Download it "
                                         f"yourself and put it at {dest}") from e
        except (urllib.error.URLError, OSError) as e:
            raise DatasetUnavailable(f"downloading {url} failed ({e}); the partial file {part} is kept and "
                                     f"resumed next time. Or download it yourself and put it at {dest}") from e
    try:
        verify_file(part, size=size, sha256=sha256, label=url)
    except ChecksumError:
        if size is None or part.stat().st_size >= size:
            part.unlink()  # a complete but wrong file cannot be resumed
        raise
    os.replace(part, dest)
    return dest


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def verify_file(path: Path | str, *, size: int | None = None, sha256: str | None = None, label: str = "") -> None:
    """Check ``path`` against the expected size and sha256 (either may be unknown)."""
    path = Path(path)
    got = path.stat().st_size
    if size is not None and got != size:
        raise ChecksumError(f"{path}: {got} bytes, expected {size} ({label or path.name}); the file is "
                            "incomplete or a different version. Delete it and download it again.")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise ChecksumError(f"{path}: sha256 {digest}, expected {sha256} ({label or path.name}). "
                                "Delete it and download it again.")


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
        if images.is_dir() and [p.name for p in target.iterdir() if not p.name.startswith(".")] == ["images"]:
            _merge(images, target)
            images.rmdir()


def _hoist(root: Path, expected: set[str], depth: int) -> None:
    """Move the contents of any non-dataset folder that (deeper down) holds dataset folders up to ``root``."""
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if child.name in expected or child.name.startswith("."):
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
    """Whether every resource of ``spec`` is in place under ``root``."""
    return all(_provided(spec, Path(root), r) for r in spec.resources)


# -- installing local files ---------------------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no extra disk for a folder the user already extracted elsewhere
    except OSError:
        shutil.copy2(src, dst)


def install(spec: DatasetSpec, root: Path, source: Path, *, progress: bool = True) -> None:
    """Put a local archive, plain file (split list) or extracted folder into ``root``."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if source.is_dir():
        if source.resolve() == root.resolve() or root.resolve() in source.resolve().parents:
            return
        expected = _expected_names(spec)
        dst = root / source.name if source.name in expected else root
        shutil.copytree(source, dst, copy_function=_link_or_copy, dirs_exist_ok=True, symlinks=False)
    elif _is_archive(source):
        safe_extract(source, root, progress=progress)
    else:
        root.mkdir(parents=True, exist_ok=True)
        target = root / _file_target(spec, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
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


# -- the entry point ----------------------------------------------------------------------------------
def fetch_dataset(name: str, root: Path | str, *, sources: Sequence[Path | str] = (),
                  download_dir: Path | str | None = None, seed: int = 0, force: bool = False,
                  probe: tuple[str, int] | None = None, progress: bool = True) -> Path:
    """Make ``root`` hold dataset ``name``; return ``root``.

    ``sources``: archives, split files or already-extracted folders the user has (any order). ``seed`` and
    ``force`` only concern the generated ``toy`` world. Raises :class:`DatasetUnavailable` (within ~3 s
    when offline, at once for click-through sources) with instructions when files are missing.
    """
    spec = get_spec(name)
    root = Path(root)
    if spec.layout == "toy":
        return generate_toy(root, seed=seed, force=force)
    for s in sources:
        install(spec, root, Path(s), progress=progress)
    if spec.name == "folder":
        if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
            raise DatasetUnavailable(f"no images at {root}: put them as {root}/<domain>/<class>/<image> "
                                     "(or pass the folder or an archive of it as a source)")
        return root
    normalise_layout(spec, root)
    dl_dir = Path(download_dir) if download_dir is not None else default_download_dir()
    places = [dl_dir, root, root.parent]
    missing = [r for r in spec.resources if not _provided(spec, root, r)]
    for r in list(missing):
        local = _find_local(r, places)
        if local is not None:
            verify_file(local, size=r.size, sha256=r.sha256, label=r.filename)
            install(spec, root, local, progress=progress)
            normalise_layout(spec, root)
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
            install(spec, root, path, progress=progress)
            normalise_layout(spec, root)
    still = [r.filename for r in spec.resources if not _provided(spec, root, r)]
    if still:
        raise DatasetLayoutError(f"{root}: after installing {', '.join(still)} the expected folders/files "
                                 f"{[p for r in spec.resources for p in r.provides]} are still missing; "
                                 "check that the archives are the official ones")
    return root


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
