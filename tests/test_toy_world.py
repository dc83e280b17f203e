"""The toy world: byte-determinism, layout, class balance, a pretraining stream apart from the benchmark."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dapl.toy.world import (
    PRETRAIN_STREAM,
    TOY_CLASSES,
    TOY_DOMAINS,
    class_display_name,
    generate_world,
    image_rng,
    render,
    render_batch,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("toy") / "world"
    return root, generate_world(root, seed=0, images_per_class=3, workers=2)


def test_constants():
    assert len(TOY_CLASSES) >= 10 and len(set(TOY_CLASSES)) == len(TOY_CLASSES)
    assert TOY_DOMAINS == ("art", "clipart", "product", "real")
    assert class_display_name("alarm_clock") == "alarm clock"


def test_layout_and_balance(world):
    root, summary = world
    assert sorted(p.name for p in root.iterdir()) == sorted(TOY_DOMAINS)
    for dom in TOY_DOMAINS:
        assert sorted(p.name for p in (root / dom).iterdir()) == sorted(TOY_CLASSES)
        for cls in TOY_CLASSES:
            files = sorted(p.name for p in (root / dom / cls).iterdir())
            assert files == ["0000.png", "0001.png", "0002.png"]
    assert summary["n_images"] == 3 * len(TOY_CLASSES) * len(TOY_DOMAINS)
    assert all(n == 3 for d in summary["counts"].values() for n in d.values())
    with Image.open(root / "real" / TOY_CLASSES[0] / "0000.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)


def test_same_seed_same_bytes_any_worker_count(world, tmp_path):
    root, _ = world
    again = tmp_path / "again"
    generate_world(again, seed=0, images_per_class=3, workers=1)
    assert _digest(again) == _digest(root)


def test_other_seed_other_bytes(world, tmp_path):
    root, _ = world
    other = tmp_path / "other"
    generate_world(other, seed=1, images_per_class=3, domains=("clipart",), workers=1)
    a, b = _digest(root), _digest(other)
    assert all(a[k] != b[k] for k in b)


def test_regenerating_smaller_removes_stale_images(tmp_path):
    generate_world(tmp_path, seed=0, images_per_class=3, domains=("product",), workers=1)
    generate_world(tmp_path, seed=0, images_per_class=2, domains=("product",), workers=1)
    assert len(list((tmp_path / "product" / TOY_CLASSES[0]).glob("*.png"))) == 2


def test_within_class_variation_and_domain_styles():
    imgs = {d: [np.asarray(render(0, d, image_rng(0, d, 0, i))) for i in range(4)] for d in TOY_DOMAINS}
    for d, xs in imgs.items():
        assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in xs)
        assert len({x.tobytes() for x in xs}) == 4, d
    corner = {d: np.mean([x[:6, :6].mean() for x in xs]) for d, xs in imgs.items()}
    assert corner["product"] > 220  # white studio background


def test_pretraining_stream_differs_from_world():
    labels, domains = np.zeros(2, int), np.array([3, 3])
    batch, variants = render_batch(0, labels, domains, start=0)
    assert variants.shape == (2,) and set(variants.tolist()) <= {0, 1}
    world = [np.asarray(render(0, "real", image_rng(0, "real", 0, i))) for i in range(2)]
    assert batch.shape == (2, 64, 64, 3)
    assert not any(np.array_equal(batch[i], world[i]) for i in range(2))
    same = [np.asarray(render(0, "real", image_rng(0, "real", 0, i, PRETRAIN_STREAM))) for i in range(2)]
    assert all(np.array_equal(batch[i], same[i]) for i in range(2))
