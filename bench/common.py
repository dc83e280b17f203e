"""Shared helpers: the machine, interleaved timing, peak memory from /proc, class names, markdown tables and
the results blocks of docs/PERFORMANCE.md.

Timings on a shared machine drift with the load of other processes, so every comparison is measured side by
side: the paths being compared run in alternating order within each round, and the median over rounds is
reported beside the load average seen during the measurement.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dapl.datasets.registry import OFFICE31_CLASSES, OFFICE_HOME_CLASSES, VISDA_CLASSES, display_name

GIB = 1024**3


# -- machine ----------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def mem_total_gib() -> float:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(m.group(1)) / 1024**2 if m else float("nan")
    except OSError:
        return float("nan")


def machine_info(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on (written into the report)."""
    import open_clip

    info = {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "memory": f"{mem_total_gib():.1f} GiB",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpu"] = "none (CPU run)"
    return info


# -- memory -------------------------------------------------------------------------------------------------------
def rss_gib(field_name: str = "VmRSS") -> float:
    """Resident set size (``VmRSS``) or its peak (``VmHWM``) of this process, from /proc/self/status."""
    m = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024**2 if m else float("nan")


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so RSS reflects live memory: otherwise a
    path measured after a bigger one inherits its high-water mark."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak(device: torch.device) -> bool:
    """Reset the peak-RSS counter (Linux ``clear_refs`` 5) and CUDA's peak statistics; False if RSS can't be."""
    gc.collect()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_gib": rss_gib("VmHWM")}
    if device.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return out


# -- timing -------------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def gflop(fn: Callable[[], object]) -> float:
    """GFLOP that ``fn`` runs in matrix products, convolutions and attention (2 per multiply-add, backward
    included), counted by torch's FlopCounterMode; elementwise work is not counted, so it bounds time from
    below."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@dataclass
class Samples:
    """Wall times of one path over interleaved rounds, with the memory of its (untimed) warm-up run."""

    times: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def spread(self) -> str:
        return f"{min(self.times):.3g}–{max(self.times):.3g}" if self.times else "-"


def interleaved(fns: dict[str, Callable[[], object]], reps: dict[str, int] | int, device: torch.device,
                warmup: bool = True) -> tuple[dict[str, Samples], tuple[float, float, float]]:
    """Run every path ``reps`` times in alternating rounds (order reversed every other round).

    The warm-up run of each path is untimed and measures its peak memory (RSS reset before it). Returns the
    samples and the 1-minute load average at the start and the end, and its maximum over rounds.
    """
    reps_of = reps if isinstance(reps, dict) else dict.fromkeys(fns, reps)
    out = {k: Samples() for k in fns}
    loads = [loadavg()[0]]
    if warmup:
        for k, fn in fns.items():
            reset_peak(device)
            base = rss_gib()
            fn()
            sync(device)
            out[k].memory = {**peak(device), "rss_before_gib": base}
    names = list(fns)
    for r in range(max(reps_of.values())):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            if len(out[k].times) < reps_of[k]:
                out[k].times.append(timed(fns[k], device))
        loads.append(loadavg()[0])
    return out, (loads[0], loads[-1], max(loads))


# -- class names ------------------------------------------------------------------------------------------------
_ADJ = ("small", "old", "red", "wooden", "toy", "broken", "plastic", "striped")


def classnames(K: int) -> list[str]:
    """K realistic class names: the real lists for 12 (VisDA) and 65 (Office-Home); beyond the names stored in
    the registry (DomainNet's 345 come from split files we do not have offline) the pool is extended with
    adjectives, which keeps the 1–4 token lengths of real class names."""
    if len(VISDA_CLASSES) == K:
        return [display_name(c) for c in VISDA_CLASSES]
    if len(OFFICE_HOME_CLASSES) == K:
        return [display_name(c) for c in OFFICE_HOME_CLASSES]
    pool = list(dict.fromkeys(display_name(c) for c in OFFICE_HOME_CLASSES + OFFICE31_CLASSES + VISDA_CLASSES))
    names = list(pool)
    i = 0
    while len(names) < K:
        names.append(f"{_ADJ[(i // len(pool)) % len(_ADJ)]} {pool[i % len(pool)]}")
        i += 1
    return names[:K]


def domain_names(D: int) -> list[str]:
    return ["clipart", "infograph", "painting", "quickdraw", "real", "sketch", "art", "product"][:D] + [
        f"domain{i}" for i in range(8, D)]


# -- output -------------------------------------------------------------------------------------------------------
def md_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    """Human wall time: ms below a second, h/min above an hour."""
    if seconds != seconds:  # nan
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_block(path: Path, tag: str, body: str) -> None:
    """Replace (or append) the ``tag`` block of the report, keeping the hand-written text around it."""
    begin, end = f"<!-- BEGIN bench:{tag} -->", f"<!-- END bench:{tag} -->"
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
