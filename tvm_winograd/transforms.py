"""Exact Winograd / Cook-Toom transform matrices for F(m, r).

The minimal filtering algorithm F(m, r) computes ``m`` outputs of an ``r``-tap correlation with
``alpha = m + r - 1`` multiplies (Lavin & Gray, 2016)::

    y = A_T [ (G g) ⊙ (B_T d) ]                      (1D)
    Y = A_T [ (G g G_T) ⊙ (B_T d B) ] A              (2D, nested)

Construction (Toom-Cook and the transposition principle).  The linear convolution ``c = g * h`` of
``g`` (length r) and ``h`` (length m) has ``alpha`` coefficients; it is recovered exactly from the
values of ``g`` and ``h`` at ``alpha - 1`` finite points ``a_j`` plus the point at infinity (the
product of the leading coefficients).  With ``E_k`` the ``alpha x k`` evaluation matrix
(``E_k[j, i] = a_j ** i``, last row ``e_{k-1}`` for infinity) and ``M = E_alpha^{-1}``::

    c = M [ (E_r g) ⊙ (E_m h) ]

Transposing this bilinear algorithm in ``h`` gives the correlation::

    y = E_m^T [ (E_r g) ⊙ (M^T d) ]   =>   A_T = E_m^T,  G = D^{-1} E_r,  B_T = D M^T

where the diagonal ``D = diag(f_j)``, ``f_j = prod_{l != j} (a_j - a_l)`` (and 1 for infinity) moves
the Lagrange denominators into ``G`` (as wincnn does), so that the data transform ``B_T`` has small
integer-like entries.  ``G`` is applied to constant weights ahead of time, so its fractions cost nothing.

Everything is built in :class:`fractions.Fraction`; floats are made once, from the exact values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = [
    "M_RANGE",
    "R_RANGE",
    "ALPHA_MAX",
    "WinogradMatrices",
    "default_points",
    "winograd_matrices",
    "exact_matrices",
    "verify_exact_1d",
    "verify_exact_2d",
    "transform_norm",
    "as_float_matrix",
]

#: Output tile sizes and kernel sizes for which matrices can be built.
M_RANGE = range(2, 9)
R_RANGE = range(2, 8)
ALPHA_MAX = 14

# Finite interpolation points, indexed by their count n = alpha - 1.  For n = 3..10 these are the
# points of Barabasz, Anderson, Soodhalter & Gregg, "Error Analysis and Improving the Accuracy of
# Winograd Convolution for Deep Neural Networks" (ACM TOMS 2020, arXiv:1803.10986), Table for
# F(m, 3) with m = n - 1 (also used by TVM's topi/nn/winograd_util.py).  The set for a given alpha is
# what Toom-Cook needs, so the same points serve F(m, r) for every r with m + r - 1 = alpha.
_BARABASZ_POINTS: dict[int, tuple[Fraction, ...]] = {
    n: tuple(Fraction(p) for p in pts)
    for n, pts in {
        1: ["0"],
        2: ["0", "-1"],
        3: ["0", "-1", "1"],
        4: ["0", "-1", "1", "1/2"],
        5: ["0", "-1", "1", "1/2", "-2"],
        6: ["0", "-1", "1", "1/2", "-2", "-1/2"],
        7: ["0", "-1", "1", "1/2", "-1/2", "2", "-2"],
        8: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4"],
        9: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4", "4"],
        10: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4", "3/4", "-4/3"],
        11: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4", "4", "3/4", "-4/3"],
        12: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4", "4", "3/4", "-4/3", "1/4"],
        13: ["0", "-1", "1", "1/2", "-1/2", "2", "-2", "-1/4", "4", "1/4", "-3/4", "4/3", "-4"],
    }.items()
}

# Points found by scripts/search_points.py for F(m, 3): every (alpha - 1)-subset containing 0 of a
# pool of 15 small rationals, scored by the float32 error of one simulated output tile over 64 signed
# N(0, 1) channels, finalists re-scored on 256 tiles.  Kept only where TVM's own compute confirmed the
# gain on a 64-channel 48x48 layer (mean relative error vs float64: F(3,3) 1.56e-7 -> 1.00e-7, F(4,3)
# 1.99e-7 -> 1.35e-7, F(7,3) 2.88e-6 -> 1.78e-6, F(8,3) 6.42e-6 -> 4.32e-6).  F(2,3) and F(6,3):
# Barabasz's points were the best found; F(5,3): the candidate's max error was worse, Barabasz kept.
_SEARCHED_POINTS_R3: dict[int, tuple[Fraction, ...]] = {
    m: tuple(Fraction(p) for p in pts)
    for m, pts in {
        3: ["0", "1", "-1/2", "-2"],
        4: ["0", "3/2", "-3/2", "2/3", "-2/3"],
        7: ["0", "-1", "-1/2", "-2", "1/4", "3/2", "2/3", "4"],
        8: ["0", "1", "-1", "-1/2", "2", "1/4", "-3/2", "2/3", "-4"],
    }.items()
}

Matrix = tuple[tuple[Fraction, ...], ...]


def _check_m_r(m: int, r: int) -> None:
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m not in M_RANGE:
        raise ValueError(f"tile size m={m!r} is not supported: m must be an integer in 2..8")
    if not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r not in R_RANGE:
        raise ValueError(f"kernel size r={r!r} is not supported: r must be an integer in 2..7")
    if m + r - 1 > ALPHA_MAX:
        raise ValueError(
            f"F({m}, {r}) has alpha = m + r - 1 = {m + r - 1} > {ALPHA_MAX}: too inaccurate to build"
        )


def default_points(m: int, r: int) -> tuple[Fraction, ...]:
    """The ``alpha - 1`` finite interpolation points used when none are given: our searched points
    for F(3,3), F(4,3), F(7,3), F(8,3), else Barabasz et al.'s."""
    _check_m_r(m, r)
    if r == 3 and m in _SEARCHED_POINTS_R3:
        return _SEARCHED_POINTS_R3[m]
    return _BARABASZ_POINTS[m + r - 2]


