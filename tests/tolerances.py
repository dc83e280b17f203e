"""The one rule for comparing float results in the tests.

Two computations of the same maths in another order (cut vs full sequences, shared prefix, chunking, another
thread count, another batch size) differ by float32 rounding, which grows with the *magnitude of the numbers
involved*, not with each entry: a gradient whose entries reach ~7 differs by ~2e-5 also in its entries near 0.
So an entry passes when ``|actual - expected| <= atol + rtol * max|expected|`` (the scale is the largest
magnitude of the expected tensor, never the entry itself). Bit-identity is asserted only where it holds by
construction (a copy, a lookup, the same computation in the same process with the same thread count).
"""

from __future__ import annotations

import numpy as np
import torch

RTOL = 1e-4  # float32 eps is 1.2e-7: ~800 eps of the scale covers summation-order noise with a wide margin
ATOL = 1e-6  # for results whose scale is ~0


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL, msg: str = "") -> None:
    """Assert ``actual`` equals ``expected`` to ``atol + rtol * max|expected|`` in every entry (same shape)."""
    a, b = _as_tensor(actual), _as_tensor(expected)
    assert a.shape == b.shape, f"{msg} shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() == torch.isfinite(b).all(), f"{msg} non-finite values differ"
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    bound = atol + rtol * scale
    assert diff <= bound, (f"{msg} max |diff| {diff:.3e} > {bound:.3e} "
                           f"(atol {atol:g} + rtol {rtol:g} * scale {scale:.3g})")
