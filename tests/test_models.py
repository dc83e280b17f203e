"""Model loading: OpenAI-format files, open_clip files, custom configs, and the offline error."""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch

from dapl.config import ModelConfig
from dapl.models import WeightsNotFoundError, load_clip
from tests.tolerances import assert_close

# OpenAI's convention: 64-wide heads in both towers (what build_model_from_openai_state_dict infers)
OPENAI_TINY = {
    "vit": {"embed_dim": 32, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}},
    "rn": {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}},
}


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_openai_state_dict_file(tmp_path, arch):
    cfg_path = tmp_path / f"openai-tiny-{arch}.json"
    cfg_path.write_text(json.dumps(OPENAI_TINY[arch]))
    torch.manual_seed(0)
    src = open_clip.CLIP(**OPENAI_TINY[arch])
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    f = tmp_path / "tiny-openai.pt"
    torch.save(sd, f)

    bundle = load_clip(ModelConfig(name=str(cfg_path), pretrained=str(f), device="cpu"))
    expected = open_clip.model.build_model_from_openai_state_dict(dict(sd)).float().eval()
    assert bundle.identity.startswith("openai-file:")
    assert not bundle.model.training and not any(p.requires_grad for p in bundle.model.parameters())
    bns = [m for m in bundle.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in bns)
    x = torch.randn(2, 3, 32, 32)
    t = open_clip.tokenize(["a photo of a dog.", "a cat"])
    with torch.no_grad():
        assert_close(bundle.model.encode_image(x), expected.encode_image(x))
        assert_close(bundle.model.encode_text(t), expected.encode_text(t))
    # the file is OpenAI's fp16-rounded weights: same numbers, fp32 storage
    assert next(bundle.model.parameters()).dtype == torch.float32


def test_open_clip_format_file(tmp_path, tiny_config_dir):
    cfg = str(tiny_config_dir / "tiny-vit.json")
    torch.manual_seed(1)
    m = open_clip.CLIP(**json.loads((tiny_config_dir / "tiny-vit.json").read_text()))
    f = tmp_path / "ckpt.pt"
    torch.save({k: v.half() for k, v in m.state_dict().items()}, f)
    bundle = load_clip(ModelConfig(name=cfg, pretrained=str(f), device="cpu"))
    assert bundle.identity.startswith("tiny-vit:file:")
    w = m.state_dict()["token_embedding.weight"].half().float()
    assert torch.equal(bundle.model.token_embedding.weight, w)


def test_offline_tag_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as e:
        load_clip(ModelConfig(name="RN50-quickgelu", pretrained="openai", weights_dir=tmp_path, device="cpu"))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert str(tmp_path / "RN50-quickgelu_openai.pt") in msg and "offline" in msg


def test_unknown_tag_and_missing_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="known tags"):
        load_clip(ModelConfig(name="RN50-quickgelu", pretrained="nonsense", weights_dir=tmp_path, device="cpu"))
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        load_clip(ModelConfig(name="RN50-quickgelu", pretrained=str(tmp_path / "missing.pt"), device="cpu"))


def test_weights_dir_is_searched(tmp_path, tiny_config_dir):
    m = open_clip.CLIP(**json.loads((tiny_config_dir / "tiny-rn.json").read_text()))
    name = "tiny-rn"
    open_clip.add_model_config(tiny_config_dir)
    torch.save(m.state_dict(), tmp_path / f"{name}_mytag.pt")
    bundle = load_clip(ModelConfig(name=name, pretrained="mytag", weights_dir=tmp_path, device="cpu"))
    assert bundle.identity.startswith("tiny-rn:file:")
