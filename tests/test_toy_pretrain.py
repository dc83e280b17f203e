"""Tiny-CLIP pretraining: the objective learns, the text shortcut is exact, the checkpoint format loads."""

from __future__ import annotations

import open_clip
import torch

from dapl.toy.pretrain import ToyPretrainConfig, encode_text_cut, save_open_clip_checkpoint, train_toy_clip
from dapl.toy.zeroshot import MODEL_NAME, register_model_configs


def test_encode_text_cut_is_exact():
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL_NAME).eval()
    tokens = open_clip.get_tokenizer(MODEL_NAME)(
        ["a photo of a mug.", "a watercolor painting of a desk lamp."]
    )
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text_cut(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5
        )


def test_short_run_lowers_loss_and_saves_fp16(tmp_path):
    torch.set_num_threads(1)
    # 120 steps: with the filler words of the recipe (captions up to ~50 tokens) the first steps learn slower
    cfg = ToyPretrainConfig(steps=120, batch_size=32, pool_size=240, warmup_steps=5, workers=1, progress=False)
    model, metrics = train_toy_clip(cfg)
    assert metrics["steps"] == 120
    assert metrics["loss_last"] < metrics["loss_first"] - 0.1, metrics
    path = tmp_path / "ckpt.pt"
    save_open_clip_checkpoint(model, path)
    sd = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    loaded = open_clip.create_model(MODEL_NAME, pretrained=str(path)).eval()
    torch.testing.assert_close(loaded.text_projection, model.text_projection.half().float())


def test_same_recipe_same_bytes_and_threads_restored(tmp_path):
    """The stage reproduces its checkpoint: same config (thread count included) -> byte-identical file."""
    torch.set_num_threads(2)
    cfg = ToyPretrainConfig(steps=6, batch_size=16, pool_size=96, warmup_steps=2, workers=1, progress=False)
    digests = []
    for run in ("a", "b"):
        model, _ = train_toy_clip(cfg)
        path = tmp_path / run / "toy-clip.pt"
        save_open_clip_checkpoint(model, path)
        digests.append(path.read_bytes())
    assert digests[0] == digests[1]
    assert torch.get_num_threads() == 2  # the recipe's thread count does not leak into the caller


def test_caption_candidates_mask_true_captions_and_keep_photo_senses_apart():
    import numpy as np

    from dapl.toy.pretrain import _STYLES, _candidates, _style_tables
    from dapl.toy.world import TOY_CLASSES, TOY_DOMAINS

    k = len(TOY_CLASSES)
    cfg = ToyPretrainConfig(specific_name_rate={"real": 1.0, "art": 0.0}, cross_style_negatives=1.0)
    p_style, valid = _style_tables(cfg)
    labels = np.array([2, 2])
    dom = np.array([TOY_DOMAINS.index("real"), TOY_DOMAINS.index("art")])
    variant = np.array([1, 1])  # both show the second depiction of class 2
    allowed, target = _candidates(cfg, np.random.default_rng(0), labels, dom, variant, p_style, valid)
    photo_style, own_art = divmod(int(target[0]), 2 * k)[0], divmod(int(target[1]), 2 * k)[0]
    assert target[0] % (2 * k) == k + 2  # a photo of it is captioned by its specific name ...
    assert allowed[0, photo_style, 2]  # ... and "a photo of a <class>" is a negative it must beat
    assert (
        target[1] % (2 * k) == 2 and not allowed[1, own_art, k + 2]
    )  # art: class name; specific name is true too
    assert _STYLES[own_art] == "painting"
    others = [s for s in range(len(_STYLES)) if not valid[dom[1], s]]
    assert all(allowed[1, s, :k].all() and not allowed[1, s, k:].any() for s in others)
