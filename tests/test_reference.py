"""Level 1: the float64 numpy references agree with each other and with a naive loop oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tvm_winograd.accuracy import direct_error_bound, error_bound
from tvm_winograd.reference import conv2d_direct, conv2d_winograd, winograd_weight_transform
from tvm_winograd.workload import normalize_padding


def naive_conv2d_nchw(x, w, pads, stride, dilation, groups):
    """Seven nested loops, the definition of cross-correlation; independent of conv2d_direct."""
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    wo = (wd + pl + pr - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((n, k, ho, wo))
    kg = k // groups
    for b, o, i, j in itertools.product(range(n), range(k), range(ho), range(wo)):
        g = o // kg
        acc = 0.0
        for ci, a, e in itertools.product(range(cg), range(kh), range(kw)):
            hi, wi = i * stride[0] + a * dilation[0] - pt, j * stride[1] + e * dilation[1] - pl
            if 0 <= hi < h and 0 <= wi < wd:
                acc += x[b, g * cg + ci, hi, wi] * w[o, ci, a, e]
        out[b, o, i, j] = acc
    return out


@pytest.mark.parametrize(
    "stride,dilation,groups,pads",
    [((1, 1), (1, 1), 1, (1, 1, 1, 1)), ((2, 1), (1, 2), 1, (0, 2, 1, 0)), ((1, 2), (2, 1), 2, (2, 1, 0, 3))],
)
def test_direct_matches_naive_loops(rng, stride, dilation, groups, pads):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 4 // groups, 3, 2))
    got = conv2d_direct(x, w, padding=pads, stride=stride, dilation=dilation, groups=groups)
    np.testing.assert_allclose(got, naive_conv2d_nchw(x, w, pads, stride, dilation, groups), rtol=1e-12, atol=1e-12)
    got_nhwc = conv2d_direct(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), padding=pads, stride=stride,
                             dilation=dilation, groups=groups, layout="NHWC")
    np.testing.assert_allclose(got_nhwc.transpose(0, 3, 1, 2), got, rtol=1e-12, atol=1e-12)


CASES = [(m, r) for m in (2, 3, 4, 5, 6, 8) for r in (3, 5, 7) if m + r - 1 <= 14]


@pytest.mark.parametrize("m,r", CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_winograd_reference_equals_direct(rng, m, r, layout):
    """float64 Winograd equals float64 direct within the float64 rounding bounds (odd sizes, asymmetric
    padding)."""
    x = rng.standard_normal((2, 5, 13, 11))
    w = rng.standard_normal((7, 5, r, r))
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    pads = (1, 2, 0, 3)
    direct = conv2d_direct(x, w, padding=pads, layout=layout)
    wino = conv2d_winograd(x, w, m=m, padding=pads, layout=layout)
    # Both are float64 computations: each within its componentwise worst-case bound (accuracy.py; the
    # Winograd one grows with the transform norms, ~1e-10 of max|y| for F(8,7)), so their difference too.
    bound = (error_bound(x, w, m=m, padding=pads, layout=layout, acc_dtype="float64", out_dtype="float64")
             + direct_error_bound(x, w, padding=pads, layout=layout, acc_dtype="float64", out_dtype="float64"))
    err = np.abs(wino - direct)
    assert np.all(err <= bound) and err.max() > 0, float(np.max(err / bound))


def test_weight_transform_layouts_agree(rng):
    w = rng.standard_normal((4, 3, 3, 3))
    np.testing.assert_allclose(winograd_weight_transform(w, 4), winograd_weight_transform(w.transpose(2, 3, 1, 0), 4, "NHWC"))


@pytest.mark.parametrize(
    "padding,expected",
    [(1, (1, 1, 1, 1)), ((1, 2), (1, 2, 1, 2)), ((0, 1, 2, 3), (0, 1, 2, 3)), ("VALID", (0, 0, 0, 0)),
     ("SAME", (1, 1, 1, 1)), ("same", (1, 1, 1, 1))],
)
def test_padding_forms(padding, expected):
    assert normalize_padding(padding) == expected


def test_same_padding_even_kernel_puts_extra_at_bottom_right():
    assert normalize_padding("SAME", (4, 2)) == (1, 0, 2, 1)


@pytest.mark.parametrize("padding,match", [(-1, "negative"), ((1, 2, 3), "1, 2 or 4"), ("FULL", "FULL"),
                                           (1.5, "1.5"), (True, "True")])
def test_bad_padding(padding, match):
    with pytest.raises(ValueError, match=match):
        normalize_padding(padding)
