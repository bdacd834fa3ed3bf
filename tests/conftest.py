"""Shared fixtures: seeded generators and the default llvm target."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture
def signed(rng: np.random.Generator):
    """``signed(shape, dtype)``: signed standard-normal data (all-positive inputs would hide
    cancellation error), from the test's seeded generator."""

    def make(shape, dtype: str = "float32") -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    return make


#: Relative shift of one entry of A_T (row 1, the largest: an interpolation point as the inverse
#: transform holds it): 1e-5 moves F(2,3)/F(4,3) fp32 outputs by ~1e-5 of max|y|, below the worst-case
#: bound (~8e-5 / 1e-3 of max) but ~40-140 sigma of the rounding model.
ENTRY_SHIFT = 1e-5
#: The output scale a bug multiplies by (A_T scaled by its square root: Y = A_T M A).
OUTPUT_SCALE = 1 + 1e-3


@pytest.fixture
def inject_transform_bug(monkeypatch):
    """``inject(bug)``: until the test ends, the compute builds with a wrong inverse transform --
    ``"scaled_output"`` (A_T times sqrt(OUTPUT_SCALE): every output scaled by OUTPUT_SCALE) or
    ``"perturbed_entry"`` (one entry of A_T times 1 + ENTRY_SHIFT) -- while references, kernel packs and
    error models keep the right matrices (they read :mod:`tvm_winograd.transforms` directly).  The
    cache of built functions is cleared around it."""
    import math

    from tvm_winograd import api, compute

    exact = compute.winograd_matrices

    def inject(bug: str) -> None:
        def wrong(m, r, points=None):
            a_t, g, b_t = (np.array(mat, dtype=np.float64) for mat in exact(m, r, points))
            if bug == "scaled_output":
                a_t = a_t * math.sqrt(OUTPUT_SCALE)
            elif bug == "perturbed_entry":
                a_t[1, int(np.argmax(np.abs(a_t[1])))] *= 1 + ENTRY_SHIFT
            else:
                raise ValueError(f"bug {bug!r}: expected 'scaled_output' or 'perturbed_entry'")
            return a_t, g, b_t

        monkeypatch.setattr(compute, "winograd_matrices", wrong)
        api._build_cached.cache_clear()

    yield inject
    api._build_cached.cache_clear()
