"""The frozen-feature cache: keyed, reused, deterministic per view, never read half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dapl.encoder as encoder
import dapl.features as features
from dapl.clip import load_clip
from dapl.config import FeatureConfig, ModelConfig
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from tests.tolerances import assert_close


@pytest.fixture(scope="module")
def setup(blob_world, tiny_config_dir):
    bundle = load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-rn.json"), pretrained=None, device="cpu"))
    paths = sorted(p.relative_to(blob_world).as_posix() for p in (blob_world / "light").rglob("*.png"))[:10]
    return bundle, ImageSet.build(paths, None, 0, blob_world)


def _counting(monkeypatch) -> list[tuple[int, int, int]]:
    """Record every encoder pass as ``(start, stop, views)``."""
    calls: list[tuple[int, int, int]] = []
    real = features.encode_range

    def counted(enc, images, tf, seed_fns, start, stop, **k):
        calls.append((start, stop, len(seed_fns)))
        return real(enc, images, tf, seed_fns, start, stop, **k)

    monkeypatch.setattr(features, "encode_range", counted)
    return calls


def test_views_are_cached_reused_and_deterministic(tmp_path, setup, monkeypatch):
    bundle, images = setup
    fc = FeatureConfig(views=3, num_workers=0)
    cache = FeatureCache(tmp_path, bundle, batch_size=4, num_workers=0, precision="fp32", memmap=False)
    calls = _counting(monkeypatch)
    v1 = cache.train_views(images, 3, fc)
    t1 = cache.test_features(images)
    # one pass decodes each image once for its 3 train views; one for the test view
    assert v1.shape == (3, 10, bundle.embed_dim) and v1.dtype == torch.float16 and calls == [(0, 10, 3), (0, 10, 1)]
    assert not torch.equal(v1[0], v1[1])  # different random views
    v2 = cache.train_views(images, 3, fc)
    assert torch.equal(v1, v2) and torch.equal(t1, cache.test_features(images)) and len(calls) == 2
    # more views later: only the new one is encoded
    v4 = cache.train_views(images, 4, fc)
    assert torch.equal(v4[:3], v1) and calls[2:] == [(0, 10, 1)]
    # another folder, loader batch 3 and 1 worker instead of 4 and 0: bit-identical by construction (the encoder
    # always sees the same fixed batches; per-image seeds, not worker RNG)
    other = FeatureCache(tmp_path / "other", bundle, batch_size=3, num_workers=1, precision="fp32",
                         memmap=False).train_views(images, 2, fc)
    assert torch.equal(other, v1[:2])
    # views decoded together == the same view encoded alone
    alone = FeatureCache(tmp_path / "alone", bundle, batch_size=5, num_workers=0, precision="fp32",
                         memmap=False).train_views(images, 1, fc)
    assert torch.equal(alone[0], v1[0])


def test_chunk_size_and_loader_settings_never_change_the_numbers(tmp_path, setup):
    bundle, images = setup
    fc = FeatureConfig(views=2, num_workers=0)
    ref = FeatureCache(tmp_path / "a", bundle, batch_size=4, num_workers=0, encode_batch=2, chunk_size=4,
                       precision="fp32", memmap=False)
    a = ref.train_views(images, 2, fc)
    b = FeatureCache(tmp_path / "b", bundle, batch_size=7, num_workers=1, encode_batch=2, chunk_size=5,
                     precision="fp32", memmap=False).train_views(images, 2, fc)  # chunk 5 -> 6 (x encoder batch)
    assert torch.equal(a, b)
    folder = next(p for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "view_000.npy", "view_001.npy"]  # joined
    # the encoder batch is part of the key: another batch is another cache entry
    assert ref.key(images, "t") != FeatureCache(tmp_path, bundle, encode_batch=4, precision="fp32").key(images, "t")


def test_half_written_chunks_are_never_read_and_a_rerun_resumes(tmp_path, setup, monkeypatch):
    bundle, images = setup
    fc = FeatureConfig(views=2, num_workers=0)
    cache = FeatureCache(tmp_path / "c", bundle, batch_size=4, num_workers=0, encode_batch=2, chunk_size=4,
                         precision="fp32", memmap=False)
    real = features.encode_range
    calls = []

    def interrupted(enc, imgs, tf, seed_fns, start, stop, **k):
        calls.append(start)
        if start == 4:
            raise KeyboardInterrupt  # killed while encoding the second chunk
        return real(enc, imgs, tf, seed_fns, start, stop, **k)

    monkeypatch.setattr(features, "encode_range", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.train_views(images, 2, fc)
    folder = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert not list(folder.glob("view_*.npy"))
    for v in ("view_000", "view_001"):
        assert sorted(p.name for p in (folder / f"{v}.chunks").iterdir()) == ["0000000000-0000000004.npy"]
    (folder / "view_000.chunks" / ".0000000004-0000000008.npy.999.tmp").write_bytes(b"garbage")  # ignored
    calls.clear()
    monkeypatch.setattr(features, "encode_range", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    views = cache.train_views(images, 2, fc)
    assert calls == [4, 8]  # the complete first chunk was not recomputed
    full = FeatureCache(tmp_path / "d", bundle, batch_size=4, num_workers=0, encode_batch=2, chunk_size=4,
                        precision="fp32", memmap=False)
    assert torch.equal(views, full.train_views(images, 2, fc))
    assert not (folder / "view_000.chunks").exists()


def test_memory_mapped_views_match_and_training_reads_the_same_rows(tmp_path, setup):
    from dapl.views import CachedViews

    bundle, images = setup
    fc = FeatureConfig(views=3, num_workers=0)
    whole = FeatureCache(tmp_path, bundle, num_workers=0, precision="fp32", memmap=False).train_views(images, 3, fc)
    mapped = FeatureCache(tmp_path, bundle, num_workers=0, precision="fp32", memmap=True).train_views(images, 3, fc)
    assert isinstance(mapped, list) and all(isinstance(m, np.memmap) for m in mapped)
    assert torch.equal(torch.from_numpy(np.stack(mapped)), whole)
    idx = torch.tensor([7, 2, 2, 9, 0])
    a = CachedViews(whole, torch.device("cpu"))(idx, torch.Generator().manual_seed(3))
    b = CachedViews(mapped, torch.device("cpu"))(idx, torch.Generator().manual_seed(3))
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_precision_resolves_per_device_and_is_in_the_key(tmp_path, setup, monkeypatch):
    bundle, images = setup
    rp = encoder.resolve_precision
    assert rp("auto", "cuda") == "fp16"
    assert rp("auto", "cpu", native_bf16=False) == "fp32"
    monkeypatch.setattr(encoder, "AUTO_CPU_BF16", True)
    assert rp("auto", "cpu", native_bf16=True) == "bf16"
    monkeypatch.setattr(encoder, "AUTO_CPU_BF16", False)  # a veto (the switch for a failed accuracy check)
    assert rp("auto", "cpu", native_bf16=True) == "fp32"
    assert [rp(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError, match="features.precision"):
        rp("int8", "cpu")
    keys = {p: FeatureCache(tmp_path, bundle, precision=p).key(images, "t") for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3
    assert features.view_key(bundle, images, "t", precision="bf16") == keys["bf16"]
    # a config builds the cache with its resolved precision, recorded beside the features
    cache = FeatureCache.from_config(FeatureConfig(precision="bf16", num_workers=0, cache_dir=tmp_path), bundle)
    f32 = FeatureCache(tmp_path, bundle, num_workers=0, precision="fp32").test_features(images).float()
    f16 = cache.test_features(images).float()
    meta = json.loads(next(p for p in tmp_path.glob("*/meta.json") if '"bf16"' in p.read_text()).read_text())
    assert cache.precision == "bf16" and meta["precision"] == "bf16"
    cos = torch.nn.functional.cosine_similarity(f32, f16, dim=-1)
    assert cos.min() > 0.99 and not torch.equal(f32, f16)  # close, and really another computation


def test_batchnorm_folding_is_the_same_function_and_only_at_reduced_precision(setup):
    """Folded BatchNorms compute what conv -> BN computed (fp32, with non-trivial running statistics); only the
    reduced-precision encoders fold, and the bundle's own model is never touched."""
    import copy

    from torch import nn

    bundle, _ = setup
    visual = copy.deepcopy(bundle.model.visual).eval()
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in visual.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:  # fresh BNs are the identity; give them statistics that a folding bug would show
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    x = torch.randn(4, 3, bundle.image_size, bundle.image_size, generator=gen)
    with torch.no_grad():
        ref = visual(x)
        folded = copy.deepcopy(visual)
        n = encoder.fold_batchnorm(folded)
        out = folded(x)
    assert n == len(bns) and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert_close(out, ref)
    assert encoder.fold_batchnorm(folded) == 0  # nothing left to fold
    before = {k: v.clone() for k, v in bundle.model.visual.state_dict().items()}
    enc16, enc32 = encoder.ImageEncoder(bundle, "bf16"), encoder.ImageEncoder(bundle, "fp32")
    assert enc16.folded == len(bns) and enc16.recipe.endswith("-bnfold")
    assert encoder.ImageEncoder(bundle, "bf16", fold_bn=False).folded == 0
    assert enc32.folded == 0 and sum(isinstance(m, nn.BatchNorm2d) for m in enc32.visual.modules()) == len(bns)
    assert all(torch.equal(v, bundle.model.visual.state_dict()[k]) for k, v in before.items())


