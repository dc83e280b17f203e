"""The shipped toy-clip checkpoint loads through the standard open_clip path and reproduces its recorded
zero-shot accuracy on a freshly generated benchmark world."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from dapl.toy.world import TOY_DOMAINS, generate_world
from dapl.toy.zeroshot import load_world, zero_shot_report

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "dapl" / "assets" / "toy-clip.pt"
RECORD = CKPT.with_suffix(".json")


def test_checkpoint_is_small_fp16_open_clip_state_dict():
    assert CKPT.stat().st_size <= 21 * 2**20
    sd = torch.load(CKPT, weights_only=True)
    assert isinstance(sd, dict) and "logit_scale" in sd and "visual.attnpool.c_proj.weight" in sd
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def model():
    open_clip.add_model_config(REPO / "dapl" / "model_configs")
    torch.set_num_threads(1)
    model, _, preprocess = open_clip.create_model_and_transforms("toy-clip", pretrained=str(CKPT))
    return model.eval(), preprocess, open_clip.get_tokenizer("toy-clip")


def test_reloads_with_recorded_zero_shot_accuracy(model, tmp_path):
    record = json.loads(RECORD.read_text())
    ew = record["eval_world"]
    generate_world(tmp_path, seed=ew["seed"], images_per_class=ew["images_per_class"], workers=2)
    report = zero_shot_report(*model, load_world(tmp_path))
    for dom in TOY_DOMAINS:
        got = report["domains"][dom]["manual"]["acc"]
        want = record["zero_shot"]["domains"][dom]["manual"]["acc"]
        assert abs(got - want) <= 0.02, (dom, got, want)
    assert report["logit_scale"] == pytest.approx(record["zero_shot"]["logit_scale"], rel=1e-3)
