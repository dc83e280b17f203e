"""Stand-ins for OpenAI's released CLIP files (nothing can be downloaded): full-size, random weights, OpenAI's
exact layouts.

OpenAI's weights exist in two forms: the released TorchScript archives (``RN50.pt``), whose ``state_dict()``
holds the CLIP keys plus ``input_resolution``/``context_length``/``vocab_size`` as tensors, and the state dict
of the model ``clip.load(..., jit=False)`` builds, left by ``clip.model.convert_weights`` in a fp16/fp32 mix
(conv, linear, attention and projection weights fp16; embeddings, LayerNorm and BatchNorm fp32). open_clip's
CLIP has OpenAI's state-dict names (its ``build_model_from_openai_state_dict`` loads OpenAI's dicts strictly),
and ``open_clip.model.convert_weights_to_lp`` is its copy of ``convert_weights``: both are used here, so the
stand-ins do not depend on dapl's own reading of the layout.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import open_clip
import torch

FORMATS = ("state-dict", "torchscript")


def _calibrate_batchnorm(visual: torch.nn.Module) -> None:
    """Random affine BatchNorm parameters and running statistics measured on two noise images: with open_clip's
    init (zero residual gains, unit statistics) a random ResNet maps every image to nearly the same feature."""
    bns = [m for m in visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.0)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = 1.0  # the running statistics become this one batch's
        visual.train()
        visual(torch.randn(2, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
    visual.eval()


def openai_clip(arch: str = "RN50", seed: int = 0) -> torch.nn.Module:
    """A random CLIP of OpenAI's ``arch`` (RN50, RN101, ViT-B-32, ...) as ``convert_weights`` leaves it, whose
    image features differ between images; torch's global RNG is left as it was."""
    cfg = open_clip.get_model_config(f"{arch}-quickgelu")
    if cfg is None:
        raise ValueError(f"open_clip has no {arch}-quickgelu config to build an OpenAI {arch} from")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(**cfg).eval()
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.visual.modules()):
            _calibrate_batchnorm(model.visual)
    open_clip.model.convert_weights_to_lp(model, torch.float16)
    return model


def save_openai(model: torch.nn.Module, path: Path, fmt: str) -> Path:
    """Write ``model`` as OpenAI's files exist: ``state-dict`` (torch.save of the converted model's state dict)
    or ``torchscript`` (a scripted archive whose state dict also holds OpenAI's three extra entries)."""
    if fmt == "state-dict":
        torch.save(model.state_dict(), path)
        return path
    if fmt != "torchscript":
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    m = copy.deepcopy(model)
    size = m.visual.image_size
    extra = {"input_resolution": size[0] if isinstance(size, tuple | list) else size,
             "context_length": m.context_length, "vocab_size": m.vocab_size}
    for k, v in extra.items():
        if hasattr(m, k):
            delattr(m, k)
        m.register_buffer(k, torch.tensor(v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        torch.jit.script(m).save(str(path))
    return path


def build_openai_files(folder: Path, arch: str = "RN50", seed: int = 0) -> tuple[torch.nn.Module, dict[str, Path]]:
    """One random OpenAI ``arch`` and both its forms in ``folder`` (``{format: path}``), named as OpenAI does."""
    model = openai_clip(arch, seed)
    files = {}
    for fmt in FORMATS:
        (folder / fmt).mkdir(parents=True, exist_ok=True)
        files[fmt] = save_openai(model, folder / fmt / f"{arch}.pt", fmt)
    return model, files
