"""Epoch checkpoints: what a killed run resumes from, and the identity that decides whether it may."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from dapl.config import SECTIONS, DaplConfig
from dapl.imageset import AdaptationData

CHECKPOINT = "checkpoint.pt"


def run_identity(cfg: DaplConfig, model_identity: str, data: AdaptationData) -> str:
    """The configuration, plus the weights' identity and the images' fingerprints: the same config path can point
    at a retrained checkpoint or a regenerated dataset."""
    tt = data.target_test
    parts = [cfg.digest(*SECTIONS), model_identity, data.source.fingerprint(), data.target.fingerprint(),
             tt.fingerprint() if tt is not None else ""]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def save_checkpoint(out_dir: str | Path, state: dict) -> None:
    """Write ``state`` atomically: a reader sees the previous checkpoint or this one, never a torn file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CHECKPOINT}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def load_checkpoint(out_dir: str | Path, identity: str, resume: bool) -> dict | None:
    """The checkpoint to resume, or None (none there, or ``resume`` off). A checkpoint of another run is refused
    when resuming, so a finished run is never silently overwritten by a different one."""
    path = Path(out_dir) / CHECKPOINT
    if not resume or not path.exists():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck.get("digest") != identity:
        raise RuntimeError(f"{path} was written by a different run (configuration, model weights or image "
                           f"files differ); use another output_dir, or delete the checkpoint to start over")
    return ck
