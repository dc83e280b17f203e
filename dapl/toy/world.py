"""A procedural multi-domain image world shaped like Office-Home, drawn with Pillow and numpy.

The same class geometry (``shapes.py``) is rendered in four styles whose differences mirror Office-Home's:
painterly ``art``, flat outlined ``clipart``, ``product`` shots centred on white with a shadow, and cluttered
photo-like ``real`` scenes. Every image comes from its own seeded generator, so the written world is
byte-identical for a seed whatever the process pool's scheduling, and pretraining can draw fresh images from
a separate stream that never reproduces a benchmark image.
"""

from __future__ import annotations

import colorsys
import functools
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dapl.toy.shapes import SHAPES, Part

TOY_CLASSES: tuple[str, ...] = tuple(SHAPES)
TOY_DOMAINS: tuple[str, ...] = ("art", "clipart", "product", "real")

# Photographs show objects in their usual colours (each class has a typical hue), paintings in the painter's
# palette: P(main colour = the class's typical hue) per domain. A mild cue (measured: shape dominates), so
# colour alone never decides a class.
CLASS_HUES: tuple[float, ...] = tuple(i / len(TOY_CLASSES) for i in range(len(TOY_CLASSES)))
COLOUR_PRIOR: dict[str, float] = {"real": 0.95, "product": 0.95, "clipart": 0.5, "art": 0.0}
# Depiction conventions differ by medium: P(the class's second depiction: sunglasses for "glasses", a teacup
# for "mug" ...) per domain. The labels follow the broad category everywhere, as Office-Home's do. The benchmark's
# photographs never show the second depiction (the pretraining stream does, captioned by its specific name), so
# labelled photos cannot teach a prompt that a drawn teacup is a "mug": only the drawings themselves (their
# pseudo-labels and a drawing-specific context) can. With photos at 0.25-0.3 the source taught it, and prompts
# learned on a photo source alone beat DAPL on drawings by up to 30 points (measured: real->art 93.8 vs 60.9).
DEPICTION_B: dict[str, float] = {"real": 0.0, "product": 0.0, "clipart": 0.6, "art": 0.7}

# Stream tags keep the benchmark world and the pretraining sampler apart even for equal integer seeds.
WORLD_STREAM = 0
PRETRAIN_STREAM = 1
_PNG_COMPRESS_LEVEL = 6
_SUPERSAMPLE = 2

RGB = tuple[int, int, int]


def class_display_name(folder: str) -> str:
    return folder.replace("_", " ")


def image_rng(
    seed: int, domain: str, class_idx: int, idx: int, stream: int = WORLD_STREAM
) -> np.random.Generator:
    """The generator of one image: independent of generation order, so parallel output is deterministic."""
    return np.random.default_rng([seed, stream, TOY_DOMAINS.index(domain), class_idx, idx])


# ----------------------------------------------------------------------------------------------- colours
def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


_CLIPART_HUES = (0.0, 0.07, 0.13, 0.3, 0.5, 0.58, 0.66, 0.78, 0.9)


def _palette(domain: str, rng: np.random.Generator, hue: float | None) -> dict[str, RGB]:
    u = rng.uniform
    if domain == "clipart":
        h1, h2 = rng.choice(_CLIPART_HUES, 2, replace=False) + u(-0.02, 0.02, 2)
        h1 = h1 if hue is None else hue
        return {
            "main": _hsv(h1, u(0.75, 1.0), u(0.85, 1.0)),
            "second": _hsv(h2, u(0.6, 0.9), u(0.7, 0.95)),
            "dark": _hsv(u(0, 1), 0.1, u(0.15, 0.3)),
            "light": _hsv(u(0.5, 0.6), u(0.0, 0.15), 1.0),
            "accent": _hsv(u(0.1, 0.16), 0.9, 1.0),
            "green": _hsv(u(0.27, 0.36), 0.85, u(0.65, 0.85)),
        }
    sat, val = ((0.3, 0.7), (0.3, 0.75)) if domain == "art" else ((0.3, 0.9), (0.45, 0.95))
    h1, h2 = u(0, 1) if hue is None else hue, u(0, 1)
    return {
        "main": _hsv(h1, u(*sat), u(*val)),
        "second": _hsv(h2, u(sat[0] * 0.7, sat[1] * 0.8), u(0.3, 0.8)),
        "dark": _hsv(u(0, 1), u(0.0, 0.2), u(0.1, 0.35)),
        "light": _hsv(u(0.5, 0.65), u(0.0, 0.2), u(0.8, 0.97)),
        "accent": _hsv(u(0.06, 0.17), u(0.6, 0.9), u(0.8, 1.0)),
        "green": _hsv(u(0.24, 0.4), u(0.4, 0.8), u(0.3, 0.7)),
    }


