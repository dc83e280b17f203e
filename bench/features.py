"""Feature-extraction throughput: JPEG files -> DataLoader -> frozen image encoder -> fp16 cache on disk.

This is the one-off cost our design pays instead of running the image encoder on every step; it is also the
per-image cost of the released code's every-epoch evaluation. Measured through the real path
(``FeatureCache`` / ``encode_view`` over ``ImageFileDataset``), plus the encoder alone on in-memory tensors to
show how much of it is decoding.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import gflop, interleaved, loadavg, machine_info, md_table, timed, write_block
from dapl.clip import ClipBundle, load_clip
from dapl.config import FeatureConfig, ModelConfig
from dapl.encoder import TORCH_DTYPES, ImageEncoder, cpu_has_native_bf16, resolve_precision
from dapl.features import ENCODE_BATCH, ExtractStats, FeatureCache
from dapl.imageset import ImageSet


def write_jpegs(root: Path, n: int, size: tuple[int, int] = (480, 360), seed: int = 0) -> ImageSet:
    """``n`` smooth random JPEGs (photo-like compressibility) of ``size``; quality 90 like typical datasets."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        p = root / f"c{i % 7}" / f"{i:05d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p.relative_to(root))
    return ImageSet.build(paths, labels=[i % 7 for i in range(n)], domains=0, root=root)


@dataclass
class Throughput:
    model: str
    n_images: int
    test_view_img_s: float  # DataLoader (decode + resize + crop) + encoder, deterministic test view
    train_view_img_s: float  # DataLoader (decode + RandomResizedCrop + flip) + encoder, one augmented view
    encoder_img_s: float  # encoder only, tensors in memory
    workers: int
    batch_size: int
    precision: str = "fp32"  # resolved encoder precision
    loader_share: float = 0.0  # share of the train view's time spent waiting for the DataLoader


def measure(bundle: ClipBundle, model_name: str, n_images: int, workers: int = 2, batch_size: int = 64,
            tmp: Path | None = None, precision: str = "auto", test_view: bool = True) -> Throughput:
    with tempfile.TemporaryDirectory(prefix="dapl-bench-", dir=tmp) as d:
        root = Path(d)
        images = write_jpegs(root / "images", n_images)
        cache = FeatureCache(root / "cache", bundle, batch_size=batch_size, num_workers=workers, precision=precision,
                             memmap=False)
        t_test = float("nan")
        if test_view:
            t = time.perf_counter()
            test = cache.test_features(images)
            t_test = time.perf_counter() - t
            assert test.shape == (n_images, bundle.embed_dim)
        cache.stats = ExtractStats()
        t = time.perf_counter()
        train = cache.train_views(images, 1, FeatureConfig())
        t_train = time.perf_counter() - t
        share = cache.stats.to_dict()["loader_share"]
        assert train.shape == (1, n_images, bundle.embed_dim)
    enc = cache.encoder
    x = torch.randn(ENCODE_BATCH, 3, bundle.image_size, bundle.image_size)
    enc(x)  # warm-up
    t_enc = min(timed(lambda: enc(x), bundle.device) for _ in range(2))
    return Throughput(model_name, n_images, n_images / t_test, n_images / t_train, ENCODE_BATCH / t_enc, workers,
                      batch_size, cache.precision, share)


# -- the compute ceiling -----------------------------------------------------------------------------------
def encoder_gflop(bundle: ClipBundle) -> float:
    """GFLOP of one image through the image tower (the fp32 model: the count does not depend on precision)."""
    x = torch.zeros(1, 3, bundle.image_size, bundle.image_size, device=bundle.device)
    visual = bundle.model.visual.eval()
    with torch.no_grad():
        return gflop(lambda: visual(x))


