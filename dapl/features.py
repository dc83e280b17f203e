"""Frozen image features, encoded once per augmented view and cached on disk (fp16).

The image encoder is frozen, so a training step never needs it: V random train views and one test view of
every image are encoded once, and reused by every run, seed and prompt setting that shares the model,
transform and image list. Each view is written atomically, so an interrupted extraction resumes and a
half-written file is never read as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dapl.imageset import ImageSet
from dapl.models import ClipBundle, eval_transform, train_transform, transform_identity

FORMAT_VERSION = "2"  # 2: seeded views locked against other threads (1 could race under Prefect)


def view_seed(view: int) -> Callable[[int], int]:
    """Per-image augmentation seed of a cached view: independent of worker count and order.

    torch's CPU generator keeps 32 bits of a seed, so the pair is packed into 32 bits: unique for up to
    1,021 views of up to ~4.2 M images.
    """
    return lambda index: (index * 1021 + view) % (1 << 32)


def cache_key(bundle: ClipBundle, images: ImageSet, transform_id: str, dtype: str = "float16") -> str:
    parts = [FORMAT_VERSION, bundle.identity, transform_id, images.fingerprint(), dtype]
    h = hashlib.sha256(json.dumps(parts).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def encode_view(bundle: ClipBundle, images: ImageSet, transform: Callable, seed_fn: Callable[[int], int] | None,
                batch_size: int = 64, num_workers: int = 2, desc: str = "encode",
                dtype: str = "float16") -> np.ndarray:
    """Run the frozen image encoder over one view of every image (deterministic order): ``[N, E]``."""
    from dapl.datasets.loader import ImageFileDataset

    ds = ImageFileDataset(images, transform, seed_fn=seed_fn)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                    pin_memory=bundle.device.type == "cuda", persistent_workers=False)
    out = np.empty((len(images), bundle.embed_dim), dtype)
    for x, idx in tqdm(dl, desc=desc, leave=False, unit="batch", disable=None):
        out[idx.numpy()] = bundle.encode_images(x).cpu().numpy().astype(dtype)
    return out


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FeatureCache:
    """``cache_dir/<key>/{test.npy, view_000.npy, ...}`` with a ``meta.json`` describing the key."""

    def __init__(self, cache_dir: str | Path, bundle: ClipBundle, batch_size: int = 64, num_workers: int = 2,
                 dtype: str = "float16"):
        self.dir = Path(cache_dir)
        self.dtype = dtype
        self.bundle = bundle
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _folder(self, images: ImageSet, transform_id: str) -> Path:
        d = self.dir / cache_key(self.bundle, images, transform_id, self.dtype)
        d.mkdir(parents=True, exist_ok=True)
        meta = d / "meta.json"
        if not meta.exists():
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"model": self.bundle.identity, "transform": transform_id,
                                       "images": images.fingerprint(), "n": len(images),
                                       "format": FORMAT_VERSION, "dtype": self.dtype}, indent=1))
            os.replace(tmp, meta)
        return d

    def test_features(self, images: ImageSet, desc: str = "test view") -> torch.Tensor:
        """The deterministic test view: ``[N, E]``."""
        d = self._folder(images, transform_identity(self.bundle, None))
        f = d / "test.npy"
        if not f.exists():
            arr = encode_view(self.bundle, images, eval_transform(self.bundle), None, self.batch_size,
                              self.num_workers, desc=desc, dtype=self.dtype)
            _save_atomic(f, arr)
        return torch.from_numpy(np.load(f))

    def train_views(self, images: ImageSet, views: int, cfg, desc: str = "train views") -> torch.Tensor:
        """``views`` random augmented views: ``[V, N, E]`` (views already on disk are reused)."""
        d = self._folder(images, transform_identity(self.bundle, cfg))
        tf = train_transform(self.bundle, cfg)
        out = []
        for v in tqdm(range(views), desc=desc, unit="view", disable=None):
            f = d / f"view_{v:03d}.npy"
            if not f.exists():
                _save_atomic(f, encode_view(self.bundle, images, tf, view_seed(v), self.batch_size,
                                            self.num_workers, desc=f"{desc} {v + 1}/{views}", dtype=self.dtype))
            out.append(np.load(f))
        return torch.from_numpy(np.stack(out))