def _as_fraction(p: object) -> Fraction:
    if isinstance(p, Fraction):
        return p
    if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
        return Fraction(int(p))
    if isinstance(p, str):
        return Fraction(p)
    if isinstance(p, (float, np.floating)):
        if not np.isfinite(p):
            raise ValueError(f"interpolation point {p!r} is not finite")
        # A float is taken at its exact binary value; 0.5 is 1/2, 0.1 is not 1/10.
        return Fraction(float(p))
    raise ValueError(f"interpolation point {p!r} is not a number")


def _validate_points(m: int, r: int, points: Sequence[object]) -> tuple[Fraction, ...]:
    n = m + r - 2
    try:
        pts = tuple(_as_fraction(p) for p in points)
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"bad interpolation points {list(points)!r}: {err}") from None
    if len(pts) != n:
        raise ValueError(
            f"F({m}, {r}) needs exactly alpha - 1 = {n} finite interpolation points "
            f"(infinity is added), got {len(pts)}: {[str(p) for p in pts]}"
        )
    if len(set(pts)) != len(pts):
        dup = sorted({str(p) for p in pts if pts.count(p) > 1})
        raise ValueError(f"interpolation points must be distinct, repeated: {dup}")
    return pts


def _evaluation_matrix(points: Sequence[Fraction], k: int) -> list[list[Fraction]]:
    """``alpha x k``: rows ``[1, a, a^2, ..., a^(k-1)]`` per point, then ``e_{k-1}`` (infinity)."""
    rows = [[p**i for i in range(k)] for p in points]
    rows.append([Fraction(0)] * (k - 1) + [Fraction(1)])
    return rows