# ------------------------------------------------------------------------------------------------- poses
@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    half: float  # half the object's extent, pixels
    angle: float
    flip: bool
    sx: float
    sy: float

    def apply(self, pts: np.ndarray) -> np.ndarray:
        p = pts * np.array([self.sx * (-1.0 if self.flip else 1.0), self.sy])
        c, s = np.cos(self.angle), np.sin(self.angle)
        p = p @ np.array([[c, s], [-s, c]])
        return p * self.half + np.array([self.cx, self.cy])


def _pose(
    rng: np.random.Generator, canvas: int, scale: tuple[float, float], max_deg: float, jitter: float
) -> _Pose:
    half = rng.uniform(*scale) * canvas / 2
    room = max(canvas / 2 - half * 0.9, 0.0) * jitter
    return _Pose(
        cx=canvas / 2 + rng.uniform(-room, room),
        cy=canvas / 2 + rng.uniform(-room, room),
        half=half,
        angle=np.deg2rad(rng.uniform(-max_deg, max_deg)),
        flip=bool(rng.random() < 0.5),
        sx=rng.uniform(0.85, 1.15),
        sy=rng.uniform(0.85, 1.15),
    )


# ------------------------------------------------------------------------------------------------ drawing
def _xy(p: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in p]


def _draw_object(
    layer: Image.Image,
    parts: list[Part],
    pose: _Pose,
    colours: dict[str, RGB],
    rng: np.random.Generator,
    outline: RGB | None = None,
    outline_px: float = 0.0,
    wobble: float = 0.0,
) -> None:
    """Draw the parts onto an RGBA layer (alpha marks the object); ``wobble`` jitters vertices (by hand)."""
    draw = ImageDraw.Draw(layer)
    for part in parts:
        pts = part.pts + (rng.normal(0.0, wobble, part.pts.shape) if wobble else 0.0)
        xy = _xy(pose.apply(pts))
        colour = (*colours[part.role], 255)
        if part.width > 0:
            if part.closed:
                xy = [*xy, xy[0], xy[1]]
            w = max(1, round(part.width * pose.half))
            if outline is not None:
                draw.line(xy, fill=(*outline, 255), width=round(w + 2 * outline_px), joint="curve")
            draw.line(xy, fill=colour, width=w, joint="curve")
        elif outline is not None:
            draw.polygon(xy, fill=colour, outline=(*outline, 255), width=max(1, round(outline_px)))
        else:
            draw.polygon(xy, fill=colour)


@functools.lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return yy, xx


def _shade(layer: Image.Image, pose: _Pose, rng: np.random.Generator, strength: float) -> Image.Image:
    """Directional light across the object so photo-like objects are not flat."""
    a = np.asarray(layer).astype(np.float32)
    yy, xx = _grid(a.shape[0])
    th = rng.uniform(0, 2 * np.pi)
    g = ((xx - pose.cx) * np.cos(th) + (yy - pose.cy) * np.sin(th)) / (pose.half + 1e-6)
    a[..., :3] *= np.clip(1.0 + strength * g, 0.55, 1.35)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGBA")


