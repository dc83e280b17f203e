"""Inputs made to break `dapl data fetch|index` and the stages (issue 11): each escape attempt writes nothing
outside its destination, each cut-short archive fails, each bad input gets one clear line and exit 2."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dapl.cli import main
from dapl.datasets import DatasetError, DatasetLayoutError, UnsafeArchiveError, fetch_dataset, index_dataset
from dapl.datasets.archive import safe_extract
from dapl.datasets.complete import STAMP, is_stamped
from dapl.datasets.errors import IncompleteDatasetError, UnknownDatasetError, UnusableDatasetError
from dapl.datasets.fetch import STAGING
from dapl.datasets.problems import check_usable
from dapl.datasets.registry import get_spec


def jpeg(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(sandbox, dest, sentinel): anything new in the sandbox outside dest, or a changed sentinel, is an escape."""
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "dest"
    dest.mkdir(parents=True)
    sentinel = sandbox / "sentinel.txt"
    sentinel.write_text("original")
    return sandbox, dest, sentinel


def _assert_untouched(sandbox: Path, dest: Path, sentinel: Path) -> None:
    assert sentinel.read_text() == "original"
    assert {p for p in _tree(sandbox) if not p.startswith("dest/")} == {"dest", "sentinel.txt"}
    assert not [p for p in dest.iterdir()]  # not even the staging folder is left


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def cve_2025_4517_tar(path: Path, depth: int = 16) -> Path:
    """Nested symlinks whose resolved path exceeds PATH_MAX, so ``os.path.realpath`` stops resolving and the
    ``filter="data"`` check sees an inside path; on CPython < 3.11.13 ``extractall(filter="data")`` then writes
    ``escape/*`` into the folder above the destination (checked by hand on this machine's 3.11.7)."""
    comp, steps, so_far = "d" * 247, "abcdefghijklmnopqrstuvwxyz"[:depth], ""
    with tarfile.open(path, "w") as tf:
        for s in steps:
            _add(tf, os.path.join(so_far, comp), kind=tarfile.DIRTYPE)
            _add(tf, os.path.join(so_far, s), kind=tarfile.SYMTYPE, link=comp)
            so_far = os.path.join(so_far, comp)
        linkpath = os.path.join("/".join(steps), "l" * 254)
        _add(tf, linkpath, kind=tarfile.SYMTYPE, link="../" * depth)
        _add(tf, "escape", kind=tarfile.SYMTYPE, link=linkpath + "/..")
        _add(tf, "escape/sentinel.txt", b"pwned")
        _add(tf, "escape/created.txt", b"new")
    return path


