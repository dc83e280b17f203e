"""Project paths, environment defaults and the one file hash: decided here, read everywhere.

The CLI, the Prefect tasks and flows, the DVC stages and the scripts all import these instead of keeping their
own copies, so a folder or a default changes in one place.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
ASSET_DIR = PACKAGE_DIR / "assets"
TOY_CHECKPOINT = ASSET_DIR / "toy-clip.pt"  # the shipped toy CLIP (dvc stage toy_pretrain produces it)
MANIFEST_DIR = Path("artifacts") / "manifests"  # under the working folder
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

# Telemetry off and project-local Prefect state: the same values as scripts/env.sh. Values already in
# the environment (env.sh, CI, the user) win.
ENV_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # dapl's own log lines (progress among them) reach a flow run's log; dapl also logs outside flow runs
    # (the CLI, a test), where Prefect's API handler would otherwise warn once per line
    "PREFECT_LOGGING_EXTRA_LOGGERS": "dapl",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # a Prefect server whose database restarts answers 500 for a few seconds: retried (back-off up to ~1 min)
    # instead of crashing the flow run (docs/SCALE.md)
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
}  # scripts/env.sh also sets HF_HUB_OFFLINE=1 (no download intended there); tests check the two agree


def apply_env_defaults(root: Path = PROJECT_ROOT) -> None:
    """Set :data:`ENV_DEFAULTS` and ``PREFECT_HOME=<root>/.prefect`` where the environment has no value yet.

    Must run before prefect is imported (importing it creates ``$PREFECT_HOME``, default ``~/.prefect``).
    """
    for k, v in {**ENV_DEFAULTS, "PREFECT_HOME": str(root / ".prefect")}.items():
        os.environ.setdefault(k, v)


def looks_like_path(value: str) -> bool:
    """A weights value that names a file (by suffix or a separator), not a tag such as ``openai``."""
    return value.endswith(WEIGHT_SUFFIXES) or "/" in value or os.sep in value


def default_manifest(dataset: str, root: Path, workdir: Path) -> Path:
    """``<workdir>/artifacts/manifests/<dataset>.parquet`` for ``<workdir>/data/<dataset>``; another root gets
    its own file (named by a hash of the root) so two copies of a dataset never share a manifest."""
    folder = workdir / MANIFEST_DIR
    if root.absolute() == (workdir / "data" / dataset).absolute():
        return folder / f"{dataset}.parquet"
    tag = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:8]
    return folder / f"{dataset}-{tag}.parquet"


@functools.lru_cache(maxsize=64)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Content hash (hex sha256) of a file, memoised on path, size and mtime."""
    st = Path(path).stat()
    return _file_sha(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
