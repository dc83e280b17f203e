"""One front door for every frozen CLIP: by name + tag, from a local file, or from a custom config.

Offline, open_clip retries the hub for ~47 s before failing; here a missing weight file is reported in
seconds with the exact place to put it. How weight files are read and recognised (OpenAI's or open_clip's)
lives in :mod:`dapl.weights`; the image transforms in :mod:`dapl.transforms`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from dapl.config import ModelConfig
from dapl.errors import UserError
from dapl.weights import (
    build_open_clip,
    build_openai,
    config_digest,
    file_stamp,
    openai_architecture,
    read_checkpoint,
    weights_digest,
)

CONFIG_DIR = Path(__file__).parent / "model_configs"
ASSET_DIR = Path(__file__).parent / "assets"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SHIPPED_TAG = "dapl"  # weights shipped inside the package (dapl/assets/<name>.pt), e.g. the toy-clip
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


@dataclass
class ClipBundle:
    """A frozen CLIP with what every stage needs beside it."""

    model: nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # what the model computes (config + weights content, or name + tag): part of every cache key
    device: torch.device
    amp: bool

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def width(self) -> int:
        return int(self.model.ln_final.weight.shape[0])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp()

    def autocast(self, dtype: torch.dtype = torch.float16):
        enabled = self.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.encode_image(x.to(self.device, non_blocking=True)).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast(torch.bfloat16):
            return self.model.encode_text(tokens).float()


def register_configs() -> None:
    """Make dapl's own model configs (e.g. ``toy-clip``) loadable by name through open_clip."""
    if CONFIG_DIR.is_dir() and CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_weights_dir(cfg: ModelConfig) -> Path:
    if cfg.weights_dir is not None:
        return Path(cfg.weights_dir)
    return Path(os.environ.get("DAPL_WEIGHTS_DIR", Path.home() / ".cache" / "dapl" / "weights"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("DAPL_OFFLINE"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(cfg: ModelConfig) -> str | None:
    """Turn ``cfg.pretrained`` into a local file path, a downloadable tag, or None (random init)."""
    p = cfg.pretrained
    if p is None or p == "" or p.lower() == "none":
        return None
    if p == SHIPPED_TAG:
        f = ASSET_DIR / f"{cfg.name}.pt"
        if not f.is_file():
            raise WeightsNotFoundError(f"model.pretrained='{SHIPPED_TAG}' means weights shipped in {ASSET_DIR}, "
                                       f"but {f.name} is not there; produce it with `dapl toy pretrain --out {f}`")
        return str(f)
    path = Path(p).expanduser()
    if path.suffix in _WEIGHT_SUFFIXES or os.sep in p:
        if not path.is_file():
            raise WeightsNotFoundError(f"model.pretrained={p!r}: no such file. Check the path, or give a known "
                                       f"tag for {cfg.name} (e.g. 'openai').")
        return str(path)
    wdir = default_weights_dir(cfg)
    for suf in _WEIGHT_SUFFIXES:
        cand = wdir / f"{cfg.name}_{p}{suf}"
        if cand.is_file():
            return str(cand)
    name = _model_name(cfg.name)
    if not open_clip.pretrained.is_pretrained_cfg(name, p):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsNotFoundError(f"model.pretrained={p!r} is neither a file nor a known tag for {name}; "
                                   f"known tags: {tags or 'none'}")
    if not _hub_reachable():
        raise WeightsNotFoundError(
            f"CLIP weights {name}/{p} are not on this machine and the hub cannot be reached (offline).\n"
            f"  Fix: put the weights file at {wdir / f'{cfg.name}_{p}.pt'}\n"
            f"       (or set DAPL_WEIGHTS_DIR, or pass model.pretrained=/path/to/file.pt). Both OpenAI files "
            f"(TorchScript or state dict, e.g. RN50.pt) and open_clip checkpoints are accepted."
        )
    return p  # a tag open_clip will download


def _model_name(name: str) -> str:
    register_configs()
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        return path.stem
    return name


def freeze(model: nn.Module) -> nn.Module:
    """Frozen and in eval mode (ResNet BatchNorm statistics must never update)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_clip(cfg: ModelConfig) -> ClipBundle:
    """Load a frozen CLIP as ``cfg`` says; fp32 weights (autocast on CUDA when ``cfg.amp``)."""
    device = resolve_device(cfg.device)
    name = _model_name(cfg.name)
    weights = resolve_weights(cfg)
    named = open_clip.get_model_config(name) if name in open_clip.list_models() else None
    if weights is not None and Path(weights).is_file():
        stamp = file_stamp(weights)
        ck = read_checkpoint(weights)
        if ck.openai:
            model = build_openai(ck, weights, name, named)
            built = openai_architecture(ck.state_dict)
        elif named is None:
            raise ValueError(f"model.name={cfg.name!r} is not an open_clip model or a config in {CONFIG_DIR}; "
                             f"name the config of {weights}")
        else:
            model, built = build_open_clip(ck, weights, name, named), named
        # content, not file bytes: a TorchScript archive and a state dict of the same weights share one cache
        identity = f"file:{weights_digest(weights, ck.state_dict, stamp)[:16]}:config:{config_digest(built)[:12]}"
    else:
        if named is None:
            raise ValueError(f"model.name={cfg.name!r} is not an open_clip model or a config in {CONFIG_DIR}")
        model = open_clip.create_model(name, pretrained=weights, precision="fp32", device="cpu")
        identity = f"{name}:random" if weights is None else f"{name}:{weights}"
    model = freeze(model.float()).to(device)
    if not hasattr(model, "token_embedding"):
        raise ValueError(f"{cfg.name}: only CLIP models with the standard text tower are supported "
                         "(prompt learning needs token embeddings); got a custom text tower")
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    tok = open_clip.get_tokenizer(name) if name in open_clip.list_models() else open_clip.get_tokenizer("RN50")
    return ClipBundle(model, tok, size, mean, std, identity, device, cfg.amp)


def model_config_dict(name: str) -> dict:
    """The open_clip architecture dict of a model name (for artifacts and cache keys)."""
    cfg = open_clip.get_model_config(_model_name(name))
    return json.loads(json.dumps(cfg)) if cfg else {}


