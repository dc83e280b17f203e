"""Model loading: OpenAI-format files, open_clip files, custom configs, and the offline error."""

from __future__ import annotations

import json
import os
import time

import open_clip
import pytest
import torch

from dapl.clip import WeightsNotFoundError, load_clip
from dapl.config import ModelConfig
from dapl.errors import UserError
from dapl.weights import (
    CheckpointMismatchError,
    openai_converted,
    read_checkpoint,
    state_dict_digest,
    weights_digest,
)
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


def _openai_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny CLIP with OpenAI's layout and activation, its weights fp16-exact as OpenAI's released ones are."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPENAI_TINY[arch]).eval()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
        for m in model.modules():  # BatchNorm statistics that matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_((torch.randn_like(m.running_mean) * 0.1).half().float())
                m.running_var.copy_((torch.rand_like(m.running_var) + 0.5).half().float())
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(7)
    x = torch.randn(3, 3, 32, 32)
    t = open_clip.tokenize(["a photo of a dog.", "a cat", "traffic light"])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(t), dim=-1)
        return model.logit_scale.exp() * img @ txt.T


def _save_openai(model: torch.nn.Module, path, fmt: str) -> None:
    """Write ``model`` the ways OpenAI-format files exist in the wild."""
    if fmt == "torchscript":  # OpenAI's released files: TorchScript with the three extra entries as buffers
        import copy

        m = copy.deepcopy(model)
        for k, v in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
            if hasattr(m, k):
                delattr(m, k)
            m.register_buffer(k, torch.tensor(v))
        torch.jit.script(m.half()).save(str(path))
        return
    if fmt == "converted":  # clip.load(..., jit=False): left by convert_weights in OpenAI's fp16/fp32 mix
        import copy

        m = copy.deepcopy(model)
        open_clip.model.convert_weights_to_lp(m, torch.float16)
        torch.save(m.state_dict(), path)
        return
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if "fp16" in fmt:  # clip.load(..., jit=False) on a GPU, then state_dict()
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    if "resolution" in fmt:
        sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    if "module" in fmt:  # a DataParallel training checkpoint
        sd = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(sd, path)


OPENAI_FORMATS = ["torchscript", "converted", "fp32", "fp16", "fp32-resolution", "fp16-resolution", "fp16-module",
                  "fp32-module-resolution"]


@pytest.mark.parametrize("fmt", OPENAI_FORMATS)
@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_openai_files_load_to_the_reference_logits(tmp_path, arch, fmt):
    cfg_path = tmp_path / f"openai-tiny-{arch}.json"
    cfg_path.write_text(json.dumps(OPENAI_TINY[arch]))
    ref = _openai_clip(arch)
    f = tmp_path / "tiny-openai.pt"
    _save_openai(ref, f, fmt)
    bundle = load_clip(ModelConfig(name=str(cfg_path), pretrained=str(f), device="cpu"))
    assert bundle.identity.startswith("file:")
    assert not bundle.model.training and not any(p.requires_grad for p in bundle.model.parameters())
    assert all(not m.training for m in bundle.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert next(bundle.model.parameters()).dtype == torch.float32
    assert bundle.image_size == 32
    assert_close(_logits(bundle.model), _logits(ref))


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_every_format_of_the_same_weights_has_one_identity(tmp_path, arch):
    """The cache identity is the weights' content (plus the model's config), never the file's bytes."""
    cfg_path = tmp_path / f"openai-tiny-{arch}.json"
    cfg_path.write_text(json.dumps(OPENAI_TINY[arch]))
    ids, digests = set(), set()
    for fmt in OPENAI_FORMATS:
        f = tmp_path / f"{fmt}.pt"
        _save_openai(_openai_clip(arch), f, fmt)
        ids.add(load_clip(ModelConfig(name=str(cfg_path), pretrained=str(f), device="cpu")).identity)
        digests.add(weights_digest(str(f)))
    assert len(ids) == 1 and len(digests) == 1
    other = tmp_path / "other.pt"
    _save_openai(_openai_clip(arch, seed=1), other, "converted")
    first = weights_digest(str(other))
    assert first not in digests
    before = other.stat()  # rewritten in place: the per-process memo (path, size, mtime) sees the new version
    _save_openai(_openai_clip(arch, seed=2), other, "converted")
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a later write, whatever the clock
    assert weights_digest(str(other)) != first
    assert weights_digest(str(other)) == state_dict_digest(read_checkpoint(str(other)).state_dict)
    gelu = tmp_path / f"gelu-{arch}.json"  # the same weights in another model compute other features
    gelu.write_text(json.dumps({k: v for k, v in OPENAI_TINY[arch].items() if k != "quick_gelu"}))
    plain = tmp_path / "fp32.pt"  # one precision throughout: may be an open_clip GELU checkpoint, so loadable
    assert load_clip(ModelConfig(name=str(gelu), pretrained=str(plain), device="cpu")).identity not in ids


@pytest.mark.parametrize("fmt", ["torchscript", "converted", "fp16-resolution"])
def test_openai_weights_under_a_gelu_config_are_refused(tmp_path, fmt):
    gelu = {k: v for k, v in OPENAI_TINY["vit"].items() if k != "quick_gelu"}
    cfg_path = tmp_path / "gelu-tiny.json"
    cfg_path.write_text(json.dumps(gelu))
    f = tmp_path / "openai.pt"
    _save_openai(_openai_clip("vit"), f, fmt)
    with pytest.raises(CheckpointMismatchError, match="OpenAI's CLIP layout.*QuickGELU.*GELU.*quick_gelu") as e:
        load_clip(ModelConfig(name=str(cfg_path), pretrained=str(f), device="cpu"))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value) and str(f) in str(e.value)
    # the two activations really give different logits: loading silently with GELU would be wrong
    gelu_model = open_clip.CLIP(**gelu).eval()
    gelu_model.load_state_dict(_openai_clip("vit").state_dict())
    assert (_logits(gelu_model) - _logits(_openai_clip("vit"))).abs().max() > 1e-3