def _smooth_noise(rng: np.random.Generator, n: int, cells: int, amp: float) -> np.ndarray:
    """Low-frequency noise field (upsampled random grid), for textured walls, canvas and lighting."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
    return (np.asarray(grid.resize((n, n), Image.BICUBIC), np.float32) / 255.0 - 0.5) * 2 * amp


def _random_shape(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, colour: tuple, size: float
) -> None:
    x, y = rng.uniform(0, n, 2)
    r = size * rng.uniform(0.5, 1.0)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        draw.rectangle([x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r], fill=colour)
    elif kind == 1:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == 2:
        a = rng.uniform(0, np.pi)
        draw.line(
            [(x - r * np.cos(a), y - r * np.sin(a)), (x + r * np.cos(a), y + r * np.sin(a))],
            fill=colour,
            width=max(2, int(r / 4)),
        )
    else:
        pts = rng.uniform(-r, r, (3, 2)) + np.array([x, y])
        draw.polygon(_xy(pts), fill=colour)


def _muted(rng: np.random.Generator, sat: float = 0.5) -> RGB:
    return _hsv(rng.uniform(0, 1), rng.uniform(0.05, sat), rng.uniform(0.3, 0.9))


# ------------------------------------------------------------------------------------------------- styles
def _style_real(parts: list[Part], rng: np.random.Generator, n: int, hue: float | None) -> Image.Image:
    wall, floor = _muted(rng, 0.35), _muted(rng, 0.35)
    horizon = int(n * rng.uniform(0.35, 0.8))
    bg = Image.new("RGB", (n, n), wall)
    draw = ImageDraw.Draw(bg)
    draw.rectangle([0, horizon, n, n], fill=floor)
    for _ in range(int(rng.integers(3, 8))):
        _random_shape(draw, rng, n, _muted(rng), n * rng.uniform(0.08, 0.25))
    pose = _pose(rng, n, (0.5, 0.85), 30, 1.0)
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    _draw_object(layer, parts, pose, _palette("real", rng, hue), rng)
    out = Image.alpha_composite(bg.convert("RGBA"), _shade(layer, pose, rng, rng.uniform(0.1, 0.35)))
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(0, 3))):  # small occluders in front
        _random_shape(draw, rng, n, _muted(rng), n * rng.uniform(0.04, 0.1))
    a = np.asarray(out.convert("RGB")).astype(np.float32)
    a *= (1.0 + _smooth_noise(rng, n, 3, rng.uniform(0.1, 0.3)))[..., None]  # uneven lighting
    a += rng.normal(0, rng.uniform(2, 7), a.shape)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))) if rng.random() < 0.3 else img


def _style_product(parts: list[Part], rng: np.random.Generator, n: int, hue: float | None) -> Image.Image:
    white = rng.uniform(236, 255)
    grad = np.linspace(0, rng.uniform(0, 14), n, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(white - grad, (n, n, 3)).astype(np.uint8)
    out = Image.fromarray(np.ascontiguousarray(bg), "RGB").convert("RGBA")
    pose = _pose(rng, n, (0.6, 0.85), 8, 0.15)
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    _draw_object(layer, parts, pose, _palette("product", rng, hue), rng)
    bottom = np.asarray(layer)[..., 3].any(axis=1).nonzero()[0]
    base = float(bottom.max()) if len(bottom) else pose.cy + pose.half
    shadow = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    w, h = pose.half * rng.uniform(0.7, 1.0), n * rng.uniform(0.03, 0.06)
    ImageDraw.Draw(shadow).ellipse(
        [pose.cx - w, base - h, pose.cx + w, base + h], fill=(0, 0, 0, int(rng.integers(70, 140)))
    )
    out = Image.alpha_composite(out, shadow.filter(ImageFilter.GaussianBlur(n * 0.03)))
    out = Image.alpha_composite(out, _shade(layer, pose, rng, rng.uniform(0.05, 0.2)))
    a = np.asarray(out.convert("RGB")).astype(np.float32) + rng.normal(0, 1.5, (n, n, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def _style_clipart(parts: list[Part], rng: np.random.Generator, n: int, hue: float | None) -> Image.Image:
    r = rng.random()
    pastel = _hsv(rng.uniform(0, 1), rng.uniform(0.15, 0.4), 1.0)
    out = Image.new("RGBA", (n, n), (*(pastel if 0.5 <= r < 0.8 else (255, 255, 255)), 255))
    if r >= 0.8:  # a badge behind the object
        m = n * rng.uniform(0.05, 0.15)
        if rng.random() < 0.5:
            ImageDraw.Draw(out).ellipse([m, m, n - m, n - m], fill=(*pastel, 255))
        else:
            ImageDraw.Draw(out).rounded_rectangle([m, m, n - m, n - m], radius=n * 0.15, fill=(*pastel, 255))
    pose = _pose(rng, n, (0.55, 0.85), 20, 0.4)
    colours = _palette("clipart", rng, hue)
    outline_px = rng.uniform(2.0, 4.0) * n / 128
    if rng.random() < 0.3:  # flat drop shadow
        sh = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        grey = {k: (90, 90, 90) for k in colours}
        off = n * 0.03
        _draw_object(
            sh,
            parts,
            _Pose(pose.cx + off, pose.cy + off, pose.half, pose.angle, pose.flip, pose.sx, pose.sy),
            grey,
            rng,
        )
        out = Image.alpha_composite(out, sh)
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    _draw_object(layer, parts, pose, colours, rng, outline=(20, 20, 20), outline_px=outline_px)
    return Image.alpha_composite(out, layer).convert("RGB")


def _style_art(parts: list[Part], rng: np.random.Generator, n: int, hue: float | None) -> Image.Image:
    warm = rng.random() < 0.7
    canvas_hue = rng.uniform(0.05, 0.15) if warm else rng.uniform(0, 1)
    canvas = _hsv(canvas_hue, rng.uniform(0.05, 0.3), rng.uniform(0.7, 0.95))
    out = Image.new("RGBA", (n, n), (*canvas, 255))
    wash = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    for _ in range(int(rng.integers(1, 4))):  # translucent washes of colour behind the subject
        colour = (*_muted(rng), int(rng.integers(60, 140)))
        _random_shape(ImageDraw.Draw(wash), rng, n, colour, n * rng.uniform(0.2, 0.4))
    out = Image.alpha_composite(out, wash)
    pose = _pose(rng, n, (0.55, 0.85), 25, 0.6)
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    soft = (60, 45, 35) if rng.random() < 0.3 else None
    _draw_object(
        layer,
        parts,
        pose,
        _palette("art", rng, hue),
        rng,
        outline=soft,
        outline_px=2.0 * n / 128,
        wobble=0.035,
    )
    out = Image.alpha_composite(out, layer).convert("RGB")
    src = np.asarray(out).astype(np.int16)
    draw = ImageDraw.Draw(out)
    k = int(rng.integers(300, 500))
    angle0 = rng.uniform(0, np.pi)
    xs, ys = rng.integers(0, n, k), rng.integers(0, n, k)
    angles = angle0 + rng.normal(0, 0.5, k)
    lengths = rng.uniform(0.025, 0.07, k) * n
    widths = np.maximum(1, (rng.uniform(0.012, 0.03, k) * n).round()).astype(int)
    jit = rng.integers(-14, 15, (k, 3))
    cols = np.clip(src[ys, xs] + jit, 0, 255).tolist()
    dx, dy = lengths * np.cos(angles) / 2, lengths * np.sin(angles) / 2
    ends = np.stack([xs - dx, ys - dy, xs + dx, ys + dy], axis=1).tolist()
    for (x0, y0, x1, y1), c, w in zip(
        ends, cols, widths.tolist(), strict=True
    ):  # strokes carry the paint under them
        draw.line(((x0, y0), (x1, y1)), fill=tuple(c), width=w)
    a = np.asarray(out.filter(ImageFilter.GaussianBlur(n * 0.004))).astype(np.float32)
    a *= np.array([1.04, 1.0, 0.9], np.float32) * (1.0 + _smooth_noise(rng, n, 24, 0.05))[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


_STYLES = {"art": _style_art, "clipart": _style_clipart, "product": _style_product, "real": _style_real}


def render_variant(
    class_idx: int, domain: str, rng: np.random.Generator, size: int = 64, p_other: float | None = None
) -> tuple[Image.Image, int]:
    """Draw one ``size``-px RGB image of class ``TOY_CLASSES[class_idx]`` in ``domain``'s style; also say
    which depiction (0 usual, 1 other) it shows, which the pretraining captions need. ``p_other`` overrides
    the domain's share of second depictions (``DEPICTION_B``).

    Drawn at twice the size and box-reduced, for anti-aliased edges at no real cost.
    """
    variant = int(rng.random() < (DEPICTION_B[domain] if p_other is None else p_other))
    parts = SHAPES[TOY_CLASSES[class_idx]][variant](rng)
    typical = rng.random() < COLOUR_PRIOR[domain]
    hue = CLASS_HUES[class_idx] + rng.normal(0.0, 0.02) if typical else None
    img = _STYLES[domain](parts, rng, size * _SUPERSAMPLE, hue)
    return img.reduce(_SUPERSAMPLE), variant


def render(class_idx: int, domain: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Draw one ``size``-px RGB image of class ``TOY_CLASSES[class_idx]`` in ``domain``'s style."""
    return render_variant(class_idx, domain, rng, size)[0]


