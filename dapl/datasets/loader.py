"""Torch data loading over an :class:`~dapl.imageset.ImageSet`.

Items are ``(tensor, index)``: the index lets the feature cache put each output back in its row whatever the
batch order or worker count. With ``seed_fn`` item ``i`` is transformed as ``transform(img, generator=g)`` with a
private generator seeded ``seed_fn(i)`` (e.g. :class:`dapl.transforms.TrainTransform`), so augmented views are
identical for any ``num_workers`` and any thread interleaving, and the global RNG is never touched. (Seeding the
global RNG instead, even under a lock, failed: every thread shares it and unlocked code such as a model's weight
initialisation draws from it meanwhile.)
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dapl.datasets.errors import DatasetError
from dapl.imageset import ImageSet

Transform = Callable[[Image.Image], torch.Tensor]


def seeded(seed: int) -> torch.Generator:
    """A private CPU generator for one seeded view (never the global RNG, which every thread shares)."""
    return torch.Generator().manual_seed(int(seed))


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img`` whatever its mode (palette, CMYK, grayscale, 16-bit, float, with alpha).

    Alpha is dropped as ``Image.convert("RGB")`` does (the released DAPL code's behaviour); palette images go
    through RGBA first so a transparency entry does not raise a warning; high-bit-depth images are scaled to
    8 bits instead of being clipped to white.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        return img.convert("RGBA").convert("RGB")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255) else (
            1.0 if img.mode == "F" and a.max(initial=0) <= 1.0 else 255.0)
        a8 = np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB image (fully read, file closed)."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e}); it changed since indexing? Re-run "
                           "`dapl data index` to re-validate the dataset") from e


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Float CHW tensor in [0, 1]: the default when no transform is given."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


class ImageFileDataset(Dataset):
    """Images of an :class:`ImageSet`, returned as ``(transform(rgb_image), index)``."""

    def __init__(self, image_set: ImageSet, transform: Transform | None = None,
                 seed_fn: Callable[[int], int] | None = None) -> None:
        self.image_set = image_set
        self.transform = transform or pil_to_tensor
        self.seed_fn = seed_fn

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = load_rgb(self.image_set.resolve(index))
        if self.seed_fn is None:
            return self.transform(img), index
        return self.transform(img, generator=seeded(self.seed_fn(index))), index


def default_num_workers() -> int:
    return min(2, os.cpu_count() or 1)


def make_loader(image_set: ImageSet, transform: Transform | None = None, *, batch_size: int = 64,
                num_workers: int | None = None, shuffle: bool = False, seed: int = 0,
                seed_fn: Callable[[int], int] | None = None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``image_set``. ``shuffle=False`` (evaluation, feature extraction) keeps the
    ImageSet order; ``shuffle=True`` draws the order from a generator seeded with ``seed``, never from the
    global RNG. ``num_workers`` defaults to ``min(2, cpu_count)``."""
    workers = default_num_workers() if num_workers is None else num_workers
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(ImageFileDataset(image_set, transform, seed_fn), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, generator=gen, drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=False)
