"""Level 0 of the test pyramid: the transforms are exact, in rationals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tvm_winograd.transforms import (
    ALPHA_MAX, default_points, exact_matrices, transform_norm, verify_exact_1d, verify_exact_2d,
    winograd_matrices,
)

SUPPORTED = [(m, r) for m in range(2, 9) for r in range(2, 8) if m + r - 1 <= ALPHA_MAX]


@pytest.mark.parametrize("m,r", SUPPORTED)
def test_exact_1d_and_2d_identity(m, r):
    """A_T[(G g) . (B_T d)] and the nested 2D form equal direct correlation exactly (Fractions)."""
    assert verify_exact_1d(m, r, trials=4, seed=m * 10 + r)
    assert verify_exact_2d(m, r, trials=1, seed=m * 10 + r)


def test_identity_detects_a_wrong_matrix():
    """The exactness check can fail: perturb one entry of B_T and it must report False."""
    mats = exact_matrices(2, 3)
    bad_b_t = list(map(list, mats.B_T))
    bad_b_t[1][1] += Fraction(1, 7)
    import tvm_winograd.transforms as t

    original = t._build
    try:
        t._build = lambda m, r, pts: t.WinogradMatrices(m, r, pts, mats.A_T, mats.G,
                                                         tuple(map(tuple, bad_b_t)))
        assert not verify_exact_1d(2, 3)
    finally:
        t._build = original


def test_f23_with_points_0_1_minus1_is_lavin_gray():
    """F(2,3) with points (0, 1, -1) is Lavin & Gray's published F(2,3) (their infinity row has the
    opposite sign: the last column of A_T and last row of B_T are negated together)."""
    a_t, g, b_t = winograd_matrices(2, 3, points=[0, 1, -1], exact=True)
    lavin_a_t = [[1, 1, 1, 0], [0, 1, -1, -1]]
    lavin_g = [[1, 0, 0], [Fraction(1, 2)] * 3, [Fraction(1, 2), Fraction(-1, 2), Fraction(1, 2)], [0, 0, 1]]
    lavin_b_t = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    flip = [1, 1, 1, -1]
    assert [[v * flip[j] for j, v in enumerate(row)] for row in a_t] == lavin_a_t
    assert [list(row) for row in g] == lavin_g
    assert [[v * flip[i] for v in row] for i, row in enumerate(b_t)] == lavin_b_t


def test_exact_returns_fractions_and_float_matches():
    a_t, g, b_t = winograd_matrices(4, 3, exact=True)
    assert all(isinstance(v, Fraction) for row in g for v in row)
    fa, fg, fb = winograd_matrices(4, 3)
    assert fa.shape == (4, 6) and fg.shape == (6, 3) and fb.shape == (6, 6)
    np.testing.assert_array_equal(fg, np.array([[float(v) for v in row] for row in g]))


def test_default_points_and_user_points_accepted():
    """F(4,3) defaults to our searched (0, 3/2, -3/2, 2/3, -2/3), F(6,3) to Barabasz et al.'s; any other
    distinct points still give exact algorithms."""
    assert default_points(4, 3) == tuple(Fraction(p) for p in ("0", "3/2", "-3/2", "2/3", "-2/3"))
    assert default_points(6, 3) == tuple(Fraction(p) for p in ("0", "-1", "1", "1/2", "-1/2", "2", "-2"))
    assert default_points(2, 5) == tuple(Fraction(p) for p in ("0", "-1", "1", "1/2", "-2"))
    assert verify_exact_2d(4, 3, points=["0", 1, -1.0, Fraction(1, 2), 2], trials=1)


@pytest.mark.parametrize(
    "points,match",
    [
        ([0, 1, -1], "exactly alpha - 1 = 5"),
        ([0, 1, -1, 2, 2], "distinct"),
        ([0, 1, -1, 2, float("inf")], "not finite"),
        ([0, 1, -1, 2, "x"], "bad interpolation points"),
        ([0, 1, -1, 2, None], "not a number"),
    ],
)
def test_bad_points_rejected(points, match):
    with pytest.raises(ValueError, match=match):
        winograd_matrices(4, 3, points=points)


@pytest.mark.parametrize("m,r,match", [(1, 3, "m=1"), (9, 3, "m=9"), (4, 1, "r=1"), (4, 8, "r=8"),
                                       (2.0, 3, "m=2.0"), ("4", 3, "m=.4.")])
def test_bad_sizes_rejected(m, r, match):
    with pytest.raises(ValueError, match=match):
        winograd_matrices(m, r)


def test_transform_norm_grows_with_m():
    """Winograd's error amplification grows with the tile: the source of its accuracy loss."""
    norms = [transform_norm(m, 3) for m in range(2, 9)]
    assert all(a < b for a, b in zip(norms, norms[1:]))
    assert transform_norm(2, 3) > 3  # more than direct correlation's r = 3
