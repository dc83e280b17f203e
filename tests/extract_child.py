"""A feature extraction in a separate process, for the tests that kill one or race two (``python tests/extract_child.py
CFG_JSON``): it logs the start of every chunk it encodes and can pause after each saved chunk (``slow`` seconds, and
while the file ``hold`` exists), so a test can act between two chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start(cfg: dict) -> subprocess.Popen:
    """This script on ``cfg`` (model, paths, root, cache, out, log; views, slow, hold optional), with this checkout
    first on the child's path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, __file__, json.dumps(cfg)], env=env)


def main(cfg: dict) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import dapl.features as features
    from dapl.clip import load_clip
    from dapl.config import FeatureConfig, ModelConfig
    from dapl.imageset import ImageSet

    torch.manual_seed(0)  # the same random tiny model in every process
    bundle = load_clip(ModelConfig(name=cfg["model"], pretrained=None, device="cpu"))
    images = ImageSet.build(cfg["paths"], None, 0, cfg["root"])
    real_save, real_encode, starts = features._save_atomic, features.encode_range, []

    def encode(*a, **k):
        starts.append(a[4])
        Path(cfg["log"]).write_text(json.dumps(starts))
        return real_encode(*a, **k)

    def save(path, arr):
        real_save(path, arr)
        time.sleep(cfg.get("slow", 0.0))  # leaves time to be killed between chunks
        while cfg.get("hold") and Path(cfg["hold"]).exists():  # held mid-view until the test lets it go on
            time.sleep(0.05)

    features.encode_range, features._save_atomic = encode, save
    cache = features.FeatureCache(cfg["cache"], bundle, batch_size=4, num_workers=0, encode_batch=2, chunk_size=4,
                                  precision="fp32", memmap=False)
    Path(cfg["log"]).write_text(json.dumps(starts))
    views = cfg.get("views", 1)
    out = cache.train_views(images, views, FeatureConfig(views=views, num_workers=0))
    np.save(cfg["out"], out.float().numpy())


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