def test_nested_symlink_path_max_tar_cannot_escape(box, tmp_path):
    sandbox, dest, sentinel = box
    arch = cve_2025_4517_tar(tmp_path / "cve.tar")
    with pytest.raises(UnsafeArchiveError, match="is a symlink"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def _zip(path: Path, members: list[tuple[str, str, str]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, data in members:
            zi = zipfile.ZipInfo(name)
            if kind == "sym":
                zi.external_attr = (stat.S_IFLNK | 0o777) << 16
            elif kind == "fifo":
                zi.external_attr = (stat.S_IFIFO | 0o644) << 16
            elif kind == "dir":
                zi.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            zf.writestr(zi, data)
    return path


ZIP_CHAINS = {
    # a folder member made through an earlier link (parents used to be created before the check)
    "dir_through_link": [("dir", "a/b/", ""), ("sym", "a/b/l1", "../.."), ("sym", "a/b/l1/l2", "../.."),
                         ("dir", "a/b/l1/l2/newdir/", ""), ("file", "a/b/l1/l2/sentinel.txt", "pwned")],
    # each link lexically inside, the chain climbing out physically
    "chain": [("dir", "x/y/", ""), ("sym", "x/y/up", ".."), ("sym", "x/up2", "y/up/.."),
              ("sym", "hop", "x/up2/.."), ("file", "hop/sentinel.txt", "pwned"), ("file", "hop/created.txt", "n")],
    "fifo": [("file", "a/1.jpg", "x"), ("fifo", "a/pipe", "")],
}


@pytest.mark.parametrize("case", sorted(ZIP_CHAINS))
def test_zip_link_chains_cannot_escape(box, tmp_path, case):
    sandbox, dest, sentinel = box
    arch = _zip(tmp_path / f"{case}.zip", ZIP_CHAINS[case])
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def test_tar_device_refused(box, tmp_path):
    sandbox, dest, sentinel = box
    arch = tmp_path / "dev.tar"
    with tarfile.open(arch, "w") as tf:
        _add(tf, "a/1.jpg", b"x")
        _add(tf, "a/null", kind=tarfile.CHRTYPE)
    with pytest.raises(UnsafeArchiveError, match="'a/null' is a device"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


# -- completeness ---------------------------------------------------------------------------------------------
def _tar_bytes(n: int = 3) -> tuple[bytes, list[int]]:
    """A plain tar of ``n`` members and the offset just after each member's data (a header boundary)."""
    buf = io.BytesIO()
    ends = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            _add(tf, f"d/c/{i}.jpg", jpeg(i))
            ends.append(buf.tell())
    return buf.getvalue(), ends


@pytest.mark.parametrize("compression", ["", "gz"])
def test_tar_cut_at_a_header_boundary_fails(box, tmp_path, compression):
    sandbox, dest, sentinel = box
    data, ends = _tar_bytes()
    cut = data[:ends[1]]  # two whole members, then nothing: tarfile alone stops silently here
    with tarfile.open(fileobj=io.BytesIO(cut)) as tf:
        assert len(tf.getmembers()) == 2  # (what used to pass as complete)
    arch = tmp_path / f"cut.tar{'.' + compression if compression else ''}"
    if compression:
        import gzip
        arch.write_bytes(gzip.compress(cut, mtime=0))
    else:
        arch.write_bytes(cut)
    with pytest.raises(DatasetError, match="cut short.*after 2 member"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    assert safe_extract(whole, dest, progress=False) == ["d"] and len(_tree(dest / "d" / "c")) == 3


def test_gzip_cut_inside_the_stream_fails(box, tmp_path):
    import gzip
    sandbox, dest, sentinel = box
    data, _ = _tar_bytes(5)
    gz = gzip.compress(data, mtime=0)
    arch = tmp_path / "cut.tar.gz"
    arch.write_bytes(gz[: len(gz) - 9])  # the gzip trailer (CRC, size) is gone
    with pytest.raises(DatasetError, match="download it again"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def _zip_bytes(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, n in enumerate(names):
            zf.writestr(n, jpeg(i))
    return buf.getvalue()


def _central_dir_offset(data: bytes) -> int:
    eocd = data.rindex(b"PK\x05\x06")
    return struct.unpack("<I", data[eocd + 16:eocd + 20])[0]


def test_zip_without_its_central_directory_fails(box, tmp_path):
    sandbox, dest, sentinel = box
    data = _zip_bytes(["d/c/0.jpg", "d/c/1.jpg"])
    arch = tmp_path / "cut.zip"
    arch.write_bytes(data[:_central_dir_offset(data)])
    with pytest.raises(DatasetError, match="without its central directory"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def test_zip_member_missing_from_central_directory_fails(box, tmp_path):
    sandbox, dest, sentinel = box
    hidden = _zip_bytes(["d/c/hidden.jpg"])
    listed = _zip_bytes(["d/c/0.jpg"])
    arch = tmp_path / "unlisted.zip"
    arch.write_bytes(hidden[:_central_dir_offset(hidden)] + listed)  # zipfile reads the listed one only
    with zipfile.ZipFile(arch) as zf:
        assert zf.namelist() == ["d/c/0.jpg"]
    with pytest.raises(DatasetError, match="does not list"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def test_zip_bad_crc_fails(box, tmp_path):
    sandbox, dest, sentinel = box
    data = bytearray(_zip_bytes(["d/c/0.jpg", "d/c/1.jpg"]))
    data[200] ^= 0xFF  # inside the first member's stored bytes
    arch = tmp_path / "crc.zip"
    arch.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="CRC"):
        safe_extract(arch, dest, progress=False)
    _assert_untouched(sandbox, dest, sentinel)


def _office31_tar(path: Path, per_domain: int = 2) -> Path:
    n = 0
    with tarfile.open(path, "w:gz") as tf:
        for dom in ("amazon", "dslr", "webcam"):
            for i in range(per_domain):
                _add(tf, f"{dom}/images/back_pack/frame_{i:04d}.jpg", jpeg(n))
                n += 1
    return path


def test_missing_images_fail_fetch_and_index_naming_domain_and_counts(tmp_path):
    arch = _office31_tar(tmp_path / "domain_adaptation_images.tar.gz")
    root = tmp_path / "office31"
    with pytest.raises(IncompleteDatasetError) as ei:
        fetch_dataset("office31", root, sources=[arch], download_dir=tmp_path / "none", progress=False)
    msg = str(ei.value)
    assert "domain 'amazon' has 2 of 2817 images" in msg and "domain 'webcam' has 2 of 795 images" in msg
    assert "\n" not in msg
    assert sorted(os.listdir(root)) == []  # the merge was undone: a rerun starts clean
    fetch_dataset("office31", root, sources=[arch], download_dir=tmp_path / "none", progress=False,
                  check_counts=False)
    assert is_stamped(get_spec("office31"), root)
    with pytest.raises(IncompleteDatasetError, match="domain 'dslr' has 2 of 498 images"):
        index_dataset("office31", root, progress=False)
    m = index_dataset("office31", root, progress=False, check_counts=False)
    inc = m.problems.filter(pl.col("kind") == "incomplete_domain")
    assert inc.height == 3 and set(inc["severity"]) == {"warning"}


def test_rerun_after_a_failed_fetch_starts_clean_and_in_place_needs_the_stamp(tmp_path):
    (tmp_path / "good").mkdir()
    good = _office31_tar(tmp_path / "good" / "domain_adaptation_images.tar.gz")
    data = good.read_bytes()
    bad = tmp_path / "bad" / "domain_adaptation_images.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    root = tmp_path / "office31"
    kw = dict(download_dir=tmp_path / "none", progress=False, check_counts=False)
    with pytest.raises(DatasetError):
        fetch_dataset("office31", root, sources=[bad], **kw)
    assert os.listdir(root) == []
    (root / STAGING / "junk").mkdir(parents=True)  # as if a run had been killed mid-way
    fetch_dataset("office31", root, sources=[good], **kw)
    assert not (root / STAGING).exists() and (root / STAMP).is_file()
    assert sorted(p.name for p in root.iterdir()) == [STAMP, "amazon", "dslr", "webcam"]
    # a hand-made tree without the stamp is not "in place": it is checked (and found short) first
    hand = tmp_path / "hand"
    (hand / "amazon" / "back_pack").mkdir(parents=True)
    (hand / "amazon" / "back_pack" / "1.jpg").write_bytes(jpeg(1))
    with pytest.raises(DatasetError):
        fetch_dataset("office31", hand, download_dir=tmp_path / "none", progress=False)
    assert not (hand / STAMP).exists()


# -- folders, names, junk --------------------------------------------------------------------------------------
def test_source_folder_with_a_symlink_loop_is_reported_and_nothing_is_left(tmp_path):
    src = tmp_path / "mine"
    (src / "light" / "cat").mkdir(parents=True)
    (src / "light" / "cat" / "1.jpg").write_bytes(jpeg(1))
    os.symlink("..", src / "light" / "cat" / "loop")
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="symbolic link.*a loop"):
        fetch_dataset("folder", root, sources=[src], progress=False)
    assert os.listdir(root) == []


def test_folder_archive_with_a_wrapper_is_hoisted(tmp_path):
    arch = tmp_path / "mine.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        for d, dom in enumerate(("light", "dark")):
            for c, cls in enumerate(("cat", "dog")):
                zf.writestr(f"wrapper/{dom}/{cls}/1.jpg", jpeg(10 * d + c))
        zf.writestr("__MACOSX/wrapper/._x", "junk")
    root = tmp_path / "data"
    fetch_dataset("folder", root, sources=[arch], progress=False)
    m = index_dataset("folder", root, progress=False)
    assert m.domains == ["dark", "light"] and m.classes == ["cat", "dog"] and m.n_ok == len(m.df) == 4


def test_wrapped_folder_tree_is_refused_by_index_with_the_fix(tmp_path):
    root = tmp_path / "data"
    for dom in ("light", "dark"):
        (root / "wrapper" / dom / "cat").mkdir(parents=True)
        (root / "wrapper" / dom / "cat" / "1.jpg").write_bytes(jpeg(len(dom)))
    with pytest.raises(DatasetLayoutError, match=f"use --root {root / 'wrapper'}"):
        index_dataset("folder", root, progress=False)


@pytest.mark.parametrize("a, b", [("Dog", "dog"), ("hot_dog", "hot dog")])
def test_class_folders_colliding_after_normalisation_are_an_error(tmp_path, a, b):
    root = tmp_path / "data"
    for i, (dom, cls) in enumerate([("light", a), ("dark", b), ("dark", "cat"), ("light", "cat")]):
        (root / dom / cls).mkdir(parents=True, exist_ok=True)
        (root / dom / cls / f"{i}.jpg").write_bytes(jpeg(i))
    with pytest.raises(DatasetLayoutError) as ei:
        index_dataset("folder", root, progress=False)
    msg = str(ei.value)
    assert f"'dark/{b}'" in msg and f"'light/{a}'" in msg and "rename or merge" in msg


def test_os_junk_and_hidden_files_are_ignored_not_unreadable(tmp_path):
    root = tmp_path / "data"
    for i, dom in enumerate(("light", "dark")):
        (root / dom / "cat").mkdir(parents=True)
        (root / dom / "cat" / "1.jpg").write_bytes(jpeg(i))
        for junk in (".DS_Store", "Thumbs.db", "desktop.ini", ".hidden.jpg"):
            (root / dom / "cat" / junk).write_bytes(b"\x00junk")
            (root / dom / junk).write_bytes(b"\x00junk")
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / "__MACOSX" / "light").mkdir(parents=True)
    m = index_dataset("folder", root, progress=False)
    assert m.domains == ["dark", "light"] and len(m.df) == m.n_ok == 2
    assert m.problems.is_empty()


# -- stages refuse unusable inputs ------------------------------------------------------------------------------
@pytest.fixture
def two_domains(tmp_path) -> Path:
    root = tmp_path / "data"
    n = 0
    for dom, classes in (("light", ("cat", "dog")), ("dark", ("cat", "dog")), ("empty", ("cat",)), ("half", ("cat",))):
        for cls in classes:
            (root / dom / cls).mkdir(parents=True)
            (root / dom / cls / "1.jpg").write_bytes(b"" if dom == "empty" else jpeg(n))
            n += 1
    (root / "half" / "dog").mkdir()
    (root / "half" / "dog" / "1.jpg").write_bytes(b"not an image")
    return root


def test_check_usable_names_the_domain_or_class(two_domains):
    m = index_dataset("folder", two_domains, progress=False)
    check_usable(m, ["light"], ["dark"])
    with pytest.raises(UnusableDatasetError, match=r"target domain 'empty' .*no usable image.*--problems"):
        check_usable(m, ["light"], ["empty"])
    with pytest.raises(UnusableDatasetError, match=r"class\(es\) 'dog' .*source domain\(s\) half"):
        check_usable(m, ["half"], ["light"])
    with pytest.raises(UnusableDatasetError, match="no domain 'nowhere'"):
        check_usable(m, ["nowhere"], ["light"])


def test_stages_refuse_an_empty_target_before_loading_weights(two_domains, tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    assert main(["data", "index", "folder", "--root", str(two_domains), "--out", str(manifest)]) == 0
    capsys.readouterr()
    junk = tmp_path / "junk-weights.pt"  # exists (config resolution accepts it), but loading it would fail
    junk.write_bytes(b"not a checkpoint")
    for cmd in (["zero-shot"], ["train"], ["features"]):
        args = [*cmd, "--set", f"data.manifest={manifest}", "--set", "data.dataset=folder",
                "--set", "data.source=[light]", "--set", "data.target=[empty]",
                "--set", f"model.pretrained={junk}"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "target domain 'empty'" in err and "junk-weights" not in err


# -- one clear line, exit 2 -------------------------------------------------------------------------------------
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["data", "fetch", "ofice_home", "--root", str(tmp_path / "r")], "did you mean 'office_home'?"),
        (["data", "index", "visda", "--root", str(a_file)], "is a file, not a folder"),
        (["data", "fetch", "folder", "--root", str(a_file)], "is a file, not a folder"),
        (["data", "index", "folder", "--root", str(tmp_path), "--out", str(a_file / "m.parquet")],
         f"{a_file} is a file, not a folder"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    with pytest.raises(KeyError):  # still a KeyError for older callers
        get_spec("nope")
    assert isinstance(UnknownDatasetError("x"), DatasetError)


# -- links, odd names and wrong roots at index time ---------------------------------------------------------------
def _four_classes(root: Path) -> Path:
    n = 0
    for dom in ("real", "sketch"):
        for cls in ("cat", "dog", "fox", "owl"):
            (root / dom / cls).mkdir(parents=True)
            (root / dom / cls / "1.jpg").write_bytes(jpeg(n))
            n += 1
    return root


def _excluded(m, kind: str) -> pl.DataFrame:
    return m.problems.filter((pl.col("kind") == kind) & (pl.col("severity") == "excluded"))


def test_class_folder_link_loop_adds_no_phantom_class_and_is_named(tmp_path):
    root = _four_classes(tmp_path / "data")
    os.symlink(".", root / "real" / "loopcls")
    m = index_dataset("folder", root, progress=False)
    assert m.classes == ["cat", "dog", "fox", "owl"] and len(m.df) == m.n_ok == 8
    links = _excluded(m, "symlink")
    assert links["path"].to_list() == ["real/loopcls"]
    assert "symbolic link to '.'" in links["detail"][0] and "never followed" in links["detail"][0]
    assert m.problems.filter(pl.col("kind").str.starts_with("duplicate")).is_empty()


def test_linked_domain_folder_is_no_domain_and_is_named(tmp_path):
    root = _four_classes(tmp_path / "data")
    os.symlink(root / "sketch", root / "sketch_again")
    m = index_dataset("folder", root, progress=False)
    assert m.domains == ["real", "sketch"] and len(m.df) == 8
    assert _excluded(m, "symlink")["path"].to_list() == ["sketch_again"]


def test_image_link_pointing_outside_is_excluded_and_named(tmp_path):
    root = _four_classes(tmp_path / "data")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg(99))
    os.symlink(outside, root / "real" / "cat" / "2.jpg")
    m = index_dataset("folder", root, progress=False)
    assert "real/cat/2.jpg" not in m.df["path"].to_list() and m.n_ok == 8
    links = _excluded(m, "symlink")
    assert links.rows() == [("excluded", "symlink", "real", "cat", "real/cat/2.jpg", links["detail"][0])]
    assert str(outside) in links["detail"][0]


def test_office_domain_folder_link_fails_the_count_naming_it(tmp_path):
    root = tmp_path / "office31"
    for dom in ("amazon", "webcam"):
        (root / dom / "back_pack").mkdir(parents=True)
        (root / dom / "back_pack" / "1.jpg").write_bytes(jpeg(len(dom)))
    os.symlink(tmp_path / "elsewhere", root / "dslr")
    with pytest.raises(IncompleteDatasetError, match=f"{root / 'dslr'} is a symbolic link, never followed"):
        index_dataset("office31", root, progress=False)
    m = index_dataset("office31", root, progress=False, check_counts=False)
    assert _excluded(m, "symlink").select("domain", "path").rows() == [("dslr", "dslr")]


def test_listed_image_through_a_link_is_excluded(tmp_path):
    root = tmp_path / "visda"
    for dom in ("train", "validation"):
        (root / dom / "car").mkdir(parents=True)
        (root / dom / "car" / "1.jpg").write_bytes(jpeg(len(dom)))
        (root / dom / "image_list.txt").write_text("car/1.jpg 3\ncar/2.jpg 3\n")
    (tmp_path / "out.jpg").write_bytes(jpeg(7))
    os.symlink(tmp_path / "out.jpg", root / "train" / "car" / "2.jpg")
    (root / "validation" / "car" / "2.jpg").write_bytes(jpeg(8))
    m = index_dataset("visda2017", root, progress=False, check_counts=False)
    row = m.df.filter(pl.col("path") == "train/car/2.jpg").row(0, named=True)
    assert row["status"] == "excluded" and row["problem"].startswith("symlink:") and row["sha256"] is None
    assert m.n_ok == 3


def test_control_character_in_a_class_folder_name_is_refused_and_shown(tmp_path):
    root = _four_classes(tmp_path / "data")
    (root / "real" / "bad\ncls").mkdir()
    (root / "real" / "bad\ncls" / "1.jpg").write_bytes(jpeg(50))
    (root / "real" / "cat" / "tab\there.jpg").write_bytes(jpeg(51))
    m = index_dataset("folder", root, progress=False)
    assert m.classes == ["cat", "dog", "fox", "owl"] and len(m.df) == 8
    bad = _excluded(m, "bad_name").sort("path")
    assert bad["path"].to_list() == [repr("real/bad\ncls"), repr("real/cat/tab\there.jpg")]
    assert all("\n" not in d and "\t" not in d for d in bad["detail"])
    assert "'real/bad\\ncls'" in bad["detail"][0] and "control character" in bad["detail"][0]
    assert "\n" not in "".join(m.summary().splitlines()[-3:]) and "bad\\ncls" in m.summary()


def _office_home_one_level_down(top: Path) -> Path:
    wrapper = top / "OfficeHomeDataset_10072016"
    for i, dom in enumerate(("Art", "Clipart", "Product", "Real World")):
        (wrapper / dom / "Alarm_Clock").mkdir(parents=True)
        (wrapper / dom / "Alarm_Clock" / "1.jpg").write_bytes(jpeg(i))
    return wrapper


@pytest.mark.parametrize("check_counts", [True, False])
def test_root_one_level_above_the_dataset_names_the_folder(tmp_path, check_counts):
    top = tmp_path / "downloads"
    wrapper = _office_home_one_level_down(top)
    with pytest.raises(DatasetLayoutError) as ei:
        index_dataset("office_home", top, progress=False, check_counts=check_counts)
    msg = str(ei.value)
    assert "one level down" in msg and f"--root {wrapper}" in msg and "download it again" not in msg
    assert "Art, Clipart, Product, Real World" in msg and "\n" not in msg


def test_cli_wrong_root_and_empty_index_write_no_manifest(tmp_path, capsys):
    top = tmp_path / "downloads"
    wrapper = _office_home_one_level_down(top)
    out = tmp_path / "m.parquet"
    for extra in ([], ["--allow-incomplete"]):
        assert main(["data", "index", "office_home", "--root", str(top), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--root {wrapper}" in err
    empty = tmp_path / "empty"
    (empty / "unrelated").mkdir(parents=True)
    assert main(["data", "index", "office_home", "--root", str(empty), "--out", str(out),
                 "--allow-incomplete"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image file found" in err and "no manifest is written" in err
    assert not out.exists()


def test_an_index_of_zero_files_is_refused_even_for_a_subset(tmp_path):
    root = tmp_path / "data"
    (root / "light" / "cat").mkdir(parents=True)
    os.symlink(tmp_path, root / "light" / "cat" / "all")
    with pytest.raises(DatasetLayoutError, match=r"no image file found .*1 entr\(ies\) refused.*light/cat/all"):
        index_dataset("folder", root, progress=False, check_counts=False)
    with pytest.raises(DatasetLayoutError, match="no image file found"):
        index_dataset("office31", tmp_path / "data", progress=False, check_counts=False)


# -- a --source for a folder that is already complete ---------------------------------------------------------------
def test_source_for_a_complete_folder_is_reported_unused_and_force_replaces(tmp_path, capsys):
    (tmp_path / "good").mkdir()
    good = _office31_tar(tmp_path / "good" / "domain_adaptation_images.tar.gz")
    root = tmp_path / "office31"
    fetch_dataset("office31", root, sources=[good], download_dir=tmp_path / "none", progress=False,
                  check_counts=False)
    (root / "amazon" / "back_pack" / "old.jpg").write_bytes(jpeg(77))
    before = _tree(root)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive at all")
    base = ["data", "fetch", "office31", "--root", str(root), "--source", str(bad), "--allow-incomplete",
            "--download-dir", str(tmp_path / "none")]
    assert main(base) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already complete" in err and f"--source {bad} was not used" in err
    assert "--force" in err and _tree(root) == before
    assert main([*base, "--force"]) == 2  # the bad archive is now opened, and the old tree survives it
    assert "neither a zip nor a tar" in capsys.readouterr().err and _tree(root) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz", "good", "office31"]  # no sibling folder left
    assert main([*base[:-4], str(good), *base[-3:], "--force"]) == 0
    assert "old.jpg" not in "".join(_tree(root)) and is_stamped(get_spec("office31"), root)
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz", "good", "office31"]
    with pytest.raises(DatasetError, match="lies inside"):
        fetch_dataset("office31", root, sources=[root / "amazon"], force=True, progress=False)


def test_fifo_in_a_class_folder_is_refused_not_opened(tmp_path):
    root = _four_classes(tmp_path / "data")
    os.mkfifo(root / "real" / "cat" / "pipe.jpg")  # opening it to check the image would block forever
    m = index_dataset("folder", root, progress=False)
    assert len(m.df) == m.n_ok == 8
    assert _excluded(m, "special_file")["path"].to_list() == ["real/cat/pipe.jpg"]
