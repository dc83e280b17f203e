"""Where our training step's time goes: phases (annotated in ``dapl.train.TrainStep``) and the heaviest operators."""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from bench.common import md_table
from bench.step import OursStep


def profile_step(step: OursStep, steps: int = 2, top: int = 12) -> tuple[str, str, float]:
    """Returns (phase table, operator table, profiled wall seconds per step) in markdown."""
    step()  # warm-up
    acts = [ProfilerActivity.CPU]
    if step.bundle.device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    cuda = step.bundle.device.type == "cuda"

    def dev_us(e) -> float:
        return float(getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0) or 0.0)

    phases = [e for e in events if e.key.startswith("step:")]
    total = sum(e.cpu_time_total for e in phases) or 1.0
    rows = [[e.key.removeprefix("step: "), f"{e.cpu_time_total / steps / 1e3:.1f}",
             f"{100 * e.cpu_time_total / total:.0f}%"] + ([f"{dev_us(e) / steps / 1e3:.1f}"] if cuda else [])
            for e in sorted(phases, key=lambda e: -e.cpu_time_total)]
    phase_md = md_table(["phase", "CPU ms/step", "share"] + (["CUDA ms/step"] if cuda else []), rows)
    ops = [e for e in events if e.key.startswith("aten::")]
    self_total = sum(e.self_cpu_time_total for e in ops) or 1.0
    ops = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]
    op_rows = [[e.key, e.count // steps, f"{e.self_cpu_time_total / steps / 1e3:.1f}",
                f"{100 * e.self_cpu_time_total / self_total:.0f}%"] for e in ops]
    op_md = md_table(["operator", "calls/step", "self CPU ms/step", "share of op time"], op_rows)
    return phase_md, op_md, total / steps / 1e6
