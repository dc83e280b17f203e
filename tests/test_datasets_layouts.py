"""Each dataset's real on-disk layout, in miniature, is fetched from local files and indexed correctly."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapl.datasets import DatasetLayoutError, fetch_dataset, get_spec, index_dataset


def jpeg(seed: int, size: int = 8) -> bytes:
    """A small distinct JPEG (distinct seeds -> distinct bytes, so no duplicate warnings)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_office_home_zip_with_real_world_space(tmp_path):
    arch = tmp_path / "dl" / "OfficeHomeDataset_10072016.zip"
    arch.parent.mkdir()
    n = 0
    with zipfile.ZipFile(arch, "w") as zf:
        for dom in ("Art", "Clipart", "Product", "Real World"):
            for cls in ("Alarm_Clock", "TV", "Table", "ToothBrush"):
                for i in range(2):
                    zf.writestr(f"OfficeHomeDataset_10072016/{dom}/{cls}/{i:05d}.jpg", jpeg(n))
                    n += 1
        zf.writestr("OfficeHomeDataset_10072016/ImageInfo.csv", "meta")
    root = tmp_path / "data" / "office_home"
    # the archive is found in the download folder without naming it
    fetch_dataset("office_home", root, download_dir=arch.parent, progress=False, check_counts=False)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["Art", "Clipart", "Product", "Real_World"]
    assert not (root / "OfficeHomeDataset_10072016").exists()

    m = index_dataset("office_home", root, progress=False, workers=2, check_counts=False)
    assert len(m.df) == 32 and m.n_ok == 32
    assert m.domains == ["art", "clipart", "product", "real_world"]
    assert len(m.classes) == 65 and m.classes[58:60] == ["tv", "table"]  # Python-sorted folders: TV < Table
    rows = m.df.filter(m.df["domain"] == "real_world")
    assert rows["path"][0].startswith("Real_World/Alarm_Clock/")
    assert set(rows["class_name"]) == {"alarm clock", "tv", "table", "toothbrush"}
    assert set(rows["class_idx"]) == {0, 58, 59, 61}
    # classes absent from the miniature are reported, not invented
    pr = m.problems
    assert "missing_class" in pr["kind"].to_list()
    # fetching again is a no-op
    fetch_dataset("office_home", root, download_dir=arch.parent, progress=False, check_counts=False)


def test_office_home_unrenamed_folder_is_accepted(tmp_path):
    root = tmp_path / "oh"
    write(root / "Real World" / "Mug" / "1.jpg", jpeg(1))
    write(root / "Art" / "Mug" / "1.jpg", jpeg(2))
    m = index_dataset("office_home", root, progress=False, check_counts=False)
    assert m.n_ok == 2 and set(m.df["domain"]) == {"art", "real_world"}
    assert m.image_set(["Real World"]).paths == ("Real World/Mug/1.jpg",)
    kinds = set(m.problems.filter(m.problems["severity"] == "error")["kind"])
    assert kinds == {"empty_domain"}  # clipart and product have nothing


def _visda(root: Path) -> None:
    for split, n0 in (("train", 0), ("validation", 100)):
        lines = []
        for k, cls in enumerate(("aeroplane", "bicycle", "truck")):
            label = {"aeroplane": 0, "bicycle": 1, "truck": 11}[cls]
            for i in range(2):
                rel = f"{cls}/{split}_{cls}_{i}.jpg"
                write(root / split / rel, jpeg(n0 + 10 * k + i))
                lines.append(f"{rel} {label}")
        (root / split / "image_list.txt").write_text("\n".join(lines) + "\n")
    write(root / "validation" / "truck" / "stray.jpg", jpeg(999))  # on disk, in no list
    with open(root / "train" / "image_list.txt", "a") as f:
        f.write("bicycle/train_bicycle_0.jpg 3\n")  # listed twice, and with a wrong label
        f.write("car/missing.jpg 3\n")  # listed, not on disk
        f.write("garbage line without label\n")
        f.write("../../../etc/passwd 0\n")  # a list file must not reach outside the dataset


