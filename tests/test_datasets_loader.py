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


def _augment(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return x + torch.rand(1)  # a "random" transform: depends on the torch RNG only


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


def test_seeded_views_are_the_same_when_threads_load_concurrently(mixed_modes):
    """Prefect runs tasks in threads: each item's view must not depend on what other threads draw meanwhile."""
    import threading
    import time

    def slow_random(img):  # two draws with a thread switch between them: a race shows in the second draw
        a = torch.rand(1)
        time.sleep(0.002)
        return torch.cat([a, torch.rand(1)])

    ds = ImageFileDataset(mixed_modes, slow_random, seed_fn=lambda i: 1000 + i)
    want = [ds[i][0] for i in range(len(ds))]
    got: dict[tuple[int, int], torch.Tensor] = {}

    def worker(t: int) -> None:
        for _ in range(3):
            for i in range(len(ds)):
                got[t, i] = ds[i][0]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(v, want[i]) for (_, i), v in got.items())


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
