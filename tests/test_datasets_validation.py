"""Hostile and odd files: each gets its documented outcome in the manifest, none stops the index."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dapl.datasets import Manifest, index_dataset, verify_image


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def _noise(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` pixels: a decompression bomb as far as a reader knows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    out = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return out + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


@pytest.fixture
def hostile_tree(tmp_path: Path) -> Path:
    """root/<domain>/<class>/... with one of everything."""
    root = tmp_path / "proj" / "ds"
    a, b = root / "alpha", root / "beta"
    for dom, seed in ((a, 0), (b, 100)):
        for k, cls in enumerate(("cat", "dog")):
            _save(_noise(16, seed + k), dom / cls / "good.jpg", "JPEG")
    _save(_noise(16, 7), a / "cat" / "dup.png", "PNG")
    (b / "dog" / "dup_copy.png").write_bytes((a / "cat" / "dup.png").read_bytes())  # same bytes, other domain
    full = io.BytesIO()
    _noise(64, 1).save(full, "JPEG")
    (a / "cat" / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (a / "cat" / "empty.jpg").write_bytes(b"")
    (a / "cat" / "notes.txt").write_text("not an image")
    _save(Image.new("CMYK", (12, 12), (10, 200, 30, 5)), a / "dog" / "cmyk.jpg", "JPEG")
    pal = Image.new("P", (12, 12), 3)
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    _save(pal, a / "dog" / "palette.png", "PNG", transparency=0)
    _save(Image.new("L", (12, 12), 128), b / "cat" / "gray.png", "PNG")
    _save(Image.new("RGBA", (12, 12), (1, 2, 3, 100)), b / "cat" / "rgba.png", "PNG")
    (b / "cat" / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    _save(_noise(8, 3), b / "loose.jpg", "JPEG")  # not inside a class folder
    (b / "bird").mkdir()  # a class folder with nothing usable in it ...
    (b / "bird" / "zero.jpg").write_bytes(b"")  # ... so 'bird' is missing from alpha and beta
    (root / "gamma" / "cat").mkdir(parents=True)  # an empty domain
    return root


def _problem(m: Manifest, path: str) -> str | None:
    return m.df.filter(pl.col("path") == path)["problem"][0]


def test_each_hostile_file_gets_its_outcome(hostile_tree):
    m = index_dataset("folder", hostile_tree, progress=False, workers=2)
    assert m.domains == ["alpha", "beta", "gamma"]
    assert m.classes == ["bird", "cat", "dog"]
    status = dict(zip(m.df["path"], m.df["status"], strict=True))
    assert len(status) == 16  # every file has a row: nothing silently dropped
    assert _problem(m, "alpha/cat/truncated.jpg").startswith("truncated:")
    assert _problem(m, "alpha/cat/empty.jpg") == "zero_byte: empty file (0 bytes)"
    assert _problem(m, "alpha/cat/notes.txt").startswith("unreadable:")
    assert _problem(m, "beta/cat/bomb.png").startswith("decompression_bomb:")
    assert _problem(m, "beta/loose.jpg").startswith("no_class:")
    modes = dict(zip(m.df["path"], m.df["mode"], strict=True))
    for path, mode in (("alpha/dog/cmyk.jpg", "CMYK"), ("alpha/dog/palette.png", "P"),
                       ("beta/cat/gray.png", "L"), ("beta/cat/rgba.png", "RGBA")):
        assert status[path] == "ok" and modes[path] == mode  # converted on load, not rejected
    ok = m.ok
    assert ok["sha256"].null_count() == 0 and (ok["width"] > 0).all() and (ok["file_size"] > 0).all()
    assert m.df.filter(pl.col("path") == "beta/loose.jpg")["class_idx"][0] == -1

    pr = m.problems
    kinds = pr.group_by("severity", "kind").len()
    got = {(s, k): n for s, k, n in kinds.iter_rows()}
    assert got[("error", "empty_domain")] == 1
    assert got[("excluded", "truncated")] == 1 and got[("excluded", "zero_byte")] == 2
    assert got[("warning", "duplicate_across_domains")] == 2
    assert got[("info", "non_rgb_mode")] == 4
    miss = pr.filter(pl.col("kind") == "missing_class")
    assert miss["detail"].to_list() == ["class 'bird' has no usable image in any domain"]
    dup = pr.filter(pl.col("kind") == "duplicate_across_domains").sort("path")
    assert "beta/dog/dup_copy.png" in dup["detail"][0]

    text = m.summary()
    assert "16 files indexed" in text and "10 ok, 6 excluded" in text
    for word in ("truncated", "zero_byte", "decompression_bomb", "empty_domain", "missing_class"):
        assert word in text


def test_class_missing_from_one_domain(tmp_path):
    root = tmp_path / "ds"
    for dom, classes in (("src", ("cat", "dog")), ("tgt", ("cat",))):
        for k, cls in enumerate(classes):
            _save(_noise(8, hash((dom, k)) % 1000), root / dom / cls / "1.png", "PNG")
    m = index_dataset("folder", root, progress=False)
    miss = m.problems.filter(pl.col("kind") == "missing_class")
    assert miss.height == 1
    assert miss.row(0, named=True) | {} == {
        "severity": "warning", "kind": "missing_class", "domain": "tgt", "class_name": "dog", "path": None,
        "detail": "class 'dog' has no usable image in domain 'tgt' (present in: src)"}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_limits_from_pil_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warn = _save(_noise(12, 1), tmp_path / "warn.png", "PNG")  # 144 px: over the limit (PIL only warns)
    err = _save(_noise(20, 2), tmp_path / "err.png", "PNG")  # 400 px: over 2x the limit (PIL raises)
    small = _save(_noise(8, 3), tmp_path / "ok.png", "PNG")
    assert verify_image(warn)["problem"].startswith("decompression_bomb: 12x12 pixels exceeds")
    assert verify_image(err)["problem"].startswith("decompression_bomb:")
    assert verify_image(small)["problem"] is None


def test_unexpected_error_does_not_stop_the_index(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for i in range(3):
        _save(_noise(8, i), root / "d" / "c" / f"{i}.png", "PNG")
    real_open = Image.open

    def flaky(fp, *a, **k):
        img = real_open(fp, *a, **k)
        if img.size == (8, 8) and np.asarray(img)[0, 0, 0] == np.asarray(_noise(8, 1))[0, 0, 0]:
            raise RuntimeError("boom")
        return img

    monkeypatch.setattr(Image, "open", flaky)
    m = index_dataset("folder", root, progress=False)
    assert len(m.df) == 3 and m.n_ok == 2
    assert m.excluded["problem"][0] == "error: RuntimeError: boom"


def test_manifest_roundtrip_is_deterministic_and_portable(hostile_tree, tmp_path):
    m = index_dataset("folder", hostile_tree, progress=False)
    out = hostile_tree.parent / "manifests" / "ds.parquet"
    m.save(out)
    first = (out.read_bytes(), out.with_suffix(".json").read_bytes())
    m.save(out)
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == first
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["root"] == "../ds" and meta["counts"] == {"ok": 10, "excluded": 6}

    moved = tmp_path / "elsewhere"
    hostile_tree.parent.rename(moved)  # clone at another path: root follows the manifest
    back = Manifest.load(moved / "manifests" / "ds.parquet")
    assert back.root == moved / "ds" and back.df.equals(m.df)
    assert back.classes == m.classes and back.domains == m.domains and back.notes == m.notes
    s = back.image_set(["beta", "alpha"], domain_order=["gamma", "alpha", "beta"])
    assert s.root == str(moved / "ds")
    assert s.paths[0].startswith("alpha/") and s.domains[0] == 1  # index = position in domain_order
    assert (np.diff(s.domains) >= 0).all()  # rows ordered by that index, then path
    assert set(s.domains.tolist()) == {1, 2} and (s.labels >= 0).all()
    assert all(s.resolve(i).is_file() for i in range(len(s)))
    with pytest.raises(ValueError, match="not in domain_order"):
        back.image_set(["alpha"], domain_order=["beta"])
    with pytest.raises(KeyError, match="no domain 'delta'"):
        back.image_set(["delta"])