def _inverse(mat: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse in rationals."""
    n = len(mat)
    aug = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(mat)]
    for col in range(n):
        pivot = next((i for i in range(col, n) if aug[i][col] != 0), None)
        if pivot is None:  # cannot happen for distinct points (Vandermonde)
            raise AssertionError("singular evaluation matrix")
        aug[col], aug[pivot] = aug[pivot], aug[col]
        inv_p = 1 / aug[col][col]
        aug[col] = [v * inv_p for v in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[col])]
    return [row[n:] for row in aug]


@dataclass(frozen=True)
class WinogradMatrices:
    """The three matrices of F(m, r) and the points that made them."""

    m: int
    r: int
    points: tuple[Fraction, ...]
    A_T: Matrix  # m x alpha
    G: Matrix  # alpha x r
    B_T: Matrix  # alpha x alpha

    @property
    def alpha(self) -> int:
        return self.m + self.r - 1

    def as_float(self, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(A_T, G, B_T)`` as numpy arrays, each entry rounded once from its exact value."""
        return tuple(as_float_matrix(mat, dtype) for mat in (self.A_T, self.G, self.B_T))  # type: ignore[return-value]


def as_float_matrix(mat: Sequence[Sequence[object]], dtype: str = "float64") -> np.ndarray:
    """An exact (Fraction) matrix as a numpy array: each entry rounded once to float64, then cast to
    ``dtype``."""
    return np.array([[float(v) for v in row] for row in mat], dtype="float64").astype(dtype)


@lru_cache(maxsize=None)
def _build(m: int, r: int, points: tuple[Fraction, ...]) -> WinogradMatrices:
    alpha = m + r - 1
    n = alpha - 1
    e_m = _evaluation_matrix(points, m)
    e_r = _evaluation_matrix(points, r)
    inv = _inverse(_evaluation_matrix(points, alpha))  # M
    f = [Fraction(1)] * alpha
    for j in range(n):
        prod = Fraction(1)
        for l in range(n):
            if l != j:
                prod *= points[j] - points[l]
        # |f_j|, as wincnn normalizes row 0: the sign cancels between G and B_T, and positive
        # denominators give the textbook matrices (e.g. Lavin & Gray's F(2, 3) for points 0, 1, -1).
        f[j] = abs(prod)
    a_t = tuple(tuple(e_m[j][i] for j in range(alpha)) for i in range(m))
    g = tuple(tuple(e_r[j][k] / f[j] for k in range(r)) for j in range(alpha))
    b_t = tuple(tuple(f[j] * inv[t][j] for t in range(alpha)) for j in range(alpha))
    return WinogradMatrices(m, r, points, a_t, g, b_t)


def exact_matrices(m: int, r: int, points: Sequence[object] | None = None) -> WinogradMatrices:
    """Build F(m, r) in rationals; ``points`` are the ``alpha - 1`` finite points (default: Barabasz)."""
    _check_m_r(m, r)
    pts = default_points(m, r) if points is None else _validate_points(m, r, points)
    return _build(int(m), int(r), pts)


def winograd_matrices(
    m: int, r: int, points: Sequence[object] | None = None, exact: bool = False
) -> tuple:
    """``(A_T, G, B_T)`` of F(m, r).

    Parameters
    ----------
    m, r
        Output tile size (2..8) and kernel size (2..7), with ``alpha = m + r - 1 <= 14``.
    points
        ``alpha - 1`` distinct finite interpolation points (ints, Fractions, strings like ``"1/2"`` or
        floats taken at their exact binary value).  The point at infinity is always added.
    exact
        ``True``: tuples of :class:`~fractions.Fraction`.  ``False``: float64 numpy arrays.
    """
    mats = exact_matrices(m, r, points)
    if exact:
        return mats.A_T, mats.G, mats.B_T
    return mats.as_float("float64")


def _matmul(a: Sequence[Sequence[Fraction]], b: Sequence[Sequence[Fraction]]) -> list[list[Fraction]]:
    return [[sum((x * y for x, y in zip(row, col)), Fraction(0)) for col in zip(*b)] for row in a]


def _transpose(a: Sequence[Sequence[Fraction]]) -> list[list[Fraction]]:
    return [list(c) for c in zip(*a)]


def verify_exact_1d(
    m: int, r: int, points: Sequence[object] | None = None, trials: int = 8, seed: int = 0
) -> bool:
    """Prove ``A_T[(G g) ⊙ (B_T d)]`` equals the direct correlation exactly, on random integers."""
    mats = exact_matrices(m, r, points)
    rng = random.Random(seed)
    for _ in range(trials):
        g = [Fraction(rng.randint(-9, 9)) for _ in range(r)]
        d = [Fraction(rng.randint(-9, 9)) for _ in range(mats.alpha)]
        u = [sum((x * y for x, y in zip(row, g)), Fraction(0)) for row in mats.G]
        v = [sum((x * y for x, y in zip(row, d)), Fraction(0)) for row in mats.B_T]
        y = [sum((a * ui * vi for a, ui, vi in zip(row, u, v)), Fraction(0)) for row in mats.A_T]
        direct = [sum((g[k] * d[i + k] for k in range(r)), Fraction(0)) for i in range(m)]
        if y != direct:
            return False
    return True


def verify_exact_2d(
    m: int, r: int, points: Sequence[object] | None = None, trials: int = 2, seed: int = 0
) -> bool:
    """Prove the nested 2D form ``A_T[(G g G_T) ⊙ (B_T d B)]A`` equals 2D correlation exactly."""
    mats = exact_matrices(m, r, points)
    alpha = mats.alpha
    rng = random.Random(seed)
    for _ in range(trials):
        g = [[Fraction(rng.randint(-9, 9)) for _ in range(r)] for _ in range(r)]
        d = [[Fraction(rng.randint(-9, 9)) for _ in range(alpha)] for _ in range(alpha)]
        u = _matmul(_matmul(mats.G, g), _transpose(mats.G))
        v = _matmul(_matmul(mats.B_T, d), _transpose(mats.B_T))
        prod = [[a * b for a, b in zip(ru, rv)] for ru, rv in zip(u, v)]
        y = _matmul(_matmul(mats.A_T, prod), _transpose(mats.A_T))
        direct = [
            [
                sum((g[kh][kw] * d[i + kh][j + kw] for kh in range(r) for kw in range(r)), Fraction(0))
                for j in range(m)
            ]
            for i in range(m)
        ]
        if y != direct:
            return False
    return True


def transform_norm(m: int, r: int, points: Sequence[object] | None = None) -> float:
    """Amplification factor ``kappa`` of one 1D Winograd output: the worst-case
    ``sum_j |A_T[i, j]| * ||G[j, :]||_1 * ||B_T[j, :]||_1`` over rows ``i``.

    ``kappa ** 2`` bounds, per unit of ``max|d| * max|g|`` and per input channel, the sum of absolute
    values of every term that a 2D Winograd output adds up.  Direct correlation has ``kappa = r``.
    """
    mats = exact_matrices(m, r, points)
    g1 = [sum(abs(v) for v in row) for row in mats.G]
    b1 = [sum(abs(v) for v in row) for row in mats.B_T]
    return float(max(sum(abs(a) * g1[j] * b1[j] for j, a in enumerate(row)) for row in mats.A_T))