def test_visda_folders_with_image_list(tmp_path):
    root = tmp_path / "visda"
    _visda(root)
    fetch_dataset("visda2017", root, progress=False, check_counts=False)  # in place: nothing to download
    m = index_dataset("visda2017", root, progress=False, check_counts=False)
    assert m.domains == ["synthetic", "real"] and m.metric == "mean_per_class"
    ok = m.ok
    assert len(ok) == 12
    assert set(ok.filter(ok["domain"] == "synthetic")["split"]) == {"train"}
    assert set(ok.filter(ok["domain"] == "real")["split"]) == {"validation"}
    assert ok.filter(ok["class_name"] == "truck")["class_idx"].unique().to_list() == [11]
    assert ok["path"][0] == "train/aeroplane/train_aeroplane_0.jpg"
    ex = dict(zip(m.excluded["path"], m.excluded["problem"], strict=True))
    assert ex["train/car/missing.jpg"].startswith("missing_file:")
    assert "duplicate_listing" in ex["train/bicycle/train_bicycle_0.jpg"]
    pr = m.problems
    assert pr.filter(pr["kind"] == "bad_line").height == 1
    assert pr.filter(pr["kind"] == "unsafe_path").height == 1
    assert not any("passwd" in p for p in m.df["path"])
    nl = pr.filter(pr["kind"] == "not_listed")
    assert nl.height == 1 and "1 file(s)" in nl["detail"][0] and "stray.jpg" in nl["detail"][0]
    s = m.image_set(["synthetic", "real"])
    assert list(np.unique(s.domains)) == [0, 1] and s.has_labels
    with pytest.raises(ValueError, match="split 'train'"):
        m.image_set(["real"], split="train")


def test_visda_label_mismatch(tmp_path):
    root = tmp_path / "v"
    write(root / "train" / "bus" / "a.jpg", jpeg(1))
    (root / "train" / "image_list.txt").write_text("bus/a.jpg 5\n")  # bus is class 2
    m = index_dataset("visda2017", root, progress=False, check_counts=False)
    assert m.df["problem"][0].startswith("label_mismatch:")


