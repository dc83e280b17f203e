"""The image transforms: the paper's train augmentation (drawn from a private generator) and CLIP's test view."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dapl.config import FeatureConfig

if TYPE_CHECKING:
    from dapl.clip import ClipBundle


class TrainTransform:
    """The paper's train augmentation: RandomResizedCrop (scale (``crop_scale_min``, 1), ratio 3/4–4/3, bicubic),
    an optional horizontal flip and CLIP's normalisation, drawing its randomness from the ``generator`` of each
    call instead of torch's global RNG.

    Why: the global RNG is shared by every thread of the process (Prefect runs tasks in threads), and anything
    may draw from or reseed it meanwhile (building a model initialises its weights from it), so a view "seeded"
    through it could change with whatever ran beside it: a cached view of one image was measured to differ
    between two extractions of the same images. With a private generator seeded ``s`` it draws exactly what
    torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` draw after ``torch.manual_seed(s)``, so the
    views (and the caches keyed by them) are those of the serial runs. ``generator=None`` uses the global RNG.
    """

    RATIO = (3.0 / 4.0, 4.0 / 3.0)

    def __init__(self, size: int, scale_min: float, hflip: bool, mean, std):
        self.size, self.scale, self.hflip = size, (scale_min, 1.0), hflip
        # log of the aspect-ratio bounds in float32, as torchvision takes them (once, not per image)
        self.log_ratio = tuple(float(x) for x in torch.log(torch.tensor(self.RATIO)))
        self.finish = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def crop(self, width: int, height: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)``: up to 10 draws of an area share and a log aspect ratio, else the central crop
        (torchvision's procedure, in its order of draws)."""
        area = height * width
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = torch.exp(torch.empty(1).uniform_(*self.log_ratio, generator=g)).item()
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.RATIO):
            w, h = width, int(round(width / min(self.RATIO)))
        elif in_ratio > max(self.RATIO):
            w, h = int(round(height * max(self.RATIO))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, h, w = self.crop(*img.size, generator)
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], T.InterpolationMode.BICUBIC,
                              antialias=True)
        if self.hflip and torch.rand(1, generator=generator) < 0.5:
            img = TF.hflip(img)
        return self.finish(img)


def train_transform(bundle: ClipBundle, cfg: FeatureConfig) -> TrainTransform:
    """Paper: RandomResizedCrop(scale (0.08, 1), bicubic) + flip + CLIP normalisation (:class:`TrainTransform`)."""
    return TrainTransform(bundle.image_size, cfg.crop_scale_min, cfg.hflip, bundle.mean, bundle.std)


def eval_transform(bundle: ClipBundle) -> T.Compose:
    """Resize the short side (bicubic) + centre crop + CLIP normalisation."""
    return T.Compose([
        T.Resize(bundle.image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(bundle.image_size),
        T.ToTensor(),
        T.Normalize(bundle.mean, bundle.std),
    ])


def transform_identity(bundle: ClipBundle, cfg: FeatureConfig | None) -> str:
    """What a transform does, for cache keys (None = the test transform)."""
    if cfg is None:
        return f"test:{bundle.image_size}:{bundle.mean}:{bundle.std}"
    return f"train:{bundle.image_size}:{cfg.crop_scale_min}:{cfg.hflip}:{bundle.mean}:{bundle.std}"
