"""Safe extraction: hostile zip/tar members are refused and nothing is written outside (or at all)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from dapl.datasets.archive import member_path, safe_extract
from dapl.datasets.errors import DatasetError, UnsafeArchiveError


def _tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def _tar(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """members: (kind, name, data_or_linkname) with kind in file/sym/hard/fifo."""
    with tarfile.open(path, "w:gz") as tf:
        for kind, name, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                raw = data.encode()
                ti.size = len(raw)
                tf.addfile(ti, io.BytesIO(raw))
                continue
            ti.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            ti.linkname = data
            tf.addfile(ti)
    return path


def _zip(path: Path, members: list[tuple[str, str, str]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, data in members:
            if kind == "file":
                zf.writestr(name, data)
            else:  # a unix symlink entry: mode S_IFLNK, the target as content
                zi = zipfile.ZipInfo(name)
                zi.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(zi, data)
    return path


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(sandbox, dest): dest lives inside sandbox; anything appearing in sandbox outside dest is an escape."""
    dest = tmp_path / "sandbox" / "dest"
    dest.mkdir(parents=True)
    return tmp_path / "sandbox", dest


HOSTILE = {
    "dotdot": [("file", "ok/a.txt", "a"), ("file", "../evil.txt", "x")],
    "dotdot_nested": [("file", "ok/../../evil.txt", "x")],
    "absolute": [("file", "ok/a.txt", "a"), ("file", "/tmp/dapl_evil_abs.txt", "x")],
    "symlink_out": [("sym", "ok/link", "../../evil_dir"), ("file", "ok/link/evil.txt", "x")],
    "symlink_abs": [("sym", "ok/link", "/etc")],
}


@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_refused_and_nothing_written(box, tmp_path, fmt, case):
    sandbox, dest = box
    arch = (_tar if fmt == "tar" else _zip)(tmp_path / f"bad.{fmt}", HOSTILE[case])
    before = _tree(sandbox)
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(arch, dest, progress=False)
    msg = str(ei.value)
    assert "refusing" in msg and str(arch) in msg
    assert _tree(sandbox) == before  # nothing outside dest, nothing left in dest either
    assert not Path("/tmp/dapl_evil_abs.txt").exists()


def test_tar_hardlink_out_and_fifo_refused(box, tmp_path):
    sandbox, dest = box
    for members in ([("hard", "ok/h", "../../etc/passwd")], [("fifo", "ok/pipe", "")]):
        arch = _tar(tmp_path / "bad.tar.gz", members)
        with pytest.raises(UnsafeArchiveError):
            safe_extract(arch, dest, progress=False)
    assert _tree(sandbox) == {"dest"}


def test_zip_symlink_chain_escape_refused(box, tmp_path):
    """Lexically harmless targets whose *physical* resolution climbs out through another link."""
    sandbox, dest = box
    members = [("file", "d/keep.txt", "k"), ("sym", "a/b/c", "../../d"), ("sym", "a/x", "b/c/../../.."),
               ("file", "a/x/evil.txt", "x")]
    arch = _zip(tmp_path / "chain.zip", members)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arch, dest, progress=False)
    assert _tree(sandbox) == {"dest"}


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_clean_archive_extracts(box, tmp_path, fmt):
    sandbox, dest = box
    members = [("file", "top/Art/Mug/1.jpg", "img"), ("file", "top/readme.txt", "r"), ("file", "first.txt", "f")]
    arch = (_tar if fmt == "tar" else _zip)(tmp_path / f"good.{fmt}", members)
    top = safe_extract(arch, dest, progress=False)
    assert top == ["first.txt", "top"]
    assert (dest / "top/Art/Mug/1.jpg").read_text() == "img" and (dest / "first.txt").read_text() == "f"
    assert _tree(sandbox) == {"dest"} | {f"dest/{p}" for p in _tree(dest)}
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract")]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_even_an_inside_link_is_refused(box, tmp_path, fmt):
    """Datasets need no links, so none is ever created (which is what makes the writes safe)."""
    sandbox, dest = box
    members = [("file", "top/Art/Mug/1.jpg", "img"), ("sym", "top/alias", "Art")]
    arch = (_tar if fmt == "tar" else _zip)(tmp_path / f"good.{fmt}", members)
    with pytest.raises(UnsafeArchiveError, match="'top/alias' is a symlink"):
        safe_extract(arch, dest, progress=False)
    assert _tree(sandbox) == {"dest"}


def test_member_path_rules():
    assert member_path("./a//b/./c.jpg") == "a/b/c.jpg"
    for bad in ("/abs", "C:/win", "a/../../b", "..\\x"):
        with pytest.raises(UnsafeArchiveError):
            member_path(bad)


def test_not_an_archive(tmp_path):
    f = tmp_path / "x.zip"
    f.write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        safe_extract(f, tmp_path / "out", progress=False)
