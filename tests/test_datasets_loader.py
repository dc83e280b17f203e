"""Loading: RGB for every mode, (tensor, index) items, per-item seeded augmentation, deterministic order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dapl.datasets.errors import DatasetError
from dapl.datasets.loader import ImageFileDataset, load_rgb, make_loader, to_rgb
from dapl.imageset import ImageSet
from tests.tolerances import assert_close


@pytest.fixture
def mixed_modes(tmp_path) -> ImageSet:
    imgs = {
        "rgb.png": Image.new("RGB", (10, 8), (200, 10, 10)),
        "gray.png": Image.new("L", (10, 8), 77),
        "cmyk.jpg": Image.new("CMYK", (10, 8), (0, 255, 255, 0)),
        "rgba.png": Image.new("RGBA", (10, 8), (1, 2, 3, 0)),
        "i16.png": Image.new("I;16", (10, 8), 65535),
    }
    pal = Image.new("P", (10, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    imgs["pal.png"] = pal
    for name, im in imgs.items():
        kw = {"transparency": 0} if name == "pal.png" else {}
        im.save(tmp_path / name, **kw)
    names = sorted(imgs)
    return ImageSet.build(names, labels=list(range(len(names))), root=tmp_path)


def test_every_mode_becomes_rgb(mixed_modes, recwarn):
    ds = ImageFileDataset(mixed_modes)
    for i in range(len(ds)):
        x, idx = ds[i]
        assert idx == i and x.shape == (3, 8, 10) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    by = {p: ds[i][0] for i, p in enumerate(mixed_modes.paths)}
    assert_close(by["pal.png"][:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert_close(by["i16.png"], torch.ones(3, 8, 10))  # 16-bit white stays white, scaled
    assert_close(by["gray.png"], torch.full((3, 8, 10), 77 / 255))
    assert by["cmyk.jpg"][0].mean() > 0.9 and by["cmyk.jpg"][1:].mean() < 0.1  # CMYK red -> RGB red
    assert not [w for w in recwarn if "Palette" in str(w.message)]
    assert to_rgb(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)


def _augment(img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return x + torch.rand(1, generator=generator)  # a "random" transform: depends on its generator only


def test_seed_fn_makes_views_deterministic_and_leaves_global_rng(mixed_modes):
    ds = ImageFileDataset(mixed_modes, _augment, seed_fn=lambda i: 1000 + i)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [ds[i][0] for i in range(len(ds))]
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    b = [ds[i][0] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # order-independent
    loaded = torch.cat([x for x, _ in make_loader(mixed_modes, _augment, batch_size=4, num_workers=2,
                                                  seed_fn=lambda i: 1000 + i)])
    assert torch.equal(loaded, torch.stack(a))  # identical in worker processes


def test_seeded_views_ignore_whatever_other_threads_do_to_the_global_rng(mixed_modes):
    """Prefect runs tasks in threads, and unlocked code (a model's weight initialisation, a trainer's
    ``torch.manual_seed``) reseeds and draws from the global RNG meanwhile: no view may change."""
    import threading
    import time

    def slow_random(img, generator=None):  # two draws with a thread switch between them
        a = torch.rand(1, generator=generator)
        time.sleep(0.002)
        return torch.cat([a, torch.rand(1, generator=generator)])

    ds = ImageFileDataset(mixed_modes, slow_random, seed_fn=lambda i: 1000 + i)
    want = [ds[i][0] for i in range(len(ds))]
    got: dict[tuple[int, int], torch.Tensor] = {}
    stop = threading.Event()

    def hammer() -> None:  # what a model build or a trainer's setup does to the shared RNG
        k = 0
        while not stop.is_set():
            torch.manual_seed(k)
            torch.randn(64)
            k += 1

    def worker(t: int) -> None:
        for _ in range(3):
            for i in range(len(ds)):
                got[t, i] = ds[i][0]

    noise = threading.Thread(target=hammer)
    noise.start()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    noise.join()
    assert len(got) == 3 * len(ds) and all(torch.equal(v, want[i]) for (_, i), v in got.items())


def test_train_transform_draws_what_torchvision_draws_after_the_same_seed():
    """Cached views made before the private generator (torchvision under ``torch.manual_seed``) stay valid:
    the same seed gives the same crop, flip and pixels, including the central-crop fallback."""
    from torchvision import transforms as T

    from dapl.transforms import TrainTransform

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    rng = np.random.default_rng(0)
    for w, h in ((480, 360), (6, 300), (200, 20)):  # the thin ones hit the fallback
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for scale_min, hflip in ((0.08, True), (0.55, False)):
            ref = T.Compose([T.RandomResizedCrop(16, scale=(scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                             *([T.RandomHorizontalFlip()] if hflip else []), T.ToTensor(), T.Normalize(mean, std)])
            ours = TrainTransform(16, scale_min, hflip, mean, std)
            for seed in range(40):
                torch.manual_seed(seed)
                assert torch.equal(ours(img, generator=torch.Generator().manual_seed(seed)), ref(img))


def test_loader_order_is_the_imageset_order(mixed_modes):
    idx = torch.cat([i for _, i in make_loader(mixed_modes, batch_size=4, num_workers=0)])
    assert idx.tolist() == list(range(len(mixed_modes)))
    s1 = torch.cat([i for _, i in make_loader(mixed_modes, batch_size=2, shuffle=True, seed=3, num_workers=0)])
    s2 = torch.cat([i for _, i in make_loader(mixed_modes, batch_size=2, shuffle=True, seed=3, num_workers=0)])
    assert s1.tolist() == s2.tolist() and sorted(s1.tolist()) == list(range(len(mixed_modes)))


def test_unreadable_file_names_it(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
