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


# 32 ordinary words in front of the manual prompt: a DAPL prompt's M1 + M2 = 16 + 16 context positions filled
# with real token embeddings, so the class name sits where a paper-recipe prompt puts it.
LONG_CONTEXT = ("here is something i saw today while walking around the old town with my family and some friends "
                "on a sunny afternoon in the middle of the long summer holidays last year")


def test_text_tower_reads_the_class_name_behind_a_32_token_context(model, tmp_path):
    _, _, tokenizer = model
    n_ctx = int(tokenizer([LONG_CONTEXT])[0].argmax()) - 1
    assert n_ctx >= 32
    generate_world(tmp_path, seed=0, images_per_class=10, workers=2)
    report = zero_shot_report(*model, load_world(tmp_path),
                              templates={"long": LONG_CONTEXT + " a photo of a {c}."})
    plain = sum(r["manual"]["acc"] for r in report["domains"].values()) / len(TOY_DOMAINS)
    long = sum(r["long"]["acc"] for r in report["domains"].values()) / len(TOY_DOMAINS)
    assert long > 0.5 and abs(long - plain) <= 0.05, (plain, long)


def test_paper_prompt_at_its_random_init_already_reads_the_class_name(model, tmp_path):
    """``[SOS] ctx x (16 + 16) {class}.`` with the context at DAPL's N(0, 0.02^2) init: the tower must still see the
    class name (a tower that never trained those positions is at chance here, and DAPL then cannot start)."""
    import torch.nn.functional as F

    from dapl.clip import ClipBundle
    from dapl.config import PromptConfig
    from dapl.prompts import PromptLearner
    from dapl.toy.world import TOY_CLASSES, class_display_name
    from dapl.toy.zeroshot import image_features

    clip, preprocess, tokenizer = model
    generate_world(tmp_path, seed=0, images_per_class=10, workers=2)
    world = load_world(tmp_path)
    bundle = ClipBundle(clip, tokenizer, 32, (0, 0, 0), (1, 1, 1), "test", torch.device("cpu"), False)
    names = [class_display_name(c) for c in TOY_CLASSES]
    accs = []
    for seed in (1, 2, 3):
        learner = PromptLearner(bundle, names, ["any"], PromptConfig(m1=16, m2=16))
        learner.reset_parameters(seed)
        with torch.no_grad():
            text = F.normalize(learner.text_features()[0].float(), dim=-1)
        for imgs, labels in world.values():
            pred = (image_features(clip, preprocess, imgs) @ text.T).argmax(1).numpy()
            accs.append(float((pred == labels).mean()))
    assert min(accs) > 3 / len(TOY_CLASSES), accs  # chance is 1/12
