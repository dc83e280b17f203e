"""kill_rerun.sh's trigger: SIGKILL the flow's process group once one DAPL run has finished and another is
mid-training (a checkpoint at epoch >= 2 and < EPOCHS); prints "<pair folder> <epoch>".

Usage: python scripts/kill_mid_training.py WORKDIR EPOCHS PGID
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch


def main(w: Path, epochs: int, pid: int, timeout: float = 900) -> int:
    end = time.time() + timeout
    while time.time() < end:
        if not Path(f"/proc/{pid}").exists():
            sys.exit("the flow ended before it could be killed")
        runs = list(w.glob("runs/benchmark/*/*/dapl/seed1"))
        done = [d for d in runs if (d / "metrics.json").exists()]
        for d in runs:
            ck = d / "checkpoint.pt"
            if done and not (d / "metrics.json").exists() and ck.exists():
                try:
                    e = torch.load(ck, map_location="cpu", weights_only=False)["epoch"]
                except Exception:  # noqa: BLE001 - being written: look again
                    continue
                if 2 <= e < epochs:
                    os.killpg(pid, 9)
                    print(f"{d.parent.parent.name} {e}")
                    return 0
        time.sleep(0.1)
    sys.exit("timed out waiting for a training to kill")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
