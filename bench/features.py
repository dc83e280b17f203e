"""Feature-extraction throughput: JPEG files -> DataLoader -> frozen image encoder -> fp16 cache on disk.

This is the one-off cost our design pays instead of running the image encoder on every step; it is also the
per-image cost of the released code's every-epoch evaluation. Measured through the real path
(``FeatureCache`` / ``encode_view`` over ``ImageFileDataset``), plus the encoder alone on in-memory tensors to
show how much of it is decoding.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import timed
from dapl.config import FeatureConfig
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from dapl.models import ClipBundle


def write_jpegs(root: Path, n: int, size: tuple[int, int] = (480, 360), seed: int = 0) -> ImageSet:
    """``n`` smooth random JPEGs (photo-like compressibility) of ``size``; quality 90 like typical datasets."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        p = root / f"c{i % 7}" / f"{i:05d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p.relative_to(root))
    return ImageSet.build(paths, labels=[i % 7 for i in range(n)], domains=0, root=root)


@dataclass
class Throughput:
    model: str
    n_images: int
    test_view_img_s: float  # DataLoader (decode + resize + crop) + encoder, deterministic test view
    train_view_img_s: float  # DataLoader (decode + RandomResizedCrop + flip) + encoder, one augmented view
    encoder_img_s: float  # encoder only, tensors in memory
    workers: int
    batch_size: int


def measure(bundle: ClipBundle, model_name: str, n_images: int, workers: int = 2, batch_size: int = 64,
            tmp: Path | None = None) -> Throughput:
    with tempfile.TemporaryDirectory(prefix="dapl-bench-", dir=tmp) as d:
        root = Path(d)
        images = write_jpegs(root / "images", n_images)
        cache = FeatureCache(root / "cache", bundle, batch_size=batch_size, num_workers=workers)
        t = time.perf_counter()
        test = cache.test_features(images)
        t_test = time.perf_counter() - t
        t = time.perf_counter()
        train = cache.train_views(images, 1, FeatureConfig())
        t_train = time.perf_counter() - t
        assert test.shape == (n_images, bundle.embed_dim) and train.shape == (1, n_images, bundle.embed_dim)
    x = torch.randn(batch_size, 3, bundle.image_size, bundle.image_size).to(bundle.device)
    bundle.encode_images(x)  # warm-up
    t_enc = min(timed(lambda: bundle.encode_images(x), bundle.device) for _ in range(2))
    return Throughput(model_name, n_images, n_images / t_test, n_images / t_train, batch_size / t_enc, workers,
                      batch_size)
