"""The tile sizes and kernel sizes outside the tuner's candidates (CANDIDATE_TILES = 2, 4, 6 for r = 3, 5):
r = 7, and the odd / large tiles m = 3, 5, 7, 8, built for llvm with the default schedule and run in TVM
against the float64 reference.  The API accepts them (m in 2..8, r in {3, 5, 7}); these tests say they
are right, and which default schedule they get.

Tolerance: the componentwise worst-case rounding bound of :func:`tvm_winograd.accuracy.error_bound`,
per output element from the actual inputs (as in test_compute.py).  Small shapes with H, W not
multiples of m, so that every layer has partial tiles; and the tighter random-sign estimate of
test_export.py (the worst-case bound is 20% of the output scale for F(4,7)).
"""

from __future__ import annotations

import numpy as np
import pytest

import tvm_winograd as tw
from tvm_winograd.accuracy import error_bound
from tvm_winograd.compute import target_config, winograd_func
from tvm_winograd.reference import conv2d_direct
from tvm_winograd.schedule.default import default_schedule_path, schedule_llvm_default
from tvm_winograd.workload import make_spec

from test_export import EPS32, rms_amplification

#: (m, r, layout): r = 7 with two tiles, and m = 3, 5, 7, 8 with r = 3 (alpha up to 10), both layouts.
CASES = [(2, 7, "NCHW"), (4, 7, "NHWC"), (3, 3, "NHWC"), (5, 3, "NCHW"), (7, 3, "NHWC"), (8, 3, "NCHW")]


CHANNELS = 5


def _arrays(signed, layout: str, r: int):
    x, w = signed((1, CHANNELS, 13, 11)), signed((4, CHANNELS, r, r))
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return x, w


@pytest.mark.parametrize("m,r,layout", CASES)
def test_tile_and_kernel_sizes_match_float64(signed, m, r, layout):
    x, w = _arrays(signed, layout, r)
    padding = r // 2
    y = tw.conv2d(x, w, m=m, padding=padding, layout=layout)
    x64, w64 = x.astype("float64"), w.astype("float64")
    ref = conv2d_direct(x64, w64, padding=padding, layout=layout)
    assert y.shape == ref.shape and y.dtype == np.float32
    bound = error_bound(x64, w64, m=m, padding=padding, layout=layout)
    err = np.abs(y.astype("float64") - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"F({m},{r}) {layout}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    # The worst-case bound grows with the transforms' L1 norms (20% of the output scale for F(4,7));
    # the random-sign estimate is the tight check: eps32 kappa sqrt(C r^2) of the output scale (kappa:
    # the RMS amplification of test_export; measured 20-60x below it, a dropped tap is ~1/sqrt(C r^2)).
    estimate = EPS32 * rms_amplification(m, r) * np.sqrt(CHANNELS * r * r)
    assert err.max() <= estimate * np.abs(ref).max(), f"F({m},{r}): {err.max() / np.abs(ref).max():.3g} > {estimate:.3g}"


@pytest.mark.parametrize("m,r,layout", CASES)
def test_tile_and_kernel_sizes_take_the_design_space_default(m, r, layout):
    """The default schedule of these layers is the CPU design space (the fast path), not the fallback."""
    x, w = ((1, 13, 11, 5), (r, r, 5, 4)) if layout == "NHWC" else ((1, 5, 13, 11), (4, 5, r, r))
    spec = make_spec(x, w, padding=r // 2, layout=layout)
    scheduled = schedule_llvm_default(winograd_func(spec, target_config(spec, m, "llvm")))
    assert default_schedule_path(scheduled) == "design_space", scheduled.attrs