def render_batch(
    seed: int,
    labels: np.ndarray,
    domains: np.ndarray,
    start: int,
    size: int = 64,
    stream: int = PRETRAIN_STREAM,
    p_other: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, size, size, 3) uint8 and their depictions (N,) for pretraining: image ``start + i`` of the
    stream has its own RNG."""
    out = np.empty((len(labels), size, size, 3), np.uint8)
    variants = np.empty(len(labels), np.int64)
    for i, (c, d) in enumerate(zip(labels, domains, strict=True)):
        dom = TOY_DOMAINS[int(d)]
        rng = image_rng(seed, dom, int(c), start + i, stream)
        img, variants[i] = render_variant(int(c), dom, rng, size, None if p_other is None else p_other[dom])
        out[i] = np.asarray(img)
    return out, variants


# ------------------------------------------------------------------------------------------------- writing
def _write_cell(args: tuple[str, int, str, int, int, int]) -> int:
    root, seed, domain, class_idx, count, size = args
    folder = Path(root) / domain / TOY_CLASSES[class_idx]
    folder.mkdir(parents=True, exist_ok=True)
    keep = set()
    for i in range(count):
        name = f"{i:04d}.png"
        keep.add(name)
        img = render(class_idx, domain, image_rng(seed, domain, class_idx, i), size)
        img.save(folder / name, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, optimize=False)
    for stale in folder.glob("*.png"):  # a previous, larger world must not leak into this one
        if stale.name not in keep:
            stale.unlink()
    return count


def generate_world(
    root: Path,
    seed: int = 0,
    images_per_class: int = 150,
    size: int = 64,
    domains: tuple[str, ...] = TOY_DOMAINS,
    workers: int | None = None,
    progress: str | bool = "auto",
) -> dict:
    """Write ``root/<domain>/<class>/<idx>.png`` for every domain and class; the bytes depend only on
    (seed, images_per_class, size) and the pinned Pillow/numpy/zlib.

    Returns a summary (layout, counts, wall time); nothing besides the images is written.
    """
    unknown = set(domains) - set(TOY_DOMAINS)
    if unknown:
        raise ValueError(f"unknown toy domains {sorted(unknown)}; known: {TOY_DOMAINS}")
    root = Path(root)
    t0 = time.perf_counter()
    jobs = [(str(root), seed, d, c, images_per_class, size) for d in domains for c in range(len(TOY_CLASSES))]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    from dapl.progress import track

    show = {"desc": f"generate toy world in {root}", "unit": "folder", "total": len(jobs), "mode": progress}
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            counts = list(track(pool.map(_write_cell, jobs, chunksize=1), **show))
    else:
        counts = list(track(map(_write_cell, jobs), **show))
    return {
        "root": str(root),
        "seed": seed,
        "size": size,
        "images_per_class": images_per_class,
        "classes": list(TOY_CLASSES),
        "domains": list(domains),
        "counts": {
            d: {TOY_CLASSES[j[3]]: n for j, n in zip(jobs, counts, strict=True) if j[2] == d} for d in domains
        },
        "n_images": int(sum(counts)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
