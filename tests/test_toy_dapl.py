"""Integration: on the shipped toy CLIP, DAPL ends above zero-shot on a weak target domain (a real assertion)."""

from __future__ import annotations

import pytest

from dapl.config import DaplConfig
from dapl.datasets.index import index_dataset
from dapl.models import load_clip
from dapl.run import build_task
from dapl.toy.world import generate_world
from dapl.train import train


@pytest.mark.slow
def test_dapl_beats_zero_shot_on_the_toy_world(tmp_path):
    root = tmp_path / "toy"
    generate_world(root, seed=0, images_per_class=30, domains=("product", "art"), workers=1)
    manifest = index_dataset("toy", root, workers=1, progress=False)
    cfg = DaplConfig.from_preset("paper", {
        "model": {"name": "toy-clip", "pretrained": "dapl", "device": "cpu"},
        "prompt": {"m1": 4, "m2": 4, "init": "a photo of a"},
        "features": {"views": 4, "cache_dir": str(tmp_path / "cache"), "num_workers": 0},
        "train": {"epochs": 8},
        "data": {"dataset": "toy", "root": str(root), "source": ["product"], "target": ["art"]},
        "output_dir": str(tmp_path / "run"),
    })
    res = train(cfg, load_clip(cfg.model), build_task(cfg, manifest), progress=False)
    zs, final = res.zero_shot["target_acc"], res.final["target_acc"]
    assert 30 < zs < 90
    assert final > zs + 1.0, (zs, final)