def matmul_gflops(precision: str, device: torch.device, sizes: tuple[int, ...] = (512, 1024, 2048),
                  reps: int = 5) -> float:
    """Best GFLOP/s of square matrix products at ``precision`` on the current threads (best size, best of
    ``reps``): the dense-compute ceiling that convolutions and the text tower can approach but not pass, as
    they run on the same multiply-add units."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(TORCH_DTYPES[precision])
        b = torch.randn(n, n, device=device).to(TORCH_DTYPES[precision])
        a @ b  # warm-up
        best = max(best, 2 * n**3 / min(timed(lambda a=a, b=b: a @ b, device) for _ in range(reps)) / 1e9)
    return best


# -- threads vs processes for the encoder --------------------------------------------------------------------
def _encoder_worker(args: tuple) -> float:
    """One process: ``threads`` torch threads, ``reps`` encoder batches; returns its own wall time."""
    model_name, precision, threads, reps = args
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bundle = load_clip(ModelConfig(name=model_name, pretrained=None, device="cpu"))
    enc = ImageEncoder(bundle, precision)
    x = torch.randn(ENCODE_BATCH, 3, bundle.image_size, bundle.image_size)
    enc(x)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        enc(x)
    return time.perf_counter() - t


def threads_vs_processes(model_name: str, precision: str, reps: int = 3) -> list[tuple[str, float]]:
    """Aggregate encoder images/s for 1 process × 1 thread, 1 × 2 threads and 2 processes × 1 thread (the
    processes start together after their warm-up is excluded from their own timing)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = []
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        with ctx.Pool(procs) as pool:
            times = pool.map(_encoder_worker, [(model_name, precision, threads, reps)] * procs)
        out.append((f"{procs} process{'es' if procs > 1 else ''} × {threads} thread{'s' if threads > 1 else ''}",
                    procs * reps * ENCODE_BATCH / max(times)))
    return out


