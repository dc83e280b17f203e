"""Shared fixtures: tiny open_clip models (a ViT and a ModifiedResNet) and small generated images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dapl.paths import apply_env_defaults  # noqa: E402  (telemetry off, project-local Prefect state)

apply_env_defaults()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("DAPL_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY_CONFIGS = {
    "tiny-vit": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                 "text_cfg": TINY_TEXT},
    "tiny-rn": {"embed_dim": 32, "quick_gelu": True,
                "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
                "text_cfg": TINY_TEXT},
}

def tiny_params(tmp_path: Path, config_dir: Path, views: int = 2, **sections: dict) -> Path:
    """A params.yaml for CLI tests: the tiny ViT (seeded weights saved beside it), 2+2 context vectors, 2 epochs
    of batch 8, its own feature cache; ``sections`` add to or replace whole config sections (``data={...}``)."""
    import yaml

    from dapl.clip import load_clip
    from dapl.config import ModelConfig

    model_cfg = str(config_dir / "tiny-vit.json")
    weights = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save(load_clip(ModelConfig(name=model_cfg, pretrained=None, device="cpu")).model.state_dict(), weights)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dapl": {
        "model": {"name": model_cfg, "pretrained": str(weights), "device": "cpu"},
        "prompt": {"m1": 2, "m2": 2},
        "features": {"views": views, "cache_dir": str(tmp_path / "cache" / "features"), "num_workers": 0},
        "train": {"epochs": 2, "batch_source": 8, "batch_target": 8}, **sections}}))
    return params


COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20)]
CLASSES = ["red_thing", "green_thing", "blue_thing", "yellow_thing"]


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model_configs")
    for name, cfg in TINY_CONFIGS.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="session", params=["tiny-vit", "tiny-rn"])
def tiny_model_name(request, tiny_config_dir) -> str:
    return str(tiny_config_dir / f"{request.param}.json")


def draw(color: tuple[int, int, int], style: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A coloured blob on a background whose brightness depends on the domain ``style``."""
    bg = 255 if style == 0 else 40
    arr = np.full((size, size, 3), bg, np.uint8)
    r = int(rng.integers(8, 14))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    yy, xx = np.ogrid[:size, :size]
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    jitter = rng.integers(-20, 20, 3)
    arr[m] = np.clip(np.array(color) + jitter, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def blob_world(tmp_path_factory) -> Path:
    """root/<domain>/<class>/<i>.png with two domains (light, dark), 4 colour classes."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for style, dom in enumerate(["light", "dark"]):
        for c, cls in enumerate(CLASSES):
            d = root / dom / cls
            d.mkdir(parents=True)
            for i in range(12):
                draw(COLORS[c], style, rng).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def rn50(tmp_path_factory):
    """One random full-size OpenAI RN50 (as ``convert_weights`` leaves it) and its state-dict and TorchScript
    files (tests/standins.py), built once per session: ``(model, {format: path})``."""
    from tests.standins import build_openai_files

    return build_openai_files(tmp_path_factory.mktemp("openai-rn50"), "RN50")
