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
    tokens = open_clip.get_tokenizer(MODEL_NAME)(["a photo of a mug.", "a watercolor painting of a desk lamp."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_cut(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_short_run_lowers_loss_and_saves_fp16(tmp_path):
    torch.set_num_threads(1)
    cfg = ToyPretrainConfig(steps=60, batch_size=32, pool_size=240, warmup_steps=5, workers=1, progress=False)
    model, metrics = train_toy_clip(cfg)
    assert metrics["steps"] == 60
    assert metrics["loss_last"] < metrics["loss_first"] - 0.1, metrics
    path = tmp_path / "ckpt.pt"
    save_open_clip_checkpoint(model, path)
    sd = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    loaded = open_clip.create_model(MODEL_NAME, pretrained=str(path)).eval()
    torch.testing.assert_close(loaded.text_projection, model.text_projection.half().float())
