"""Processes the multi-process tests start and must see gone: trees, groups, stray Prefect servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def spawn(*args: str, env: dict) -> subprocess.Popen:
    """A process in its own session, in the checkout (its group is stopped at the end, children included)."""
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants ([] once it is gone)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    return []


def alive(pids: set[int]) -> list[str]:
    """The live ones among ``pids`` (zombies awaiting their reaper don't count), with their command lines."""
    left = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
    return left


def servers_below(pids: list[int]) -> list[str]:
    """Prefect/uvicorn servers among the descendants of ``pids`` (a Dask worker without an API starts one)."""
    found = []
    for pid in pids:
        for c in tree(pid)[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                cmd = " ".join(c.cmdline())
                if "uvicorn" in cmd or "prefect.server" in cmd or "server start" in cmd:
                    found.append(cmd[:120])
    return found


def _group_gone(p: subprocess.Popen, seconds: float) -> bool:
    """True once no process of ``p``'s group is left (the leader reaped), False after ``seconds``."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(seconds)
    while time.monotonic() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop_groups(procs: list[subprocess.Popen], grace: float = 30) -> list[int]:
    """SIGTERM each spawned group; returns the groups still alive after ``grace`` s (then SIGKILLed)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    survivors = [p.pid for p in procs if not _group_gone(p, grace)]
    for pgid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return survivors
