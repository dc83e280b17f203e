"""Safe, complete extraction of zip and tar archives.

Archives come from the internet or from users, so extraction is safe *by construction*, on any Python >= 3.11
(it relies neither on ``os.path.realpath`` nor on tarfile's extraction filters, which a chain of nested links
longer than ``PATH_MAX`` fooled before CPython 3.11.13):

- datasets need no links: every symlink, hard link, device, fifo or other special member is refused;
- each member's destination is computed lexically (absolute paths, drive letters and ``..`` are refused), so it
  is a plain relative path strictly inside a staging folder that this function has just created;
- folders are created, and files opened, one path component at a time relative to an open folder descriptor
  with ``O_NOFOLLOW``: no link can be followed, and since nothing here creates links, none can exist (if one
  ever did, the open fails and the archive is refused);
- tarfile's ``data_filter`` still checks each tar member, as a second guard only.

Completeness: every member is read to its end (a zip member's CRC is checked; a tar member's data must all be
there), a tar must end with its two zero end-of-archive blocks (tarfile itself stops silently at a header cut
short), a compressed stream is read to its end (its checksum is checked), and a zip's central directory must
account for every local member (a member it does not list would be skipped silently). Everything goes to a
staging folder inside the destination, removed on any error, and is merged into the destination only when the
whole archive passed: a refused or cut-short archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, NoReturn

from tqdm.auto import tqdm

from dapl.datasets.errors import DatasetError, UnsafeArchiveError

_DRIVE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_REFUSED = "refusing to extract this archive (nothing was written)"
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_ZIP_LOCAL = b"PK\x03\x04"


def member_path(name: str, archive: Path | str = "") -> str:
    """The normalised relative POSIX path of an archive member, or :class:`UnsafeArchiveError`."""
    n = name.replace("\\", "/")
    if n.startswith("/") or _DRIVE.match(n):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; {_REFUSED}. Get a clean "
                                 "copy of the archive.")
    if "\x00" in n:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a NUL byte in its name; {_REFUSED}.")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' and could land outside the "
                                 f"destination; {_REFUSED}.")
    return "/".join(parts)


class _Staging:
    """Writes below one freshly made folder, walking open folder descriptors with ``O_NOFOLLOW``."""

    def __init__(self, path: Path, archive: Path) -> None:
        self.archive = archive
        self.fd = os.open(path, _DIR_FLAGS)
        self._last: tuple[tuple[str, ...], int] | None = None  # the last parent folder, kept open

    def close(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None
        os.close(self.fd)

    def _dir(self, parts: tuple[str, ...], rel: str) -> int:
        """An open descriptor of folder ``parts`` (created as needed); never follows a link."""
        if not parts:
            return self.fd
        if self._last is not None and self._last[0] == parts:
            return self._last[1]
        cur = self.fd
        try:
            for name in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=cur)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=cur)
                if cur != self.fd:
                    os.close(cur)
                cur = nxt
        except OSError as e:
            if cur != self.fd:
                os.close(cur)
            self._fail(e, rel)
        if self._last is not None:
            os.close(self._last[1])
        self._last = (parts, cur)
        return cur

    def makedirs(self, rel: str) -> None:
        self._dir(tuple(rel.split("/")), rel)

    def write(self, rel: str, src: BinaryIO) -> int:
        """Copy ``src`` to its end into file ``rel``; return the bytes written."""
        *parent, name = rel.split("/")
        dfd = self._dir(tuple(parent), rel)
        try:
            fd = os.open(name, _FILE_FLAGS, 0o644, dir_fd=dfd)
        except OSError as e:
            self._fail(e, rel)
        n = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                n += len(chunk)
        return n

    def _fail(self, e: OSError, rel: str) -> NoReturn:
        if e.errno == errno.ELOOP:  # cannot happen: nothing here creates links. Refuse rather than trust it.
            raise UnsafeArchiveError(f"{self.archive}: a link appeared on the path of member {rel!r} inside the "
                                     f"staging folder; {_REFUSED}.") from e
        if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            raise DatasetError(f"{self.archive}: member {rel!r} is both a file and a folder in this archive "
                               "(a damaged archive); delete it and download it again") from e
        raise e


def _remove(path: Path) -> None:
    """Remove ``path`` (file, link or folder) without following any link."""
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _kind(archive: Path) -> str:
    if zipfile.is_zipfile(archive):
        return "zip"
    with open(archive, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_LOCAL):
        raise DatasetError(f"{archive}: a zip archive without its central directory (the download was cut "
                           "short); delete it and download it again")
    if tarfile.is_tarfile(archive):
        return "tar"
    for magic, what in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise DatasetError(f"{archive}: a {what} stream that holds no readable tar archive (corrupt or cut "
                               "short); delete it and download it again")
    raise DatasetError(f"{archive}: neither a zip nor a tar archive (incomplete download?); delete it and "
                       "download it again")


def safe_extract(archive: Path | str, dest: Path | str, *, progress: bool = True) -> list[str]:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into ``dest``; return the top-level names it holds.

    Raises :class:`UnsafeArchiveError` for a member that would land outside ``dest`` or is not a plain file
    or folder, and :class:`DatasetError` for a corrupt or cut-short archive; either way nothing is written.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DatasetError(f"{archive}: archive not found; check the path")
    if os.path.lexists(dest) and not dest.is_dir():
        raise DatasetError(f"{dest}: exists and is not a folder; extract into a folder")
    kind = _kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extract-{archive.name}.tmp"
    _remove(staging)
    os.mkdir(staging)  # new and empty: nothing in it is a link, and nothing below creates one
    try:
        box = _Staging(staging, archive)
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, box, progress)
        finally:
            box.close()
        top = sorted(os.listdir(staging))
        _merge(staging, dest)
        return top
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError,
            NotImplementedError, RuntimeError) as e:
        raise DatasetError(f"{archive}: corrupt or incomplete archive ({e.__class__.__name__}: {e}); delete it "
                           "and download it again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _special(kind: str, archive: Path, name: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: member {name!r} is a {kind}; datasets need only plain files and "
                              f"folders, so {_REFUSED}. Get the official archive.")


# -- tar ------------------------------------------------------------------------------------------------
def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "fifo"
    return f"special member (tar type {m.type!r})"


def _extract_tar(archive: Path, box: _Staging, progress: bool) -> None:
    guard = getattr(tarfile, "data_filter", None)  # absent before 3.11.4; a second guard only
    n = 0
    with tarfile.open(archive, "r:*") as tf, tqdm(desc=f"extract {archive.name}", unit="file",
                                                   disable=not progress) as bar:
        for m in tf:  # streaming, one pass: each member is checked before anything is written
            rel = member_path(m.name, archive)
            if not (m.isreg() or m.isdir()):
                raise _special(_tar_kind(m), archive, m.name)
            if guard is not None:
                try:
                    guard(m, "/nonexistent-dapl-staging")  # lexical checks only: that folder does not exist
                except tarfile.FilterError as e:
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} refused ({e}); {_REFUSED}.") from e
            n += 1
            bar.update(1)
            if not rel:
                continue
            if m.isdir():
                box.makedirs(rel)
                continue
            src = tf.extractfile(m)
            assert src is not None  # a regular member always has a file object
            with src:
                got = box.write(rel, src)  # reads to the member's end: cut-short data raises ReadError
            if got != m.size:
                raise DatasetError(f"{archive}: member {m.name!r} has {got} of {m.size} bytes (cut short); "
                                   "delete the archive and download it again")
        _check_tar_end(tf, archive, n)


def _check_tar_end(tf: tarfile.TarFile, archive: Path, members: int) -> None:
    """A whole tar ends with two zero blocks; read any compressed stream to its end (checks its CRC)."""
    fobj = tf.fileobj
    assert fobj is not None
    fobj.seek(tf.offset)
    end = fobj.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.count(0) != len(end):
        what = "ends" if not end else "holds damaged or partial data"
        raise DatasetError(f"{archive}: tar archive is cut short: it {what} after {members} member(s) where its "
                           "end-of-archive marker should be; delete it and download it again")
    while fobj.read(1 << 20):
        pass


# -- zip ------------------------------------------------------------------------------------------------
def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    """``None`` for a plain file or folder, else what the member is (from its unix mode bits)."""
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return {stat.S_IFLNK: "symlink", stat.S_IFCHR: "device", stat.S_IFBLK: "device",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(fmt, f"special member (mode {fmt:o})")


def _extract_zip(archive: Path, box: _Staging, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check every member before writing any
            member_path(info.filename, archive)
            kind = _zip_kind(info)
            if kind is not None:
                raise _special(kind, archive, info.filename)
        _check_zip_listing(zf, infos, archive)
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=not progress):
            rel = member_path(info.filename, archive)
            if not rel:
                continue
            if info.is_dir():
                box.makedirs(rel)
                continue
            with zf.open(info) as src:  # read to the end: the CRC is checked there
                box.write(rel, src)


def _check_zip_listing(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], archive: Path) -> None:
    """Every local member must be listed in the central directory, and no two members may overlap."""
    fp = zf.fp
    assert fp is not None
    pos = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < pos:
            raise DatasetError(f"{archive}: zip members overlap at {info.filename!r} (a damaged or crafted "
                               "archive); delete it and download it again")
        _no_local_header(fp, pos, info.header_offset, archive)
        fp.seek(info.header_offset)
        head = fp.read(30)
        if len(head) < 30 or not head.startswith(_ZIP_LOCAL):
            raise DatasetError(f"{archive}: member {info.filename!r} is listed but its data is missing (a "
                               "damaged archive); delete it and download it again")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        pos = info.header_offset + 30 + name_len + extra_len + info.compress_size
    _no_local_header(fp, pos, getattr(zf, "start_dir", pos), archive)


def _no_local_header(fp: BinaryIO, start: int, stop: int, archive: Path) -> None:
    """Bytes between listed members (data descriptors at most) must hold no local member header."""
    fp.seek(start)
    tail = b""
    while start < stop:
        chunk = fp.read(min(1 << 20, stop - start))
        if not chunk:
            return
        if _ZIP_LOCAL in tail + chunk:
            raise DatasetError(f"{archive}: holds a zip member that its central directory does not list (near "
                               f"byte {start}); the archive is damaged: delete it and download it again")
        tail = chunk[-3:]
        start += len(chunk)


# -- merging ----------------------------------------------------------------------------------------------
def _merge(src: Path, dst: Path, created: list[Path] | None = None) -> list[Path]:
    """Move the contents of ``src`` into ``dst``, merging folders that exist in both; links are never followed.

    Returns the paths that did not exist in ``dst`` before (the outermost new ones), so a caller can undo.
    """
    created = [] if created is None else created
    for name in sorted(os.listdir(src)):
        s, d = src / name, dst / name
        s_dir = s.is_dir() and not s.is_symlink()
        d_dir = d.is_dir() and not d.is_symlink()
        if s_dir and d_dir:
            _merge(s, d, created)
            continue
        existed = os.path.lexists(d)
        if d_dir:
            shutil.rmtree(d)
        elif existed:
            d.unlink()
        os.replace(s, d)
        if not existed:
            created.append(d)
    return created
