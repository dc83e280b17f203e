"""One front door for every frozen CLIP: by name + tag, from a local file, or from a custom config.

Offline, open_clip retries the hub for ~47 s before failing; here a missing weight file is reported in
seconds with the exact place to put it.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn
from torchvision import transforms as T

from dapl.config import FeatureConfig, ModelConfig
from dapl.paths import file_sha256

CONFIG_DIR = Path(__file__).parent / "model_configs"
ASSET_DIR = Path(__file__).parent / "assets"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SHIPPED_TAG = "dapl"  # weights shipped inside the package (dapl/assets/<name>.pt), e.g. the toy-clip
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


@dataclass
class ClipBundle:
    """A frozen CLIP with what every stage needs beside it."""

    model: nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # model name + weights identity: part of every feature-cache key
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


def _looks_openai(path: str) -> bool:
    """OpenAI checkpoints are TorchScript archives or state dicts carrying ``input_resolution``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.load(path, map_location="cpu")
        return True
    except Exception:  # noqa: BLE001 - anything but a TorchScript archive
        pass
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    return isinstance(sd, dict) and "input_resolution" in sd


def _file_identity(path: str) -> str:
    return file_sha256(path)[:16]


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
    if weights is not None and Path(weights).is_file() and _looks_openai(weights):
        model = open_clip.load_openai_model(weights, precision="fp32", device="cpu")
        identity = f"openai-file:{_file_identity(weights)}"
    else:
        if name not in open_clip.list_models():
            raise ValueError(f"model.name={cfg.name!r} is not an open_clip model or a config in {CONFIG_DIR}")
        model = open_clip.create_model(name, pretrained=weights, precision="fp32", device="cpu")
        if weights is None:
            identity = f"{name}:random"
        elif Path(weights).is_file():
            identity = f"{name}:file:{_file_identity(weights)}"
        else:
            identity = f"{name}:{weights}"
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


def train_transform(bundle: ClipBundle, cfg: FeatureConfig) -> T.Compose:
    """Paper: RandomResizedCrop(scale (0.08, 1), bicubic) + flip + CLIP normalisation."""
    ops: list = [
        T.RandomResizedCrop(bundle.image_size, scale=(cfg.crop_scale_min, 1.0),
                            interpolation=T.InterpolationMode.BICUBIC),
    ]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(bundle.mean, bundle.std)]
    return T.Compose(ops)


def eval_transform(bundle: ClipBundle) -> T.Compose:
    """Resize the short side (bicubic) + centre crop + CLIP normalisation."""
    return T.Compose([
        T.Resize(bundle.image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(bundle.image_size),
        T.ToTensor(),
        T.Normalize(bundle.mean, bundle.std),
    ])


def transform_identity(bundle: ClipBundle, cfg: FeatureConfig | None) -> str:
    """What a transform does, for cache keys (None = the test transform)."""
    if cfg is None:
        return f"test:{bundle.image_size}:{bundle.mean}:{bundle.std}"
    return f"train:{bundle.image_size}:{cfg.crop_scale_min}:{cfg.hflip}:{bundle.mean}:{bundle.std}"
