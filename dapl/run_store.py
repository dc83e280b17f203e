"""Finished runs kept by what they computed, so that an identical run is copied instead of trained again.

A run's key is what its result depends on: its config without the output folder, the weights' identity, the
image sets' fingerprints (the checkpoint's own resume check) and the code version. The store sits beside the
feature cache (``<cache>/runs/<key>/``), so the CLI, the flows and the DVC stages of one workdir share it. An
entry is written once and whole (a temporary folder renamed into place); files are copied, never linked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import dapl
from dapl.config import DaplConfig

DAPL_SOURCES = Path(dapl.__file__).resolve().parent
# what a finished run wrote (dapl.stages.write_outputs and the trainer's checkpoint); plots are drawn per label
RESULT_FILES = ("metrics.json", "history.csv", "prompts.safetensors", "prompts.json", "nearest_tokens.json",
                "nearest_tokens.txt", "per_class.csv", "confusion.csv", "checkpoint.pt", "selected/prompts.safetensors",
                "selected/prompts.json")
ORIGIN_FILE = "origin.json"


@functools.cache
def code_version() -> str:
    """``dapl.__version__`` plus a hash of every dapl source and model config: a code edit invalidates caches."""
    h = hashlib.sha256(dapl.__version__.encode())
    for p in sorted(DAPL_SOURCES.rglob("*")):
        if p.suffix in (".py", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(DAPL_SOURCES).as_posix().encode())
            h.update(p.read_bytes())
    return f"{dapl.__version__}+{h.hexdigest()[:12]}"


def run_key(cfg: DaplConfig, model_identity: str, task) -> str:
    """The key of ``cfg``'s run on ``task`` (a :class:`dapl.imageset.AdaptationData`) with that model."""
    from dapl.checkpoint import run_identity  # torch: only once a run is planned, not on the flow's import

    parts = [run_identity(cfg, model_identity, task), code_version()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def store_dir(cfg: DaplConfig) -> Path:
    """``<features.cache_dir>/../runs``: one store per feature cache, hence per workdir."""
    return Path(cfg.features.cache_dir).absolute().parent / "runs"


def fetch(cfg: DaplConfig, key: str) -> tuple[dict, str] | None:
    """Copy the stored result of ``key`` into ``cfg.output_dir``: its ``metrics.json`` and the folder it was
    trained in; None when nothing is stored under ``key``."""
    src = store_dir(cfg) / key
    if not (src / "metrics.json").is_file():
        return None
    out = Path(cfg.output_dir)
    _copy_results(src, out)
    origin = json.loads((src / ORIGIN_FILE).read_text())["output_dir"]
    return json.loads((out / "metrics.json").read_text()), origin


def record(cfg: DaplConfig, key: str) -> None:
    """Keep the finished result in ``cfg.output_dir`` under ``key`` (a key already stored is the same result)."""
    dest = store_dir(cfg) / key
    if (dest / "metrics.json").is_file():
        return
    tmp = dest.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _copy_results(Path(cfg.output_dir), tmp)
    (tmp / ORIGIN_FILE).write_text(json.dumps({"output_dir": Path(cfg.output_dir).absolute().as_posix()}))
    try:
        tmp.rename(dest)
    except OSError:  # another process stored the same key first
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_results(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        f = src / name
        to = dest / name
        if f.is_file() and not f.is_symlink() and not f.parent.is_symlink() and not to.parent.is_symlink():
            to.parent.mkdir(exist_ok=True)
            shutil.copyfile(f, to)
