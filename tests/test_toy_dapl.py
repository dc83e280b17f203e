"""Integration: on the shipped toy CLIP, DAPL with the toy dataset's default recipe (the paper's: M1 = M2 = 16 from
N(0, 0.02^2), 25 epochs) ends above zero-shot on a weak target domain, without diverging (a real assertion)."""

from __future__ import annotations

import pytest

from dapl.datasets.index import index_dataset
from dapl.models import load_clip
from dapl.plan import resolve_config
from dapl.run import build_task
from dapl.toy.world import generate_world
from dapl.train import train


@pytest.mark.slow
def test_dapl_with_the_default_recipe_beats_zero_shot_on_the_toy_world(tmp_path):
    root = tmp_path / "toy"
    generate_world(root, seed=0, images_per_class=30, domains=("product", "art"), workers=1)
    manifest = index_dataset("toy", root, workers=1, progress=False)
    cfg = resolve_config(dataset="toy", root=root, overrides={
        "model.device": "cpu", "features.cache_dir": str(tmp_path / "cache"),
        "data.source": ["product"], "data.target": ["art"], "output_dir": str(tmp_path / "run")})
    assert (cfg.prompt.m1, cfg.prompt.m2, cfg.prompt.init, cfg.train.epochs) == (16, 16, None, 25)
    res = train(cfg, load_clip(cfg.model), build_task(cfg, manifest), progress=False)
    zs, final = res.zero_shot["target_acc"], res.final["target_acc"]
    assert 30 < zs < 90
    assert final > zs + 1.0, (zs, final)
    assert res.diverged is None
