"""What every task shares: the project folder, code version, cache keys, file hashes and per-process memos.

Cache keys are built from what a task's output depends on and nothing else — the slice of the config it reads,
the content hashes of its upstream artifacts and the code version — so a rerun (after a crash, or from another
deployment) finds finished work, and a change to any real input invalidates exactly the stages downstream of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dapl.config import DaplConfig
from dapl.paths import PROJECT_ROOT, file_sha256  # noqa: F401  (re-exported: the project's one file hash)
from dapl.run_store import code_version  # the code part of every cache key and of the run store's keys


def results_dir() -> Path:
    """Where task results (and cache records) persist: ``$DAPL_RESULTS_DIR`` or ``<project>/.prefect/results``."""
    env = os.environ.get("DAPL_RESULTS_DIR")
    return Path(env) if env else PROJECT_ROOT / ".prefect" / "results"


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON rendering (sorted keys; paths and other objects as strings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def files_sha256(paths: Iterable[str | Path]) -> str:
    return stable_hash([file_sha256(p) for p in paths])


def task_key(task_name: str, cfg: dict | None, sections: tuple[str, ...], **inputs: Any) -> str:
    """The key of one task invocation: its name, config slice, upstream hashes and the code version."""
    parts: dict[str, Any] = {"task": task_name, "code": code_version(), "inputs": inputs}
    if cfg is not None:
        parts["cfg"] = DaplConfig.model_validate(cfg).digest(*sections)
    return f"{task_name}-{stable_hash(parts)[:32]}"


def key_fn(sections: tuple[str, ...], inputs: tuple[str, ...]) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` over parameter ``cfg`` (those sections) and the named input parameters.

    Parameters left out (MLflow run ids, tracking URIs) do not change what the task computes.
    """

    def fn(context: Any, parameters: dict[str, Any]) -> str:
        return task_key(context.task.name, parameters.get("cfg"), sections,
                         **{k: parameters.get(k) for k in inputs})

    return fn


# -- per-process memos: a model and a manifest are loaded once per worker, not once per task ------------
_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _bundle(model_json: str):
    from dapl.clip import load_clip
    from dapl.config import ModelConfig

    return load_clip(ModelConfig.model_validate_json(model_json))


def clip_bundle(cfg: DaplConfig):
    """The frozen CLIP of ``cfg.model`` (one instance per process; its weights never change)."""
    with _lock:
        return _bundle(cfg.model.model_dump_json())


@functools.lru_cache(maxsize=8)
def _manifest(path: str, sha: str):
    from dapl.datasets.manifest import Manifest

    return Manifest.load(path)


def load_manifest(path: str | Path, sha: str):
    with _lock:
        return _manifest(str(path), sha)


def is_user_error(exc: BaseException) -> bool:
    """What the CLI reports as one line with exit 2: errors whose message says what to change."""
    from dapl.errors import UserError

    return isinstance(exc, UserError | FileNotFoundError | ValueError)


def refuse_user_errors(fn: Callable) -> Callable:
    """Under ``@task``: a user error ends the task Failed with its one-line message (logged once, no traceback);
    bugs keep theirs. Failed states are never cached, so the fixed input runs again."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_user_error(e):
                raise
            from prefect.logging import get_run_logger
            from prefect.states import Failed

            get_run_logger().error("%s", e)
            return Failed(message=str(e), data=e)

    return wrapper


def run_context() -> dict[str, str]:
    """Prefect flow/task run ids (empty strings outside a run): recorded so a result says where it was made."""
    try:
        from prefect.runtime import flow_run, task_run

        return {"flow_run_id": str(flow_run.id or ""), "task_run_id": str(task_run.id or "")}
    except Exception:  # noqa: BLE001 - outside Prefect
        return {"flow_run_id": "", "task_run_id": ""}
