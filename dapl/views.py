"""Where a training batch's image features come from: cached augmented views (ours) or encoding on the fly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dapl.clip import ClipBundle
from dapl.datasets.loader import load_rgb, seeded
from dapl.imageset import ImageSet


class CachedViews:
    """Features of V cached augmented views; a batch takes one random view per image.

    ``views`` is a ``[V, N, E]`` tensor, or a sequence of V ``[N, E]`` arrays (memory maps of the cache): on the
    CPU those stay on disk and a batch reads only its rows; on a GPU they are copied there view by view. Both
    forms draw the same views and return the same numbers.
    """

    def __init__(self, views: torch.Tensor | list[np.ndarray], device: torch.device):
        self.arrays: list[np.ndarray] | None = None
        if isinstance(views, torch.Tensor):
            self.views = views.to(device)  # [V, N, E] fp16
        elif device.type == "cpu":
            self.arrays = list(views)
        else:
            first = np.asarray(views[0])
            self.views = torch.empty((len(views), *first.shape), dtype=torch.from_numpy(first[:0]).dtype,
                                     device=device)
            for k, a in enumerate(views):
                self.views[k].copy_(torch.from_numpy(np.ascontiguousarray(a)))

    @property
    def num_views(self) -> int:
        return len(self.arrays) if self.arrays is not None else self.views.shape[0]

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        v = torch.randint(self.num_views, (len(idx),), generator=gen)
        if self.arrays is None:
            return self.views[v.to(self.views.device), idx.to(self.views.device)].float()
        rows, vs = idx.cpu().numpy(), v.numpy()
        out = np.empty((len(rows), self.arrays[0].shape[1]), self.arrays[0].dtype)
        for k in np.unique(vs):
            sel = vs == k
            out[sel] = self.arrays[k][rows[sel]]
        return torch.from_numpy(out).float()


class OnlineViews:
    """The released code's way: load, augment and encode the batch's images on every step."""

    def __init__(self, bundle: ClipBundle, images: ImageSet, transform: Callable):
        self.bundle, self.images, self.transform = bundle, images, transform

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        g = seeded(int(torch.randint(2**62, (1,), generator=gen)))  # one private stream for the batch
        x = torch.stack([self.transform(load_rgb(self.images.resolve(int(i))), generator=g) for i in idx])
        return self.bundle.encode_images(x)