def test_key_depends_on_model_transform_and_images(tmp_path, setup, tiny_config_dir):
    bundle, images = setup
    other = load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-vit.json"), pretrained=None, device="cpu"))
    k = features.view_key
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


@pytest.mark.slow
def test_sigkill_mid_view_resumes_from_the_last_complete_chunk(tmp_path, blob_world, tiny_config_dir):
    """A real SIGKILL while a view spanning 6 chunks is being written: the rerun encodes only the missing
    chunks and the result equals an uninterrupted run's."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    from tests import extract_child

    paths = sorted(p.relative_to(blob_world).as_posix() for p in blob_world.rglob("*.png"))[:24]

    def child(name: str, cache: Path, slow: float) -> tuple[subprocess.Popen, dict]:
        cfg = {"model": str(tiny_config_dir / "tiny-rn.json"), "paths": paths, "root": str(blob_world),
               "cache": str(cache), "out": str(tmp_path / f"{name}.npy"), "log": str(tmp_path / f"{name}.json"),
               "slow": slow}
        return extract_child.start(cfg), cfg

    def chunks(cache: Path) -> list[str]:
        return sorted(p.name for p in cache.glob("*/view_000.chunks/*.npy") if not p.name.startswith("."))

    cache = tmp_path / "killed"
    proc, _ = child("first", cache, slow=0.5)
    deadline = time.monotonic() + 300
    while len(chunks(cache)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL, "the extraction finished before it could be killed"
    done = chunks(cache)
    assert 2 <= len(done) < 6 and not list(cache.glob("*/view_000.npy"))
    done_starts = {int(n.split("-")[0]) for n in done}

    proc, cfg = child("rerun", cache, slow=0.0)
    assert proc.wait(300) == 0
    rerun_starts = json.loads(Path(cfg["log"]).read_text())
    assert sorted(rerun_starts) == sorted(set(range(0, 24, 4)) - done_starts)  # complete chunks not recomputed
    proc, ref = child("uninterrupted", tmp_path / "clean", slow=0.0)
    assert proc.wait(300) == 0
    a, b = np.load(cfg["out"]), np.load(ref["out"])
    assert a.shape == (1, 24, 32)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()))


def test_feature_cache_defaults_are_the_configs():
    """One source for a cache's settings: a FeatureCache built without them is the default FeatureConfig's."""
    import inspect

    params = inspect.signature(FeatureCache).parameters
    fc = FeatureConfig()
    for name in ("batch_size", "num_workers", "dtype", "precision", "chunk_size", "memmap"):
        assert params[name].default == getattr(fc, name), name
