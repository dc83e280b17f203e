"""Vector geometry of the toy classes.

Each class has two depictions (its usual one and another convention: a digital alarm clock, a teacup for
"mug", sunglasses for "glasses" ...), each a function ``rng -> list[Part]`` in an object frame of roughly
[-1, 1]² (y points down), with per-instance proportions drawn from ``rng`` so that instances of a class differ
in shape, not only in pose.
The domain styles (``world.py``) decide colours, outlines, shading and texture; the geometry is shared, so a
class looks like the same object in every domain, as in Office-Home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Part:
    """One drawable piece: a filled polygon (``width == 0``) or a polyline ``width`` wide (object units).

    ``role`` names the colour slot ("main", "second", "dark", "light", "accent", "green") a style fills in.
    """

    pts: np.ndarray
    role: str
    width: float = 0.0
    closed: bool = False


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * np.pi, n: int = 20):
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * np.pi - 1e-6)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _pts(*xy: tuple[float, float]) -> np.ndarray:
    return np.array(xy, dtype=float)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def alarm_clock(rng: np.random.Generator) -> list[Part]:
    r = _u(rng, 0.55, 0.68)
    bell = _u(rng, 0.16, 0.26)
    a_h, a_m = rng.uniform(0, 2 * np.pi, 2)
    return [
        Part(_pts((-0.3, 0.55), (-0.5, 0.92)), "dark", 0.1),
        Part(_pts((0.3, 0.55), (0.5, 0.92)), "dark", 0.1),
        Part(_ellipse(-0.45, -0.55, bell, bell, np.pi, 2 * np.pi, 10), "second"),
        Part(_ellipse(0.45, -0.55, bell, bell, np.pi, 2 * np.pi, 10), "second"),
        Part(_ellipse(0.0, 0.08, r, r, n=24), "main"),
        Part(_ellipse(0.0, 0.08, r * 0.75, r * 0.75, n=24), "light"),
        Part(_pts((0, 0.08), (0.28 * np.cos(a_h), 0.08 + 0.28 * np.sin(a_h))), "dark", 0.07),
        Part(_pts((0, 0.08), (0.4 * np.cos(a_m), 0.08 + 0.4 * np.sin(a_m))), "dark", 0.05),
    ]


def bike(rng: np.random.Generator) -> list[Part]:
    wr = _u(rng, 0.3, 0.42)
    hub = 0.35
    top = _u(rng, -0.35, -0.15)
    rear, front, pedal = (-0.58, hub), (0.58, hub), (0.0, hub)
    seat, fork = (-0.18, top), (0.42, top)
    return [
        Part(_ellipse(*rear, wr, wr, n=20), "dark", 0.09, closed=True),
        Part(_ellipse(*front, wr, wr, n=20), "dark", 0.09, closed=True),
        Part(_pts(rear, seat, fork, front), "main", 0.09),
        Part(_pts(rear, pedal, seat), "main", 0.09),
        Part(_pts(pedal, fork), "main", 0.09),
        Part(_pts(fork, (0.36, top - 0.22), (0.55, top - 0.25)), "dark", 0.07),
        Part(_pts((-0.32, top - 0.12), (-0.05, top - 0.12), (-0.1, top - 0.04), (-0.3, top - 0.04)), "dark"),
    ]


def bottle(rng: np.random.Generator) -> list[Part]:
    w, nw = _u(rng, 0.22, 0.36), _u(rng, 0.08, 0.13)
    sh, nk = _u(rng, -0.25, 0.0), _u(rng, -0.6, -0.45)
    return [
        Part(
            _pts((-w, 0.92), (w, 0.92), (w, sh), (nw, nk), (nw, -0.75), (-nw, -0.75), (-nw, nk), (-w, sh)),
            "main",
        ),
        Part(_rect(-nw - 0.02, -0.92, nw + 0.02, -0.75), "dark"),
        Part(_rect(-w, sh + 0.3, w, sh + 0.3 + _u(rng, 0.25, 0.45)), "light"),
    ]


def chair(rng: np.random.Generator) -> list[Part]:
    back = _u(rng, -0.95, -0.6)
    seat = _u(rng, 0.0, 0.15)
    depth = _u(rng, 0.7, 0.95)
    x0 = -depth / 2
    return [
        Part(_pts((x0, back), (x0, 0.92)), "second", 0.11),
        Part(_pts((x0 + depth, seat), (x0 + depth + 0.05, 0.92)), "second", 0.11),
        Part(_pts((x0 + 0.12, seat), (x0 + 0.15, 0.85)), "second", 0.08),
        Part(_rect(x0, seat - 0.12, x0 + depth + 0.05, seat), "main"),
        Part(_rect(x0, back, x0 + 0.2, seat - 0.35), "main"),
    ]


def desk_lamp(rng: np.random.Generator) -> list[Part]:
    ex, ey = _u(rng, -0.5, -0.2), _u(rng, -0.25, 0.1)
    hx, hy = _u(rng, 0.15, 0.4), _u(rng, -0.7, -0.45)
    shade = _pts((hx - 0.15, hy - 0.15), (hx + 0.15, hy - 0.2), (hx + 0.55, hy + 0.3), (hx + 0.05, hy + 0.45))
    return [
        Part(_ellipse(0.0, 0.84, 0.45, 0.1), "dark"),
        Part(_pts((0.0, 0.8), (ex, ey), (hx, hy)), "dark", 0.08),
        Part(_ellipse(hx + 0.33, hy + 0.42, 0.13, 0.1), "light"),
        Part(shade, "main"),
    ]


def flowers(rng: np.random.Generator) -> list[Part]:
    parts = [Part(_pts((-0.3, 0.45), (0.3, 0.45), (0.22, 0.95), (-0.22, 0.95)), "second")]
    n = int(rng.integers(1, 4))
    heads = [(0.0, -0.5)] if n == 1 else [(x, _u(rng, -0.7, -0.3)) for x in np.linspace(-0.5, 0.5, n)]
    stems, blooms = [], []
    for hx, hy in heads:
        stems.append(Part(_pts((0.0, 0.5), (hx * 0.6, (hy + 0.5) / 2), (hx, hy)), "green", 0.07))
        pr = _u(rng, 0.14, 0.2)
        k = int(rng.integers(5, 8))
        for j in range(k):
            a = 2 * np.pi * j / k
            blooms.append(
                Part(_ellipse(hx + pr * np.cos(a), hy + pr * np.sin(a), pr * 0.8, pr * 0.8, n=10), "main")
            )
        blooms.append(Part(_ellipse(hx, hy, pr * 0.65, pr * 0.65, n=10), "accent"))
    return stems + parts + blooms


def glasses(rng: np.random.Generator) -> list[Part]:
    rx, ry = _u(rng, 0.28, 0.4), _u(rng, 0.2, 0.36)
    cx = rx + 0.1
    return [
        Part(_ellipse(-cx, 0.0, rx, ry), "light"),
        Part(_ellipse(cx, 0.0, rx, ry), "light"),
        Part(_ellipse(-cx, 0.0, rx, ry), "main", 0.09, closed=True),
        Part(_ellipse(cx, 0.0, rx, ry), "main", 0.09, closed=True),
        Part(_ellipse(0.0, 0.02, 0.12, 0.1, np.pi, 2 * np.pi, 8), "main", 0.07),
        Part(_pts((-cx - rx, -0.05), (-0.98, -0.25)), "main", 0.07),
        Part(_pts((cx + rx, -0.05), (0.98, -0.25)), "main", 0.07),
    ]


def hammer(rng: np.random.Generator) -> list[Part]:
    hl = _u(rng, 0.45, 0.65)
    hw = _u(rng, 0.1, 0.15)
    return [
        Part(_rect(-hw / 2 - 0.02, -0.6, hw / 2 + 0.02, 0.95), "main"),
        Part(_rect(-hw / 2 - 0.03, 0.45, hw / 2 + 0.03, 0.95), "dark"),
        Part(_pts((-hl, -0.85), (0.2, -0.85), (hl, -0.95), (hl, -0.78), (0.25, -0.6), (-hl, -0.6)), "dark"),
    ]


def laptop(rng: np.random.Generator) -> list[Part]:
    top = _u(rng, -0.9, -0.55)
    depth = _u(rng, 0.3, 0.5)
    return [
        Part(_rect(-0.72, top, 0.72, 0.15), "dark"),
        Part(_rect(-0.62, top + 0.1, 0.62, 0.06), "light"),
        Part(_pts((-0.72, 0.15), (0.72, 0.15), (0.95, 0.15 + depth), (-0.95, 0.15 + depth)), "main"),
        Part(_pts((-0.6, 0.2), (0.6, 0.2), (0.7, 0.1 + depth * 0.7), (-0.7, 0.1 + depth * 0.7)), "second"),
    ]


def mug(rng: np.random.Generator) -> list[Part]:
    w, top = _u(rng, 0.32, 0.5), _u(rng, -0.7, -0.4)
    cx = -0.15
    return [
        Part(_ellipse(cx + w + 0.05, 0.1, 0.28, 0.32, n=16), "main", 0.13, closed=True),
        Part(
            _pts(
                (cx - w, top),
                (cx + w, top),
                (cx + w, 0.68),
                (cx + w - 0.1, 0.8),
                (cx - w + 0.1, 0.8),
                (cx - w, 0.68),
            ),
            "main",
        ),
        Part(_ellipse(cx, top, w, 0.1), "dark"),
        Part(_rect(cx - w, 0.0, cx + w, 0.18), "accent"),
    ]


def scissors(rng: np.random.Generator) -> list[Part]:
    op = _u(rng, 0.05, 0.35)
    lr = _u(rng, 0.16, 0.24)
    piv = (0.0, 0.15)
    return [
        Part(_pts((-0.05, 0.15), (0.05, 0.15), (op + 0.05, -0.92), (op - 0.04, -0.92)), "dark"),
        Part(_pts((0.05, 0.15), (-0.05, 0.15), (-op - 0.05, -0.92), (-op + 0.04, -0.92)), "dark"),
        Part(_pts(piv, (-0.3, 0.5)), "main", 0.09),
        Part(_pts(piv, (0.3, 0.5)), "main", 0.09),
        Part(_ellipse(-0.32, 0.5 + lr, lr, lr * 1.1, n=14), "main", 0.1, closed=True),
        Part(_ellipse(0.32, 0.5 + lr, lr, lr * 1.1, n=14), "main", 0.1, closed=True),
        Part(_ellipse(*piv, 0.06, 0.06, n=8), "light"),
    ]


def umbrella(rng: np.random.Generator) -> list[Part]:
    ry = _u(rng, 0.35, 0.65)
    base = -0.2
    canopy = _ellipse(0.0, base, 0.95, ry, np.pi, 2 * np.pi, 16)
    scallop = [(x, base + 0.08 * abs(np.sin(x * np.pi * 2))) for x in np.linspace(0.95, -0.95, 9)]
    hook = _ellipse(-0.14, 0.75, 0.14, 0.14, 0.0, np.pi, 8)
    return [
        Part(np.concatenate([_pts((0.0, base - ry - 0.15)), _pts((0.0, 0.75)), hook]), "dark", 0.08),
        Part(np.concatenate([canopy, _pts(*scallop)]), "main"),
        Part(_pts((0.0, base - ry), (-0.35, base)), "second", 0.04),
        Part(_pts((0.0, base - ry), (0.35, base)), "second", 0.04),
    ]


# ----------------------------------------------------------------------------------------------------------
# Second depictions: the same class as another convention draws it (a digital clock, a penny-farthing, a
# teacup, a closed umbrella ...). Which depiction a domain favours is a property of the domain (world.py).
def alarm_clock_b(rng: np.random.Generator) -> list[Part]:
    h = _u(rng, 0.35, 0.5)
    parts = [
        Part(_pts((-0.6, h), (-0.7, h + 0.25)), "dark", 0.1),
        Part(_pts((0.6, h), (0.7, h + 0.25)), "dark", 0.1),
        Part(_rect(-0.9, -h, 0.9, h), "main"),
        Part(_rect(-0.75, -h + 0.12, 0.75, h - 0.12), "dark"),
    ]
    for x in (-0.55, -0.2, 0.2, 0.55):  # four seven-segment digits
        w, t = 0.12, h - 0.22
        parts.append(
            Part(
                _pts((x - w, -t), (x + w, -t), (x + w, t), (x - w, t), (x - w, 0.0), (x + w, 0.0)),
                "accent",
                0.05,
            )
        )
    return parts


def bike_b(rng: np.random.Generator) -> list[Part]:
    big = _u(rng, 0.5, 0.62)
    fx, fy = 0.3, 0.92 - big
    return [
        Part(_ellipse(fx, fy, big, big, n=24), "dark", 0.08, closed=True),
        Part(_ellipse(-0.72, 0.74, 0.18, 0.18, n=12), "dark", 0.08, closed=True),
        Part(
            _pts((-0.72, 0.74), (-0.45, fy - big * 0.6), (fx - 0.1, fy - big - 0.1), (fx, fy)), "main", 0.09
        ),
        Part(_pts((fx - 0.1, fy - big - 0.1), (fx + 0.2, fy - big - 0.25)), "dark", 0.07),
        Part(_rect(fx - 0.35, fy - big - 0.22, fx - 0.05, fy - big - 0.12), "dark"),
    ]


def bottle_b(rng: np.random.Generator) -> list[Part]:
    r = _u(rng, 0.45, 0.6)
    cy = 0.92 - r
    return [
        Part(_rect(-0.1, -0.82, 0.1, cy - r * 0.6), "main"),
        Part(_ellipse(0.0, cy, r, r, n=24), "main"),
        Part(_rect(-0.13, -0.95, 0.13, -0.8), "dark"),
        Part(_ellipse(0.0, cy + r * 0.2, r * 0.6, r * 0.35, n=16), "light"),
    ]


def chair_b(rng: np.random.Generator) -> list[Part]:
    arm = _u(rng, 0.2, 0.32)
    top = _u(rng, -0.85, -0.6)
    return [
        Part(_rect(-0.75, 0.5, -0.62, 0.85), "dark"),
        Part(_rect(0.62, 0.5, 0.75, 0.85), "dark"),
        Part(_rect(-0.6, top, 0.6, 0.3), "main"),
        Part(_rect(-0.6 - arm, -0.15, -0.55, 0.55), "second"),
        Part(_rect(0.55, -0.15, 0.6 + arm, 0.55), "second"),
        Part(_rect(-0.58, 0.12, 0.58, 0.55), "second"),
    ]


def desk_lamp_b(rng: np.random.Generator) -> list[Part]:
    w = _u(rng, 0.45, 0.7)
    top = _u(rng, -0.95, -0.75)
    return [
        Part(_ellipse(0.0, 0.86, 0.4, 0.1), "dark"),
        Part(_pts((0.0, 0.85), (0.0, -0.2)), "dark", 0.08),
        Part(_ellipse(0.0, -0.15, w * 0.55, 0.12), "light"),
        Part(_pts((-0.18, top), (0.18, top), (w, -0.15), (-w, -0.15)), "main"),
    ]


def flowers_b(rng: np.random.Generator) -> list[Part]:
    r = _u(rng, 0.22, 0.3)
    cy = _u(rng, -0.5, -0.35)
    k = int(rng.integers(10, 14))
    petals = [
        Part(_ellipse(1.7 * r * np.cos(a), cy + 1.7 * r * np.sin(a), r * 0.75, r * 0.75, n=8), "main")
        for a in np.linspace(0, 2 * np.pi, k, endpoint=False)
    ]
    return [
        Part(_pts((0.0, cy), (0.05, 0.95)), "green", 0.08),
        Part(_ellipse(0.28, 0.45, 0.25, 0.1, n=10), "green"),
        Part(_ellipse(-0.22, 0.25, 0.25, 0.1, n=10), "green"),
        *petals,
        Part(_ellipse(0.0, cy, r * 1.1, r * 1.1, n=16), "dark"),
    ]


def glasses_b(rng: np.random.Generator) -> list[Part]:
    w = _u(rng, 0.3, 0.42)
    drop = _u(rng, 0.35, 0.55)

    def lens(cx: float) -> np.ndarray:
        return _pts((cx - w, -0.2), (cx + w, -0.2), (cx + w * 0.8, 0.1), (cx, drop), (cx - w * 0.8, 0.1))

    return [
        Part(lens(-0.48), "dark"),
        Part(lens(0.48), "dark"),
        Part(_pts((-0.48 - w, -0.22), (0.48 + w, -0.22)), "main", 0.08),
        Part(_pts((-0.48 - w, -0.2), (-0.98, -0.05)), "main", 0.06),
        Part(_pts((0.48 + w, -0.2), (0.98, -0.05)), "main", 0.06),
    ]


def hammer_b(rng: np.random.Generator) -> list[Part]:
    hw, hh = _u(rng, 0.5, 0.7), _u(rng, 0.28, 0.4)
    return [
        Part(_rect(-0.07, -0.5, 0.07, 0.95), "second"),
        Part(_rect(-hw, -0.5 - hh, hw, -0.5 + hh), "main"),
        Part(_ellipse(-hw, -0.5, 0.1, hh, n=12), "dark"),
        Part(_ellipse(hw, -0.5, 0.1, hh, n=12), "dark"),
    ]


def laptop_b(rng: np.random.Generator) -> list[Part]:
    h = _u(rng, 0.55, 0.8)
    return [
        Part(_rect(-0.85, 0.55 - 2 * h + 0.2, 0.85, 0.55), "main"),
        Part(_ellipse(0.0, 0.55 - h + 0.1, 0.14, 0.16, n=14), "light"),
        Part(_rect(-0.95, 0.55, 0.95, 0.68), "dark"),
    ]


def mug_b(rng: np.random.Generator) -> list[Part]:
    w = _u(rng, 0.5, 0.7)
    top = _u(rng, -0.35, -0.15)
    return [
        Part(_ellipse(0.0, 0.68, 0.95, 0.14), "second"),
        Part(_ellipse(w + 0.05, top + 0.3, 0.18, 0.16, n=12), "main", 0.09, closed=True),
        Part(_ellipse(0.0, top, w, 0.75 - top, 0.0, np.pi, 16), "main"),
        Part(_ellipse(0.0, top, w, 0.12), "dark"),
    ]


def scissors_b(rng: np.random.Generator) -> list[Part]:
    ln = _u(rng, 0.8, 0.95)
    lr = _u(rng, 0.15, 0.2)
    return [
        Part(_pts((-0.3, -0.08), (ln, -0.02), (ln, 0.02), (-0.3, 0.08)), "dark"),
        Part(_pts((-0.3, -0.05), (-0.6, -0.3)), "main", 0.09),
        Part(_pts((-0.3, 0.05), (-0.6, 0.3)), "main", 0.09),
        Part(_ellipse(-0.62 - lr, -0.35, lr, lr, n=12), "main", 0.09, closed=True),
        Part(_ellipse(-0.62 - lr, 0.35, lr, lr, n=12), "main", 0.09, closed=True),
    ]


def umbrella_b(rng: np.random.Generator) -> list[Part]:
    w = _u(rng, 0.15, 0.22)
    hook = _ellipse(-0.15, 0.72, 0.15, 0.15, 0.0, np.pi, 8)
    return [
        Part(np.concatenate([_pts((0.0, 0.35), (0.0, 0.72)), hook]), "dark", 0.09),
        Part(_pts((0.0, -0.95), (w, -0.1), (w * 0.7, 0.4), (-w * 0.7, 0.4), (-w, -0.1)), "main"),
        Part(_pts((-w * 0.8, 0.05), (w * 0.8, 0.0)), "second", 0.05),
    ]


_A = (alarm_clock, bike, bottle, chair, desk_lamp, flowers, glasses, hammer, laptop, mug, scissors, umbrella)
_B = (
    alarm_clock_b,
    bike_b,
    bottle_b,
    chair_b,
    desk_lamp_b,
    flowers_b,
    glasses_b,
    hammer_b,
    laptop_b,
    mug_b,
    scissors_b,
    umbrella_b,
)

# class folder name -> (usual depiction, other depiction)
SHAPES: dict[str, tuple[Callable[[np.random.Generator], list[Part]], ...]] = {
    a.__name__: (a, b) for a, b in zip(_A, _B, strict=True)
}
