"""The frozen-feature cache: keyed, reused, deterministic per view, never read half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dapl.features as features
from dapl.config import FeatureConfig, ModelConfig
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from dapl.models import load_clip


@pytest.fixture(scope="module")
def setup(blob_world, tiny_config_dir):
    bundle = load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-rn.json"), pretrained=None, device="cpu"))
    paths = sorted(p.relative_to(blob_world).as_posix() for p in (blob_world / "light").rglob("*.png"))[:10]
    return bundle, ImageSet.build(paths, None, 0, blob_world)


def test_views_are_cached_reused_and_deterministic(tmp_path, setup, monkeypatch):
    bundle, images = setup
    fc = FeatureConfig(views=3, num_workers=0)
    cache = FeatureCache(tmp_path, bundle, batch_size=4, num_workers=0)
    calls = []
    real = features.encode_view
    monkeypatch.setattr(features, "encode_view", lambda *a, **k: calls.append(1) or real(*a, **k))
    v1 = cache.train_views(images, 3, fc)
    t1 = cache.test_features(images)
    assert v1.shape == (3, 10, bundle.embed_dim) and v1.dtype == torch.float16 and len(calls) == 4
    assert not torch.equal(v1[0], v1[1])  # different random views
    v2 = cache.train_views(images, 3, fc)
    assert torch.equal(v1, v2) and torch.equal(t1, cache.test_features(images)) and len(calls) == 4
    # more views later: only the new one is encoded
    v4 = cache.train_views(images, 4, fc)
    assert torch.equal(v4[:3], v1) and len(calls) == 5
    # another cache folder, 1 worker instead of 0: bit-identical views (per-image seeds, not worker RNG)
    other = FeatureCache(tmp_path / "other", bundle, batch_size=3, num_workers=1).train_views(images, 2, fc)
    assert torch.equal(other, v1[:2])


def test_half_written_files_are_never_read(tmp_path, setup, monkeypatch):
    bundle, images = setup
    fc = FeatureConfig(views=2, num_workers=0)
    cache = FeatureCache(tmp_path, bundle, batch_size=4, num_workers=0)
    real = features.encode_view
    n = {"calls": 0}

    def interrupted(*a, **k):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt  # killed while encoding the second view
        return real(*a, **k)

    monkeypatch.setattr(features, "encode_view", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.train_views(images, 2, fc)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.glob("view_*.npy")) == ["view_000.npy"]
    (folder / ".view_001.npy.999.tmp").write_bytes(b"garbage")  # a leftover temp file is ignored
    monkeypatch.setattr(features, "encode_view", real)
    views = cache.train_views(images, 2, fc)
    assert views.shape[0] == 2 and np.isfinite(views.float().numpy()).all()


def test_key_depends_on_model_transform_and_images(tmp_path, setup, tiny_config_dir):
    bundle, images = setup
    other = load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-vit.json"), pretrained=None, device="cpu"))
    k = features.cache_key
    assert k(bundle, images, "a") != k(other, images, "a")
    assert k(bundle, images, "a") != k(bundle, images, "b")
    assert k(bundle, images, "a") != k(bundle, images.subset([0, 1]), "a")
    assert k(bundle, images, "a", "float16") != k(bundle, images, "a", "float32")


def test_key_sees_a_file_rewritten_under_the_same_path(tmp_path):
    """A regenerated dataset keeps every path: the key must still change (digests, else size + mtime)."""
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    paths = [f"{i}.png" for i in range(3)]
    plain = ImageSet.build(paths, None, 0, tmp_path)
    before = plain.fingerprint()
    assert ImageSet.build(paths, None, 0, tmp_path).fingerprint() == before
    Image.new("RGB", (9, 9), (200, 0, 0)).save(tmp_path / "1.png")
    assert ImageSet.build(paths, None, 0, tmp_path).fingerprint() != before  # the next run's set sees it

    hashed = ImageSet(plain.paths, plain.labels, plain.domains, plain.root, digests=("a", "b", "c"))
    changed = ImageSet(plain.paths, plain.labels, plain.domains, plain.root, digests=("a", "x", "c"))
    assert hashed.fingerprint() != changed.fingerprint()
    assert hashed.subset([0, 2]).fingerprint() == changed.subset([0, 2]).fingerprint()
    assert ImageSet.concat([hashed.subset([0]), hashed.subset([1, 2])]).fingerprint() == hashed.fingerprint()
    with pytest.raises(ValueError, match="digests"):
        ImageSet(plain.paths, plain.labels, plain.domains, plain.root, digests=("a",))
