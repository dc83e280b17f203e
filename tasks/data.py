"""Data stages: fetch (retried: downloads fail transiently), index into a manifest, pretrain the toy CLIP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from tasks.common import file_sha256, refuse_user_errors, run_context, stable_hash, task_key


def tree_fingerprint(root: str | Path) -> str:
    """Cheap identity of a folder's files (relative path, size, mtime): the fetch and index cache keys.

    It changes when files are added, removed or rewritten, so a cached fetch never hides deleted data.
    """
    root = Path(root)
    if not root.is_dir():
        return "missing"
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            items.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return stable_hash(items) if items else "empty"


def _fetch_key(context: Any, p: dict[str, Any]) -> str | None:
    """Hit only while the fetched files are still there, unchanged; no key (always run) when they are not."""
    tree = tree_fingerprint(p["root"])
    if tree in ("missing", "empty"):
        return None
    return task_key("fetch", None, (), dataset=p["dataset"], root=str(Path(p["root"]).absolute()),
                     sources=list(p.get("sources") or []), toy=p.get("toy"), tree=tree,
                     check_counts=p.get("check_counts", True))


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry interrupted or corrupted downloads (they resume); not offline/click-through sources, unsafe
    archives or wrong layouts, which fail the same way every time and whose message says what to do."""
    from dapl.datasets.errors import ChecksumError, DatasetError, DatasetUnavailable

    exc = state.data if isinstance(state.data, BaseException) else None
    if isinstance(exc, DatasetUnavailable):
        return str(exc).startswith("downloading")
    if isinstance(exc, ChecksumError):
        return True
    if isinstance(exc, DatasetError):
        return False
    return isinstance(exc, OSError)


@task(name="fetch", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient, cache_key_fn=_fetch_key,
      persist_result=True)
@refuse_user_errors
def fetch(dataset: str, root: str, sources: list[str] | None = None, toy: dict | None = None,
          check_counts: bool = True) -> dict:
    """Put ``dataset`` under ``root`` (the toy world is generated: ``toy`` = {seed, images_per_class, size});
    ``check_counts=False`` accepts a deliberate subset (``data.allow_incomplete``)."""
    from dapl.datasets.fetch import fetch_dataset, generate_toy
    from dapl.datasets.registry import get_spec

    log = get_run_logger()
    if get_spec(dataset).layout == "toy":
        toy = dict(toy or {})
        seed = int(toy.pop("seed", 0))
        generate_toy(root, seed=seed, **toy)
    else:
        fetch_dataset(dataset, root, sources=sources or (), progress=False, check_counts=check_counts)
    log.info("%s is in place at %s", dataset, root)
    return {"dataset": dataset, "root": str(root), "tree": tree_fingerprint(root), **run_context()}


def _index_key(context: Any, p: dict[str, Any]) -> str:
    return task_key("index", None, (), dataset=p["dataset"], root=str(Path(p["root"]).absolute()),
                     out=str(p["out"]), tree=tree_fingerprint(p["root"]), check_counts=p.get("check_counts", True))


@task(name="index", cache_key_fn=_index_key, persist_result=True)
@refuse_user_errors
def index(dataset: str, root: str, out: str, check_counts: bool = True) -> dict:
    """Verify every image and write the polars manifest; its sha256 is the data version downstream."""
    from dapl.datasets.index import index_dataset

    m = index_dataset(dataset, root, progress="log", check_counts=check_counts)
    m.save(out)
    get_run_logger().info("manifest %s: %d usable images, %d excluded", out, m.n_ok, len(m.df) - m.n_ok)
    return {"manifest": str(out), "sha256": file_sha256(out), "domains": list(m.domains),
            "classes": list(m.classes), "n_ok": m.n_ok, "excluded": len(m.df) - m.n_ok, **run_context()}


def _pretrain_key(context: Any, p: dict[str, Any]) -> str:
    return task_key("toy-pretrain", None, (), out=str(p["out"]), overrides=p.get("overrides") or {})


@task(name="toy-pretrain", cache_key_fn=_pretrain_key, persist_result=True)
def toy_pretrain(out: str, overrides: dict | None = None) -> dict:
    """Pretrain the tiny toy CLIP when its checkpoint is missing (the shipped one makes this a no-op)."""
    from dapl.toy.pretrain import ToyPretrainConfig, pretrain_toy_clip

    cfg = ToyPretrainConfig(**{"progress": False, **(overrides or {})})
    metrics = pretrain_toy_clip(Path(out), cfg)
    return {"weights": str(out), "sha256": file_sha256(out), "metrics": metrics, **run_context()}