def test_open_clip_file_whose_config_says_quickgelu_is_refused_under_gelu(tmp_path, tiny_config_dir):
    d = tmp_path / "hf"
    d.mkdir()
    torch.save(_openai_clip("vit").state_dict(), d / "open_clip_pytorch_model.bin")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPENAI_TINY["vit"]}))
    gelu = tmp_path / "gelu-tiny.json"
    gelu.write_text(json.dumps({k: v for k, v in OPENAI_TINY["vit"].items() if k != "quick_gelu"}))
    with pytest.raises(CheckpointMismatchError, match="QuickGELU.*gelu-tiny.*GELU"):
        load_clip(ModelConfig(name=str(gelu), pretrained=str(d / "open_clip_pytorch_model.bin"), device="cpu"))


def test_shapes_that_disagree_with_the_named_config_name_both(tmp_path, tiny_config_dir):
    f = tmp_path / "openai.pt"
    _save_openai(_openai_clip("rn"), f, "fp32")  # no OpenAI marker: read as an open_clip file for the named config
    with pytest.raises(CheckpointMismatchError, match=r"tiny-vit.*disagree.*vision.layers: \[1, 1, 1, 1\] vs 2"):
        load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-vit.json"), pretrained=str(f), device="cpu"))
    _save_openai(_openai_clip("rn"), f, "torchscript")  # OpenAI's: its own architecture vs the named one
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**OPENAI_TINY["rn"], "embed_dim": 64}))
    with pytest.raises(CheckpointMismatchError, match="embed_dim: 32 vs 64"):
        load_clip(ModelConfig(name=str(wide), pretrained=str(f), device="cpu"))


def test_open_clip_format_file(tmp_path, tiny_config_dir, caplog):
    cfg = str(tiny_config_dir / "tiny-vit.json")
    torch.manual_seed(1)
    m = open_clip.CLIP(**json.loads((tiny_config_dir / "tiny-vit.json").read_text()))
    f = tmp_path / "ckpt.pt"
    torch.save({k: v.half() for k, v in m.state_dict().items()}, f)
    with caplog.at_level("WARNING"):
        bundle = load_clip(ModelConfig(name=cfg, pretrained=str(f), device="cpu"))
    assert "initialized randomly" not in caplog.text  # open_clip's notice is false here: the file is loaded next
    assert bundle.identity.startswith("file:")
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
    assert bundle.identity.startswith("file:")


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_only_convert_weights_mix_in_openai_layout_reads_as_openai(arch):
    """One precision throughout (how open_clip saves its GELU checkpoints) is not OpenAI's mark; the exact mix is,
    and one tensor in the other precision, a missing or an extra key breaks it."""
    import copy

    m = copy.deepcopy(_openai_clip(arch))
    open_clip.model.convert_weights_to_lp(m, torch.float16)
    mixed = dict(m.state_dict())
    assert openai_converted(mixed)
    assert not openai_converted(_openai_clip(arch).state_dict())
    assert not openai_converted({k: v.half() if v.is_floating_point() else v for k, v in mixed.items()})
    assert not openai_converted({**mixed, "ln_final.weight": mixed["ln_final.weight"].half()})
    assert not openai_converted({**mixed, "text_projection": mixed["text_projection"].float()})
    assert not openai_converted({k: v for k, v in mixed.items() if k != "logit_scale"})
    assert not openai_converted({**mixed, "logit_bias": torch.zeros(1)})
    assert not openai_converted({"weight": torch.zeros(2)})