# -- BatchNorm folding at reduced precision ------------------------------------------------------------
def fold_gain(bundle: ClipBundle, precision: str, rounds: int = 6) -> tuple[float, float]:
    """Encoder-alone images/s without and with the BatchNorms folded (``dapl.encoder.fold_batchnorm``),
    interleaved in one process (the order swaps every round), medians over rounds."""
    plain = ImageEncoder(bundle, precision, fold_bn=False)
    folded = ImageEncoder(bundle, precision)
    x = torch.randn(ENCODE_BATCH, 3, bundle.image_size, bundle.image_size)
    s, _ = interleaved({"plain": lambda: plain(x), "folded": lambda: folded(x)}, rounds, bundle.device)
    return ENCODE_BATCH / s["plain"].median, ENCODE_BATCH / s["folded"].median


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--model", default="RN50-quickgelu")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-processes", action="store_true")
    p.add_argument("--out", default="docs/PERFORMANCE.md")
    p.add_argument("--tag", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.features``: extraction throughput, fp32 path vs ``auto`` side by side (RN50 train
    view, random weights, JPEG -> cache), the DataLoader's share, decode-once vs per-view decoding, threads vs
    processes for the encoder, and feature cosine of each precision to fp32; written into a block of
    docs/PERFORMANCE.md."""
    a = parse(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bundle = load_clip(ModelConfig(name=a.model, pretrained=None, device=a.device))
    auto = resolve_precision("auto", bundle.device)
    t0 = time.perf_counter()
    body = [extraction_paths(bundle, a, auto), decode_once(bundle, a.images // 2, a.workers),
            precision_cosines(bundle, a.model)]
    if auto != "fp32" and sum(isinstance(m, torch.nn.BatchNorm2d) for m in bundle.model.visual.modules()):
        body.append(folding(bundle, auto))
    if not a.skip_processes:
        body.append(processes(a.model, auto))
    body.append(machine(bundle, t0))
    tag = a.tag or f"extraction-{bundle.device.type}"
    title = f"## Results: {tag} (generated by `bench/features.py`, {time.strftime('%Y-%m-%d %H:%M')})\n\n"
    if a.out:
        write_block(Path(a.out), tag, title + "\n".join(body))
        print(f"written to {a.out} (block '{tag}')")
    return 0


def extraction_paths(bundle: ClipBundle, a: argparse.Namespace, auto: str) -> str:
    """Train-view extraction through the fp32 path and ``auto`` (and bf16 where ``auto`` declined it),
    interleaved over two rounds with the order reversed in the second; the best round is reported."""
    paths = ["fp32", "auto"]
    if auto != "bf16" and bundle.device.type == "cpu" and cpu_has_native_bf16():
        paths.append("bf16")  # auto declined bf16 (accuracy veto): still show what it would give
    res: dict[str, list[Throughput]] = {k: [] for k in paths}
    for r in range(2):
        for prec in (paths if r % 2 == 0 else paths[::-1]):
            tp = measure(bundle, a.model, a.images, a.workers, tmp=None, precision=prec, test_view=False)
            res[prec].append(tp)
            print(f"[extraction] {prec} ({tp.precision}): {tp.train_view_img_s:.2f} img/s train view, "
                  f"loader {100 * tp.loader_share:.0f} %", flush=True)
    best = {k: max(v, key=lambda t: t.train_view_img_s) for k, v in res.items()}
    rows = [[k, t.precision, f"{t.train_view_img_s:.2f}", " / ".join(f"{x.train_view_img_s:.2f}" for x in res[k]),
             f"{t.encoder_img_s:.2f}", f"{100 * t.loader_share:.0f} %"] for k, t in best.items()]
    gain = best["auto"].train_view_img_s / best["fp32"].train_view_img_s
    return "\n".join([
        md_table(["path", "encoder precision", "train view img/s (best)", "runs", "encoder alone img/s",
                  "DataLoader share"], rows),
        f"\n`auto` resolved to **{auto}** here; gain over the fp32 path: **{gain:.2f}×**. Train view of "
        f"{a.images} 480×360 JPEGs → `FeatureCache` (DataLoader with {a.workers} worker(s), fixed encoder "
        f"batches of {ENCODE_BATCH}) → fp16 cache, {a.threads} torch thread(s), random weights; the fp32 "
        "path is the same code at `features.precision=fp32` (contiguous layout for fp32 is not kept: "
        "channels_last is applied to every convolutional tower). DataLoader share = time the encoder "
        "waited for decoded batches / extraction time."])


def decode_once(bundle: ClipBundle, n: int, workers: int) -> str:
    """Decode each image once for its 4 views vs 4 separate passes (the old per-view loop)."""
    with tempfile.TemporaryDirectory(prefix="dapl-bench-") as d:
        images = write_jpegs(Path(d) / "images", n)
        fc = FeatureConfig(views=4)
        times = {}
        for how in ("separately", "together"):
            cache = FeatureCache(Path(d) / how, bundle, num_workers=workers, precision="auto", memmap=False)
            t = time.perf_counter()
            if how == "together":
                cache.train_views(images, 4, fc)
            else:
                for v in range(1, 5):
                    cache.train_views(images, v, fc)
            times[how] = time.perf_counter() - t
            print(f"[decode] 4 views {how}: {times[how]:.1f} s", flush=True)
    return "\n" + md_table(["4 train views of each image", "seconds", "img·views/s"],
                           [[k, f"{v:.1f}", f"{4 * n / v:.2f}"] for k, v in times.items()])


def precision_cosines(bundle: ClipBundle, model: str) -> str:
    """Feature cosine of bf16 and fp16 to fp32 on these random-weight features."""
    with tempfile.TemporaryDirectory(prefix="dapl-bench-") as d:
        images = write_jpegs(Path(d) / "images", 32)
        ref = FeatureCache(Path(d), bundle, num_workers=0, precision="fp32").test_features(images).float()
        rows = []
        for prec in ("bf16", "fp16"):
            f = FeatureCache(Path(d), bundle, num_workers=0, precision=prec).test_features(images).float()
            cos = torch.nn.functional.cosine_similarity(ref, f, dim=-1)
            rows.append([prec, f"{float(cos.min()):.6f}", f"{float(cos.mean()):.6f}",
                         f"{float((1 - cos).max()):.1e}"])
    return "\n" + md_table(["precision", f"cosine to fp32, {model} random weights: min", "mean", "max 1 − cos"],
                           rows)


def folding(bundle: ClipBundle, auto: str) -> str:
    plain, folded = fold_gain(bundle, auto)
    print(f"[fold] {auto} encoder: {plain:.2f} -> {folded:.2f} img/s with BatchNorms folded", flush=True)
    return "\n" + md_table([f"encoder alone at {auto}", "img/s (median of 6, interleaved)"],
                           [["BatchNorm after each convolution", f"{plain:.2f}"],
                            ["BatchNorms folded into the convolutions (what `auto` runs)",
                             f"{folded:.2f} ({folded / plain:.2f}×)"]])


def processes(model: str, auto: str) -> str:
    tvp = threads_vs_processes(model, auto)
    for k, v in tvp:
        print(f"[encoder] {k}: {v:.2f} img/s", flush=True)
    return "\n" + md_table(["encoder at " + auto, "aggregate img/s"], [[k, f"{v:.2f}"] for k, v in tvp])


def machine(bundle: ClipBundle, t0: float) -> str:
    info = machine_info(bundle.device)
    return "\n".join(["\n" + md_table(["machine", ""], [[k, v] for k, v in info.items()]),
                      f"\nFinished in {time.perf_counter() - t0:.0f} s; load average at the end "
                      "{:.2f} {:.2f} {:.2f} (shared 2-core machine).".format(*loadavg())])


if __name__ == "__main__":
    raise SystemExit(main())
