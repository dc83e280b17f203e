"""Frozen image features, encoded once per augmented view and cached on disk (fp16).

The image encoder is frozen, so a training step never needs it: V random train views and one test view of
every image are encoded once, and reused by every run, seed and prompt setting that shares the model,
transform, encoder precision and image list.

Why the layout is what it is:

- **Deterministic by construction.** The encoder always sees the same batches: images ``[k·B, (k+1)·B)`` of the
  set for a fixed ``encode_batch`` B (part of the key), whatever the DataLoader's batch size or worker count;
  each image's augmentation draws from its own generator, seeded per (image, view), never from the global RNG
  that other threads share. A convolution over 3 images need not round like one over
  4, so this (not the loader settings) is what makes a view bit-identical from run to run on one machine.
- **Resumable at a fine grain.** A view is written in chunks of ``chunk_size`` images (a multiple of B),
  each atomically (temp file + ``os.replace``) into ``<view>.chunks/`` of the content-addressed folder; a rerun
  skips the complete chunks, and a half-written chunk is a temp file no reader ever opens. When every chunk
  of a view is there they are joined, again atomically, into ``<view>.npy``.
- **Shared safely.** A view is extracted under a lock file ``<view>.lock`` (:mod:`dapl.filelock`): processes
  (or threads, hosts on a shared filesystem) that need the same view at once encode it once; the others wait,
  then read the joined ``.npy``.
- **Decoded once.** The train views of an image are produced from one decode (each under its own seed) and
  written to their own chunk files.
- **Precision.** ``fp32``, ``bf16`` or ``fp16`` encoder weights and inputs (``auto``: see
  :func:`resolve_precision`); the resolved precision is part of the key and of ``meta.json``. Reduced
  precisions also fold a ResNet's frozen BatchNorms into its convolutions.
- **Memory-mapped.** Train views can be returned as read-only memory maps, so training at DomainNet scale
  touches only each batch's rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dapl.clip import ClipBundle
from dapl.config import FeatureConfig
from dapl.encoder import ImageEncoder, resolve_precision
from dapl.filelock import exclusive_all
from dapl.imageset import ImageSet
from dapl.progress import Progress
from dapl.transforms import eval_transform, train_transform, transform_identity

# 4: train views drawn from private generators (a cache of format 3 made while other threads used torch's global RNG
# can hold a view of a wrong crop); 3: fixed encoder batches, chunked views, encoder precision in the key
FORMAT_VERSION = "4"
ENCODE_BATCH = 32  # images per encoder call (measured best on CPU for RN50); part of the key
def view_seed(view: int) -> Callable[[int], int]:
    """Per-image augmentation seed of a cached view: independent of worker count and order.

    torch's CPU generator keeps 32 bits of a seed, so the pair is packed into 32 bits: unique for up to
    1,021 views of up to ~4.2 M images.
    """
    return functools.partial(_seed, view=view)


def _seed(index: int, view: int) -> int:
    return (index * 1021 + view) % (1 << 32)


# -- keys and files -------------------------------------------------------------------------------------
def view_key(bundle: ClipBundle, images: ImageSet, transform_id: str, dtype: str = "float16",
              precision: str = "fp32", encode_batch: int = ENCODE_BATCH) -> str:
    """Everything that changes the stored numbers: model, transform, images, storage dtype, encoder precision
    and encoder batch (not the loader's batch size, workers or chunk size, which cannot change them)."""
    # reduced precisions fold a ResNet's BatchNorms (ImageEncoder): their numbers changed, fp32's did not
    encoder = precision if precision == "fp32" else f"{precision}+bnfold"
    parts = [FORMAT_VERSION, bundle.identity, transform_id, images.fingerprint(), dtype, encoder, encode_batch]
    h = hashlib.sha256(json.dumps(parts).encode())
    return h.hexdigest()[:20]


def _tmp_name(path: Path) -> Path:
    """A temp file beside ``path``, private to this process and thread (Prefect runs tasks in threads)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _chunk_name(start: int, stop: int) -> str:
    return f"{start:010d}-{stop:010d}.npy"


class _ViewsDataset(Dataset):
    """Images ``start..stop`` of a set, each decoded once and transformed once per seed: ``([V, C, H, W], i)``."""

    def __init__(self, images: ImageSet, transform: Callable, seed_fns: Sequence[Callable[[int], int] | None],
                 start: int, stop: int):
        self.images, self.transform, self.seed_fns = images, transform, list(seed_fns)
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        from dapl.datasets.loader import load_rgb, seeded

        i = self.start + k
        img = load_rgb(self.images.resolve(i))
        xs = [self.transform(img) if sf is None else self.transform(img, generator=seeded(sf(i)))
              for sf in self.seed_fns]
        return torch.stack(xs), i


class ExtractStats:
    """Where extraction time went (the DataLoader's share is what must stay small)."""

    def __init__(self) -> None:
        self.images = self.encodings = self.chunks = 0
        self.loader_s = self.encode_s = self.write_s = 0.0

    def to_dict(self) -> dict:
        busy = self.loader_s + self.encode_s + self.write_s
        return {"images": self.images, "encodings": self.encodings, "chunks": self.chunks,
                "loader_s": round(self.loader_s, 3), "encode_s": round(self.encode_s, 3),
                "write_s": round(self.write_s, 3),
                "loader_share": round(self.loader_s / busy, 4) if busy else 0.0}


@torch.no_grad()
def encode_range(encoder: ImageEncoder, images: ImageSet, transform: Callable,
                 seed_fns: Sequence[Callable[[int], int] | None], start: int, stop: int, *, batch_size: int = 64,
                 num_workers: int = 2, encode_batch: int = ENCODE_BATCH, dtype: str = "float16",
                 stats: ExtractStats | None = None, on_batch: Callable[[int], None] | None = None
                 ) -> list[np.ndarray]:
    """Views ``seed_fns`` of images ``start..stop`` (``start`` a multiple of ``encode_batch``): one
    ``[stop - start, E]`` array per view. The loader's batches are re-cut into encoder batches aligned to
    multiples of ``encode_batch`` of the whole set, so the numbers do not depend on the loader settings.
    ``on_batch(k)``: told after each encoder batch that ``k`` image views are done (progress)."""
    if start % encode_batch:
        raise ValueError(f"encode_range: start {start} is not a multiple of encode_batch {encode_batch}")
    stats = stats or ExtractStats()
    nv = len(seed_fns)
    ds = _ViewsDataset(images, transform, seed_fns, start, stop)
    # a private generator: a DataLoader without one draws its workers' base seed from the global RNG
    dl = DataLoader(ds, batch_size=max(1, batch_size // nv), shuffle=False, num_workers=num_workers,
                    generator=torch.Generator(), pin_memory=encoder.device.type == "cuda", persistent_workers=False)
    outs: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    have, filled, expect = 0, 0, start
    it = iter(dl)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        stats.loader_s += time.perf_counter() - t0
        if batch is not None:
            x, idx = batch
            if int(idx[0]) != expect:  # the loader must keep the set's order (shuffle=False)
                raise RuntimeError(f"encode_range: expected image {expect}, got {int(idx[0])}")
            expect += len(idx)
            pending.append(x)
            have += len(x)
        while have >= encode_batch or (batch is None and have):
            x = torch.cat(pending) if len(pending) > 1 else pending[0]
            take, rest = x[:encode_batch], x[encode_batch:]
            pending, have = ([rest] if len(rest) else []), len(rest)
            t0 = time.perf_counter()
            for v in range(nv):
                f = encoder(take[:, v]).cpu().numpy()
                if not outs:
                    outs = [np.empty((stop - start, f.shape[1]), dtype) for _ in range(nv)]
                outs[v][filled:filled + len(f)] = f
            stats.encode_s += time.perf_counter() - t0
            filled += len(take)
            if on_batch is not None:
                on_batch(len(take) * nv)
        if batch is None:
            break
    if filled != stop - start:
        raise RuntimeError(f"encode_range: encoded {filled} of {stop - start} images")
    stats.images += filled
    stats.encodings += filled * nv
    return outs


def encode_view(bundle: ClipBundle, images: ImageSet, transform: Callable, seed_fn: Callable[[int], int] | None,
                batch_size: int = 64, num_workers: int = 2, desc: str = "encode", dtype: str = "float16",
                precision: str = "fp32", encode_batch: int = ENCODE_BATCH) -> np.ndarray:
    """One view of every image in memory (no cache): ``[N, E]``."""
    del desc
    enc = ImageEncoder(bundle, precision)
    return encode_range(enc, images, transform, [seed_fn], 0, len(images), batch_size=batch_size,
                        num_workers=num_workers, encode_batch=encode_batch, dtype=dtype)[0]


_DEFAULTS = FeatureConfig()  # FeatureCache's defaults are the config's: one source for both


class FeatureCache:
    """``cache_dir/<key>/{test.npy, view_000.npy, ...}`` with a ``meta.json`` describing the key; views being
    extracted live as ``<view>.chunks/<start>-<stop>.npy`` until complete."""

    def __init__(self, cache_dir: str | Path, bundle: ClipBundle, batch_size: int = _DEFAULTS.batch_size,
                 num_workers: int = _DEFAULTS.num_workers, dtype: str = _DEFAULTS.dtype,
                 precision: str = _DEFAULTS.precision, chunk_size: int = _DEFAULTS.chunk_size,
                 encode_batch: int = ENCODE_BATCH, memmap: bool = _DEFAULTS.memmap, progress: str | bool = "auto"):
        if chunk_size < 1 or encode_batch < 1:
            raise ValueError(f"FeatureCache: chunk_size {chunk_size} and encode_batch {encode_batch} must be >= 1")
        self.dir = Path(cache_dir)
        self.dtype = dtype
        self.bundle = bundle
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = resolve_precision(precision, bundle.device)
        self.encode_batch = encode_batch
        # chunks start on encoder-batch boundaries, so the chunk size never changes the numbers
        self.chunk_size = -(-chunk_size // encode_batch) * encode_batch
        self.memmap = memmap
        self.progress = progress  # a dapl.progress mode: bar on a terminal, paced log lines elsewhere
        self.stats = ExtractStats()
        self._encoder: ImageEncoder | None = None

    @classmethod
    def from_config(cls, fc: FeatureConfig, bundle: ClipBundle, progress: str | bool = "auto") -> FeatureCache:
        """The cache a :class:`~dapl.config.FeatureConfig` describes (every stage must build it this way, so
        that extraction, zero-shot and training agree on the key); ``progress``: a :mod:`dapl.progress` mode."""
        return cls(fc.cache_dir, bundle, fc.batch_size, fc.num_workers, fc.dtype, precision=fc.precision,
                   chunk_size=fc.chunk_size, memmap=fc.memmap, progress=progress)

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = ImageEncoder(self.bundle, self.precision)
        return self._encoder

    def key(self, images: ImageSet, transform_id: str) -> str:
        return view_key(self.bundle, images, transform_id, self.dtype, self.precision, self.encode_batch)

    def _folder(self, images: ImageSet, transform_id: str) -> Path:
        d = self.dir / self.key(images, transform_id)
        d.mkdir(parents=True, exist_ok=True)
        meta = d / "meta.json"
        if not meta.exists():
            tmp = _tmp_name(meta)
            tmp.write_text(json.dumps({"model": self.bundle.identity, "transform": transform_id,
                                       "images": images.fingerprint(), "n": len(images),
                                       "format": FORMAT_VERSION, "dtype": self.dtype,
                                       "precision": self.precision, "encode_batch": self.encode_batch}, indent=1))
            os.replace(tmp, meta)
        return d

    # extraction ----------------------------------------------------------------------------------------
    def _extract(self, folder: Path, images: ImageSet, transform: Callable,
                 jobs: Sequence[tuple[str, Callable[[int], int] | None]], desc: str) -> None:
        """Write ``<stem>.npy`` for every job ``(stem, seed_fn)`` not yet complete, chunk by chunk. Each view is
        extracted under ``<stem>.lock``: a second process (or thread) that needs it waits, then finds it joined."""
        jobs = [(s, sf) for s, sf in jobs if not (folder / f"{s}.npy").exists()]
        if not jobs:
            return
        with exclusive_all([folder / f"{s}.lock" for s, _ in jobs]):
            jobs = [(s, sf) for s, sf in jobs if not (folder / f"{s}.npy").exists()]  # done while we waited?
            if jobs:
                self._extract_locked(folder, images, transform, jobs, desc)

    def _extract_locked(self, folder: Path, images: ImageSet, transform: Callable,
                        jobs: Sequence[tuple[str, Callable[[int], int] | None]], desc: str) -> None:
        n, step = len(images), self.chunk_size
        for s, _ in jobs:
            (folder / f"{s}.chunks").mkdir(exist_ok=True)
        with self._progress(folder, n, [s for s, _ in jobs], desc) as bar:
            for start in range(0, n, step):
                stop = min(n, start + step)
                name = _chunk_name(start, stop)
                # a view joined meanwhile by a concurrent extraction of the same key is done
                todo = [(s, sf) for s, sf in jobs
                        if not (folder / f"{s}.npy").exists() and not (folder / f"{s}.chunks" / name).exists()]
                if not todo:
                    continue
                arrays = encode_range(self.encoder, images, transform, [sf for _, sf in todo], start, stop,
                                      batch_size=self.batch_size, num_workers=self.num_workers,
                                      encode_batch=self.encode_batch, dtype=self.dtype, stats=self.stats,
                                      on_batch=bar.update)
                t0 = time.perf_counter()
                for (s, _), arr in zip(todo, arrays, strict=True):
                    (folder / f"{s}.chunks").mkdir(exist_ok=True)
                    _save_atomic(folder / f"{s}.chunks" / name, arr)
                self.stats.write_s += time.perf_counter() - t0
                self.stats.chunks += len(todo)
        for s, _ in jobs:
            self._join(folder, s, n)

    def _progress(self, folder: Path, n: int, stems: list[str], desc: str) -> Progress:
        """Progress over the image views still to encode (chunks already on disk are not work ahead)."""
        work = 0
        for start in range(0, n, self.chunk_size):
            name = _chunk_name(start, min(n, start + self.chunk_size))
            work += (min(n, start + self.chunk_size) - start) * sum(
                not (folder / f"{s}.chunks" / name).exists() for s in stems)
        views = len(stems)
        ahead = (f"{work // views:,} images × {views} view{'s' if views > 1 else ''}" if work % views == 0
                 else f"{work:,} image views")
        return Progress(work, f"extract {desc}", "img", mode=self.progress, ahead=ahead, leave=False)

    def _join(self, folder: Path, stem: str, n: int) -> None:
        """``<stem>.chunks/*`` -> ``<stem>.npy`` (atomic, streamed through a memory map: no second copy in RAM)."""
        final = folder / f"{stem}.npy"
        parts = folder / f"{stem}.chunks"
        if final.exists():
            return
        bounds = [(a, min(n, a + self.chunk_size)) for a in range(0, n, self.chunk_size)]
        if n == 0:
            _save_atomic(final, np.empty((0, self.bundle.embed_dim), self.dtype))
            return
        tmp = _tmp_name(final)
        try:
            width = np.load(parts / _chunk_name(*bounds[0]), mmap_mode="r").shape[1]
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(n, width))
            for a, b in bounds:
                out[a:b] = np.load(parts / _chunk_name(a, b), mmap_mode="r")
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            if not final.exists():  # not joined by a concurrent extraction of the same view either
                raise
        shutil.rmtree(parts, ignore_errors=True)

    # reading -------------------------------------------------------------------------------------------
    def test_features(self, images: ImageSet, desc: str = "test view") -> torch.Tensor:
        """The deterministic test view: ``[N, E]``."""
        d = self._folder(images, transform_identity(self.bundle, None))
        self._extract(d, images, eval_transform(self.bundle), [("test", None)], desc)
        return torch.from_numpy(np.load(d / "test.npy"))

    def train_views(self, images: ImageSet, views: int, cfg, desc: str = "train views"
                    ) -> torch.Tensor | list[np.ndarray]:
        """``views`` random augmented views (views and chunks already on disk are reused): ``[V, N, E]``, or
        with ``memmap`` a list of V read-only ``[N, E]`` memory maps (training then reads only its rows)."""
        d = self._folder(images, transform_identity(self.bundle, cfg))
        stems = [f"view_{v:03d}" for v in range(views)]
        self._extract(d, images, train_transform(self.bundle, cfg), [(s, view_seed(v)) for v, s in enumerate(stems)],
                      desc)
        if self.memmap:
            return [np.load(d / f"{s}.npy", mmap_mode="r") for s in stems]
        return torch.from_numpy(np.stack([np.load(d / f"{s}.npy") for s in stems]))
