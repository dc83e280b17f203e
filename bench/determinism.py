"""Do the toy figures depend on the machine? The same planned runs under other CPU conditions, side by side.

Each variant runs ``dapl benchmark -c params.yaml`` in a fresh process (its own feature cache, so extraction is
repeated under the variant too) and the per-run accuracies are compared with the first variant's:

- ``threads=N``: torch's intra-op threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``);
- ``isa=X``: ATen's kernel set (``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``, ``avx512``) and oneDNN's, the
  closest a single machine comes to another CPU kind;
- ``load``: a CPU-bound process on every core beside the run.

    python -m bench.determinism --pairs 'product->art,real->clipart' --methods source_only,dapl \
        --variants base,load,threads=1,isa=default

Prints one markdown table (accuracy per run and variant) and the largest difference to the base variant.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from bench.common import cpu_model, md_table
from dapl.paths import PROJECT_ROOT

ONEDNN_ISA = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}


def _spin(stop: mp.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


@contextlib.contextmanager
def cpu_load(on: bool) -> Iterator[None]:
    """One busy process per core while the block runs (stopped and joined after it)."""
    if not on:
        yield
        return
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(10)


def variant_env(name: str) -> tuple[dict[str, str], bool]:
    env = dict(os.environ)
    if name.startswith("threads="):
        n = name.split("=", 1)[1]
        env |= {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    elif name.startswith("isa="):
        isa = name.split("=", 1)[1]
        env |= {"ATEN_CPU_CAPABILITY": isa, "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA[isa]}
    elif name not in ("base", "load"):
        raise SystemExit(f"unknown variant {name!r}: base, load, threads=N, isa=default|avx2|avx512")
    return env, name == "load"


def run_variant(name: str, args: argparse.Namespace, scratch: Path) -> tuple[dict[str, float], float]:
    env, load = variant_env(name)
    out = scratch / name.replace("=", "_")
    cmd = [sys.executable, "-m", "dapl.cli", "benchmark", "-c", str(PROJECT_ROOT / "params.yaml"),
           "--seeds", args.seeds, "--methods", args.methods, "--runs-dir", str(out / "runs"), "--quiet",
           "--set", f"features.cache_dir={out / 'cache'}"]
    if args.pairs:
        cmd += ["--pairs", args.pairs]
    t0 = time.perf_counter()
    with cpu_load(load):
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, cwd=PROJECT_ROOT)
    if done.returncode:  # its own one-line error is above (stderr is not captured)
        raise SystemExit(f"variant {name}: `dapl benchmark` exited {done.returncode}")
    rows = pl.read_csv(out / "runs" / "benchmark_runs.csv").to_dicts()
    return {f"{r['pair']} {r['method']} seed{r['seed']}": float(r["accuracy"]) for r in rows}, \
        time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.determinism", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="product->art,real->clipart")
    p.add_argument("--methods", default="source_only,dapl")
    p.add_argument("--seeds", default="1")
    p.add_argument("--variants", default="base,load,threads=1,isa=default")
    a = p.parse_args(argv)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dapl-determinism-") as tmp:
        for name in names:
            results[name], secs = run_variant(name, a, Path(tmp))
            print(f"{name}: {len(results[name])} runs in {secs:.0f} s: "
                  + ", ".join(f"{r} {v:.2f}" for r, v in results[name].items()), file=sys.stderr)
    base = results[names[0]]
    rows = [[run, *[f"{results[n][run]:.2f}" if run in results[n] else "" for n in names]] for run in base]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores\n")
    print(md_table(["run", *names], rows))
    for n in names[1:]:
        diff = max(abs(results[n][r] - base[r]) for r in base)
        print(f"\n{n}: largest difference to {names[0]}: {diff:.4f} points"
              f"{' (identical)' if diff == 0 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
