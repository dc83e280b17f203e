"""``python -m bench.gpu_check``: the first step of ``scripts/gpu_check.sh``; it names the CUDA device, or stops
at once on a machine where torch sees none, before any of the 10-minute check is spent.
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch (this script is for a GPU machine)")
    print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