def _domainnet(root: Path, domains, classes, split_dir: str = "", drop_class_in: str | None = None) -> None:
    n = 0
    for d in domains:
        for split in ("train", "test"):
            lines = []
            for label, cls in enumerate(classes):
                if cls == "zebra" and d == drop_class_in:
                    continue
                rel = f"{d}/{cls}/{d}_{split}_{label:03d}.jpg"
                write(root / rel, jpeg(n))
                n += 1
                lines.append(f"{rel} {label}")
            (root / split_dir / f"{d}_{split}.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / split_dir / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_domainnet_split_files(tmp_path):
    root = tmp_path / "dn"
    classes = ["aircraft_carrier", "airplane", "zebra"]
    _domainnet(root, get_spec("domainnet").domain_keys, classes, drop_class_in="quickdraw")
    m = index_dataset("domainnet", root, progress=False)
    assert m.classes == ["aircraft carrier", "airplane", "zebra"]
    assert m.n_ok == len(m.df) == 6 * 2 * 3 - 2
    assert set(m.df["split"]) == {"train", "test"}
    tr = m.image_set(["clipart"], split="train")
    assert len(tr) == 3 and list(tr.labels) == [0, 1, 2]
    miss = m.problems.filter(m.problems["kind"] == "missing_class")
    assert miss.height == 1 and miss["domain"][0] == "quickdraw" and miss["class_name"][0] == "zebra"


def test_domainnet_missing_split_file_names_it(tmp_path):
    root = tmp_path / "dn"
    _domainnet(root, ["clipart"], ["cat"])
    with pytest.raises(DatasetLayoutError, match=r"infograph_train\.txt"):
        index_dataset("domainnet", root, progress=False)


def test_mini_domainnet_splits_mini(tmp_path):
    root = tmp_path / "mini"
    _domainnet(root, ["clipart", "painting", "real", "sketch"], ["bird", "cat"], split_dir="splits_mini")
    write(root / "clipart" / "dog" / "x.jpg", jpeg(500))  # a DomainNet class outside mini-DomainNet
    m = index_dataset("mini_domainnet", root, progress=False)
    assert m.classes == ["bird", "cat"] and m.n_ok == 16 and len(m.df) == 16
    assert "not_listed" in m.problems["kind"].to_list()


def test_office31_tar_with_images_level(tmp_path):
    arch = tmp_path / "domain_adaptation_images.tar.gz"
    n = 0
    with tarfile.open(arch, "w:gz") as tf:
        for dom in ("amazon", "dslr", "webcam"):
            for cls in ("back_pack", "trash_can"):
                data = jpeg(n)
                n += 1
                ti = tarfile.TarInfo(f"{dom}/images/{cls}/frame_0001.jpg")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    root = tmp_path / "office31"
    fetch_dataset("office31", root, sources=[arch], download_dir=tmp_path / "none", progress=False,
                  check_counts=False)
    assert (root / "amazon" / "back_pack" / "frame_0001.jpg").is_file()
    assert not (root / "amazon" / "images").exists()
    m = index_dataset("office31", root, progress=False, check_counts=False)
    assert m.n_ok == 6 and len(m.classes) == 31
    assert set(m.ok["class_idx"]) == {0, 30}


def test_generic_folder_tree(blob_world):
    fetch_dataset("folder", blob_world, progress=False)
    m = index_dataset("folder", blob_world, progress=False)
    assert m.domains == ["dark", "light"]
    assert m.classes == ["blue thing", "green thing", "red thing", "yellow thing"]
    assert m.n_ok == 96
    s = m.image_set(["light", "dark"], domain_order=["light", "dark"])
    assert s.domains[0] == 0 and s.paths[0].startswith("light/")


def test_toy_generated_and_indexed(tmp_path):
    world = pytest.importorskip("dapl.toy.world", reason="dapl.toy.world (issue 4) is not written yet")
    from dapl.datasets.fetch import generate_toy

    root = tmp_path / "toy"
    generate_toy(root, seed=0, images_per_class=1, size=16, workers=1)
    m = index_dataset("toy", root, progress=False)
    assert m.domains == list(world.TOY_DOMAINS)
    assert m.class_folders == list(world.TOY_CLASSES)  # the generator's class order, not re-sorted
    assert m.n_ok == len(m.df) == len(world.TOY_DOMAINS) * len(world.TOY_CLASSES)
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("*.png"))
    generate_toy(root, seed=0)  # already there: left alone unless force=True
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.png")) == before


def test_mini_domainnet_from_existing_domainnet_folders(tmp_path):
    """Folders passed as sources are hard-linked into place; split files land in splits_mini/."""
    dn = tmp_path / "domainnet"
    _domainnet(dn, ["clipart", "painting", "real", "sketch"], ["bird", "cat"], split_dir="splits_mini")
    root = tmp_path / "data" / "mini_domainnet"
    sources = [dn / d for d in ("clipart", "painting", "real", "sketch")]
    sources += sorted((dn / "splits_mini").glob("clipart_*.txt")) + [dn / "splits_mini"]
    fetch_dataset("mini_domainnet", root, sources=sources, download_dir=tmp_path / "none", progress=False)
    assert (root / "splits_mini" / "real_test.txt").is_file()
    img = root / "clipart" / "cat" / "clipart_train_001.jpg"
    assert img.stat().st_ino == (dn / "clipart" / "cat" / "clipart_train_001.jpg").stat().st_ino
    m = index_dataset("mini_domainnet", root, progress=False)
    assert m.n_ok == 16 and m.classes == ["bird", "cat"]
