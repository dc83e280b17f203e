"""Scaling with the number of classes and domains: step time and peak memory of our training step.

Each configuration gets a fresh learner; its first (untimed) step measures peak memory with the peak-RSS
counter reset just before it. The prompt-token count shows why the cost grows so slowly: a unified context
costs one prefix per domain plus only the class-name/EOT positions per (domain, class).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import Samples, domain_names, interleaved, loadavg, md_table, peak, reset_peak, rss_gib, write_block
from bench.step import OursStep, model_for
from dapl.clip import ClipBundle
from dapl.prompts import PromptLearner

MEMORY_LIMIT_GIB = 24.0


def prompt_tokens(learner: PromptLearner) -> int:
    """Positions the text transformer processes per forward (prefixes once + packed suffixes, or cut rows)."""
    K, D = learner.n_classes, learner.n_domains
    if learner.shares_prefix:
        prefix, suffix, eot = learner.shared_parts()
        Lp = prefix.shape[1]
        return prefix.shape[0] * Lp + int((eot - Lp + 1).clamp(1, suffix.shape[2]).sum())
    return D * K * learner.length


def official_tokens(K: int, D: int) -> int:
    """The released structure: (D·K learned + K zero-shot) prompts × 77 positions, twice per step."""
    return 2 * (D * K + K) * 77


@dataclass
class ScalePoint:
    setting: str
    K: int
    D: int
    chunk: int
    tokens: int
    samples: Samples

    @property
    def ok(self) -> bool:
        return self.samples.memory.get("peak_rss_gib", 0.0) < MEMORY_LIMIT_GIB


def auto_chunk(setting: str, K: int, D: int, limit_prompts: int = 1024) -> int:
    """Checkpoint the class-specific encoder in chunks beyond ``limit_prompts`` prompts (bounded memory)."""
    return 512 if setting == "csc" and limit_prompts < K * D else 0


def run_point(bundle: ClipBundle, names: list[str], D: int, setting: str, reps: int) -> ScalePoint:
    full = {"unified": "unified_domain", "csc": "class_specific_domain"}[setting]
    model = model_for(bundle, names, domain_names(D), full)
    chunk = auto_chunk(setting, len(names), D)
    step = OursStep(bundle, model, chunk=chunk)
    samples, _ = interleaved({"step": step}, reps, bundle.device)
    return ScalePoint(setting, len(names), D, chunk, prompt_tokens(model.prompts), samples["step"])


# -- DomainNet scale: memory-mapped cached views ------------------------------------------------------------------
DOMAINNET = {"n": 586_575, "K": 345, "D": 6, "E": 1024, "views": 8}


def write_synthetic_views(folder: Path, n: int, E: int, views: int, block: int = 65_536) -> list[Path]:
    """``views`` fp16 ``[n, E]`` .npy files written with plain file I/O (never mapped here, so the writer's RSS
    stays small); the values only need to be plausible features, so one random block is reused with an offset."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((block, E), dtype=np.float32).astype(np.float16)
    paths = []
    for v in range(views):
        p = folder / f"view_{v:03d}.npy"
        with open(p, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, E)})
            for a in range(0, n, block):
                rows = min(block, n - a)
                f.write(np.roll(base, v + a // block, axis=0)[:rows].tobytes())
        paths.append(p)
    return paths


def domainnet_memmap(bundle: ClipBundle, folder: Path, reps: int = 10, spec: dict | None = None) -> dict:
    """Multi-source training steps (5 sources -> 1 target, K = 345, unified context) over memory-mapped views of
    DomainNet's size: peak RSS and step time. The views are read exactly as ``Trainer`` reads them
    (``CachedViews`` over the cache's memory maps)."""
    import torch

    from dapl.views import CachedViews

    s = {**DOMAINNET, **(spec or {})}
    n, E, V, K, D = s["n"], s["E"], s["views"], s["K"], s["D"]
    if bundle.embed_dim != E:
        raise ValueError(f"domainnet_memmap: the model's embed_dim is {bundle.embed_dim}, not {E}")
    t0 = time.perf_counter()
    paths = write_synthetic_views(folder, n, E, V)
    t_write = time.perf_counter() - t0
    reset_peak(bundle.device)
    before = rss_gib()
    names = [f"class {i}" for i in range(K)]
    model = model_for(bundle, names, domain_names(D), "unified_domain")
    step = OursStep(bundle, model, n_images=64, views=1)
    maps = [np.load(p, mmap_mode="r") for p in paths]
    g = torch.Generator().manual_seed(0)
    step.src, step.tgt = CachedViews(maps, bundle.device), CachedViews(maps, bundle.device)
    step.src_y = torch.randint(K, (n,), generator=g)
    step.src_d = torch.randint(D - 1, (n,), generator=g)
    step.tgt_d = torch.full((n,), D - 1)
    step.n = n
    step()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    lookup = []
    idx = torch.randint(n, (32,), generator=g)
    for _ in range(50):
        t = time.perf_counter()
        step.src(idx, g)
        lookup.append(time.perf_counter() - t)
    return {"images": n, "views": V, "embed_dim": E, "classes": K, "domains": D,
            "views_gib": sum(p.stat().st_size for p in paths) / 1024**3, "write_s": t_write,
            "rss_before_gib": before, **peak(bundle.device), "step_s_median": float(np.median(times)),
            "step_s_min": min(times), "lookup_ms_median": 1e3 * float(np.median(lookup))}


def domainnet_block(r: dict) -> str:
    """The ``domainnet-cpu`` block of docs/PERFORMANCE.md from a :func:`domainnet_memmap` result."""
    rows = [["images × views × E", f"{r['images']:,} × {r['views']} × {r['embed_dim']} (fp16)"],
            ["views on disk", f"{r['views_gib']:.2f} GiB (written in {r['write_s']:.0f} s)"],
            ["classes × domains", f"{r['classes']} × {r['domains']} (5 sources → 1 target, unified context)"],
            ["RSS before the run (model loaded)", f"{r['rss_before_gib']:.2f} GiB"],
            ["peak RSS (steps over memory-mapped views)", f"{r['peak_rss_gib']:.2f} GiB (limit 16 GiB)"],
            ["training step (batch 32 + 32), median / min",
             f"{r['step_s_median']:.2f} s / {r['step_s_min']:.2f} s"],
            ["batch row lookup (32 rows, random views)", f"{r['lookup_ms_median']:.2f} ms"]]
    when = time.strftime("%Y-%m-%d %H:%M")
    return (f"## Results: domainnet-cpu (generated by `bench/scaling.py --domainnet`, {when})"
            "\n\n" + md_table(["DomainNet-scale synthetic run", ""], rows)
            + "\n\nSynthetic fp16 features in `.npy` files (the cache's format), memory-mapped as `Trainer` does "
            "(`CachedViews` over `FeatureCache(memmap=True)` views); RN50 random weights, 1 thread; peak RSS from "
            "VmHWM reset after the files were written, file-backed pages of the maps included. The files were "
            "just written, so the page cache was warm; from a cold disk each row costs a random read. "
            "Load average at the end {:.2f} {:.2f} {:.2f} (shared 2-core machine); the files were deleted.".format(
                *loadavg()))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scaling --domainnet [--dir /tmp]``: the synthetic DomainNet-scale run (files deleted)."""
    import argparse
    import json
    import shutil
    import tempfile

    import torch

    from dapl.clip import load_clip
    from dapl.config import ModelConfig

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--domainnet", action="store_true")
    p.add_argument("--dir", default=None, help="where the ~9.6 GB of synthetic views go (default: the temp dir)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/PERFORMANCE.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bundle = load_clip(ModelConfig(name="RN50-quickgelu", pretrained=None, device="cpu"))
    d = Path(tempfile.mkdtemp(prefix="dapl-domainnet-", dir=a.dir))
    try:
        res = domainnet_memmap(bundle, d, a.reps)
    finally:
        shutil.rmtree(d)
    print(json.dumps(res, indent=1))
    if a.out:
        write_block(Path(a.out), "domainnet-cpu", domainnet_block(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
