"""float64 numpy oracles: direct conv2d (any stride, dilation, groups, padding) and Winograd conv2d.

These are the references every test and every tuned schedule is checked against.  They are written
for clarity, not speed: every input is promoted to float64 first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .transforms import winograd_matrices
from .workload import Padding, make_spec

__all__ = ["conv2d_direct", "conv2d_winograd", "conv2d_winograd_abs", "winograd_weight_transform",
           "WinogradStages", "winograd_stages", "to_nchw"]


def to_nchw(x: np.ndarray, w: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, w)`` in NCHW / OIHW: NHWC data and HWIO weights transposed, NCHW ones returned as they are."""
    if layout == "NHWC":
        return x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return x, w


def _from_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    return y.transpose(0, 2, 3, 1) if layout == "NHWC" else y


def conv2d_direct(
    x: np.ndarray,
    w: np.ndarray,
    *,
    padding: Padding = 0,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
) -> np.ndarray:
    """float64 cross-correlation, weights OIHW (NCHW) or HWIO (NHWC); padding as in :func:`make_spec`."""
    spec = make_spec(x.shape, w.shape, padding=padding, stride=stride, dilation=dilation,
                     groups=groups, layout=layout, dtype="float64")
    xn, wn = to_nchw(np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64), layout)
    pt, pl, pb, pr = spec.padding
    xp = np.pad(xn, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel
    ho, wo = spec.out_height, spec.out_width
    g = spec.groups
    cg, kg = spec.in_channels // g, spec.out_channels // g
    out = np.zeros((spec.batch, spec.out_channels, ho, wo), dtype=np.float64)
    for gi in range(g):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        ws = wn[gi * kg:(gi + 1) * kg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                out[:, gi * kg:(gi + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, ws[:, :, i, j])
    return _from_nchw(out, layout)


def winograd_weight_transform(w: np.ndarray, m: int, layout: str = "NCHW", points=None) -> np.ndarray:
    """``U = G g G_T`` in float64, laid out ``(alpha, alpha, C, K)`` (the compute's ``kernel_pack``)."""
    w = np.asarray(w, dtype=np.float64)
    oihw = w if layout == "NCHW" else w.transpose(3, 2, 0, 1)
    _, g_mat, _ = winograd_matrices(m, oihw.shape[2], points)
    return np.einsum("ai,kcij,bj->abck", g_mat, oihw, g_mat, optimize=True)


@dataclass(frozen=True)
class WinogradStages:
    """The float64 intermediates of ``A_T [ (G g G_T) . (B_T d B) ] A`` in the compute's NCHW tile order
    (tile ``p = (n * nH + th) * nW + tw``), for the error analysis of :mod:`tvm_winograd.accuracy`."""

    tiles: np.ndarray  # d: (alpha, alpha, C, P), the zero-padded input tiles
    kernel_pack: np.ndarray  # U: (alpha, alpha, C, K)
    data_pack: np.ndarray  # V: (alpha, alpha, C, P)
    bgemm: np.ndarray  # M: (alpha, alpha, K, P)
    inverse: np.ndarray  # Y: (K, P, m, m)
    out_shape: tuple[int, int, int, int]  # (N, K, H_out, W_out)

    def to_output(self, tiles: np.ndarray) -> np.ndarray:
        """A (K, P, m, m) tile-domain array as (N, K, H_out, W_out): the tiles cropped to the output."""
        n, k, ho, wo = self.out_shape
        m = tiles.shape[-1]
        nh, nw = -(-ho // m), -(-wo // m)
        y = tiles.reshape(k, n, nh, nw, m, m).transpose(1, 0, 2, 4, 3, 5)
        return y.reshape(n, k, nh * m, nw * m)[:, :, :ho, :wo]

    def to_tiles(self, y: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_output`: (N, K, H_out, W_out) as (K, P, m, m), zero beyond the output."""
        n, k, ho, wo = self.out_shape
        m = self.inverse.shape[-1]
        nh, nw = -(-ho // m), -(-wo // m)
        full = np.zeros((n, k, nh * m, nw * m))
        full[:, :, :ho, :wo] = y
        return full.reshape(n, k, nh, m, nw, m).transpose(1, 0, 2, 4, 3, 5).reshape(k, n * nh * nw, m, m)


def _stages_nchw(xn: np.ndarray, oihw: np.ndarray, spec, m: int, mats) -> WinogradStages:
    """Tile-by-tile ``A_T [ (G g G_T) . (B_T d B) ] A`` summed over channels, NCHW float64."""
    a_t, g_mat, b_t = mats
    r = spec.r
    alpha = m + r - 1
    u = np.einsum("ai,kcij,bj->abck", g_mat, oihw, g_mat, optimize=True)  # (alpha, alpha, C, K)
    ho, wo = spec.out_height, spec.out_width
    nh, nw = -(-ho // m), -(-wo // m)
    pt, pl, _, _ = spec.padding
    hp, wp = nh * m + r - 1, nw * m + r - 1
    xp = np.zeros((spec.batch, spec.in_channels, hp, wp))
    h_end, w_end = min(spec.height, hp - pt), min(spec.width, wp - pl)
    xp[:, :, pt:pt + h_end, pl:pl + w_end] = xn[:, :, :h_end, :w_end]
    # tiles[a, b, c, p] = xp[n, c, th*m + a, tw*m + b], p = (n * nh + th) * nw + tw
    idx_h = np.arange(nh)[:, None] * m + np.arange(alpha)[None, :]
    idx_w = np.arange(nw)[:, None] * m + np.arange(alpha)[None, :]
    tiles = xp[:, :, idx_h[:, :, None, None], idx_w[None, None, :, :]]  # (n, c, th, a, tw, b)
    tiles = tiles.transpose(3, 5, 1, 0, 2, 4).reshape(alpha, alpha, spec.in_channels, -1)
    v = np.einsum("ia,abcp,jb->ijcp", b_t, tiles, b_t, optimize=True)  # B_T d B
    prod = np.einsum("ijck,ijcp->ijkp", u, v, optimize=True)
    y = np.einsum("xi,ijkp,yj->kpxy", a_t, prod, a_t, optimize=True)  # A_T M A
    return WinogradStages(tiles, u, v, prod, y, (spec.batch, spec.out_channels, ho, wo))


def _winograd_nchw(xn: np.ndarray, oihw: np.ndarray, spec, m: int, mats) -> np.ndarray:
    stages = _stages_nchw(xn, oihw, spec, m, mats)
    return stages.to_output(stages.inverse)


def _winograd_spec(x: np.ndarray, w: np.ndarray, padding: Padding, layout: str):
    spec = make_spec(x.shape, w.shape, padding=padding, layout=layout, dtype="float64")
    if spec.kernel[0] != spec.kernel[1]:
        raise NotImplementedError(f"kernel {spec.kernel[0]}x{spec.kernel[1]} is not square")
    xn, oihw = to_nchw(np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64), layout)
    return spec, xn, oihw


def conv2d_winograd(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int = 4,
    padding: Padding = 0,
    layout: str = "NCHW",
    points=None,
) -> np.ndarray:
    """float64 Winograd F(m x m, r x r) conv2d (stride 1, dilation 1, groups 1), tile by tile."""
    stages = winograd_stages(x, w, m=m, padding=padding, layout=layout, points=points)
    return _from_nchw(stages.to_output(stages.inverse), layout)


def conv2d_winograd_abs(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int = 4,
    padding: Padding = 0,
    layout: str = "NCHW",
    points=None,
) -> np.ndarray:
    """``sum_c |A_T| [ (|G| |g| |G_T|) . (|B_T| |d| |B|) ] |A|`` per output: the sum of the absolute values
    of every term a Winograd output adds up.  Rounding errors are bounded componentwise by a multiple
    of it (see :mod:`tvm_winograd.accuracy`)."""
    spec, xn, oihw = _winograd_spec(np.abs(x), np.abs(w), padding, layout)
    mats = tuple(np.abs(mat) for mat in winograd_matrices(m, spec.r, points))
    return _from_nchw(_winograd_nchw(xn, oihw, spec, m, mats), layout)


def winograd_stages(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int = 4,
    padding: Padding = 0,
    layout: str = "NCHW",
    points=None,
    matrices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> WinogradStages:
    """The float64 intermediates (tiles, U, V, M, Y) of :func:`conv2d_winograd`, NCHW tile order.

    ``matrices``: ``(A_T, G, B_T)`` to use instead of the exact ones of ``points`` (e.g. the constants a
    compute rounded to its dtype), to see what those constants alone change."""
    spec, xn, oihw = _winograd_spec(x, w, padding, layout)
    mats = winograd_matrices(m, spec.r, points) if matrices is None else matrices
    return _stages_nchw(xn, oihw, spec, m, mats)
