"""Winograd conv2d as TVM tensor expressions (target-agnostic; schedules live in ``schedule/``).

Stages (names are stable: schedules, tuning records and tests find blocks by them)::

    data_pad      zero padding, extended so that the output tiles cover the output exactly
    input_tile    d: the alpha x alpha input tile of every (tile p, channel c)
    data_pack     V = B_T d B                        (alpha, alpha, C, P) | (alpha, alpha, P, C)
    kernel_pack   U = G g G_T  (own function: folded ahead of time on constant weights)
                                                     (alpha, alpha, C, K), or in panels of ``kb``
                                                     output channels (alpha, alpha, K/kb, C, kb)
    bgemm         M[e, n] = U[e, n]^T V[e, n]        alpha^2 independent GEMMs over C
    inverse       Y = A_T M A                        (K, P, m, m)        | (m, m, P, K)
    conv2d_winograd  Y scattered to the output, with the fused epilogue (bias, residual, ReLU)

``P = N * ceil(H_out / m) * ceil(W_out / m)`` tiles; tile ``p = (n * nH + th) * nW + tw``.

Dtypes: inputs in ``spec.dtype``; transforms are computed in ``acc_dtype``; ``data_pack`` and
``kernel_pack`` are *stored* in ``pack_dtype`` (the input dtype by default: fp16 storage for fp16,
which halves the GEMM's memory traffic and is what tensor cores consume); ``bgemm`` and ``inverse``
accumulate in ``acc_dtype``; the output is cast to ``spec.out_dtype``.

Kernel layout: ``WinogradConfig.kernel_block = kb`` stores U in panels of ``kb`` output channels,
``U[e, n, k // kb, c, k % kb]``, so that the GEMM micro-kernel reads one contiguous stream per panel
instead of ``C`` cache lines ``K`` floats apart.  The weights are constants transformed at compile
time, so the layout costs nothing at run time; on the CPU the GEMM of small-spatial layers is bound
by reading U (alpha^2 / r^2 = 4x the weights for F(4, 3)) and the panels halved its time (measured
on a 256-channel 14x14 layer, one core: 1.3-2.3 ms -> 0.8 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tvm import te, tirx, topi
from tvm.topi.utils import const_matrix

from .activations import ACTIVATIONS
from .activations import TAGS as ACTIVATION_TAGS
from .contract import (BGEMM, DATA_PACK, DATA_PACK_ACC, DATA_PACK_ROWS, DATA_PAD, DIRECT_EPILOGUE, INPUT_TILE,
                       INVERSE, INVERSE_ROWS, KERNEL_PACK, KERNEL_PACK_ACC, MATRIX_A, MATRIX_B, MATRIX_G, NO_RULE,
                       OUTPUT, SCHEDULE_RULE_ATTR, WEIGHT_PAD, rule_attrs, tag)
from .transforms import winograd_matrices
from .workload import Conv2dSpec, check_winograd

__all__ = [
    "Epilogue",
    "WinogradConfig",
    "tile_counts",
    "kernel_pack_shape",
    "kernel_block_for",
    "target_config",
    "block_kernel_pack",
    "kernel_block_of",
    "weight_transform",
    "conv2d_winograd",
    "weight_transform_func",
    "winograd_func",
    "direct_conv2d",
    "direct_func",
    "direct_channel_multiple",
    "DIRECT_VECTOR",
]

#: Largest alpha for which transformed tiles are stored in fp16 when the input is fp16.
FP16_PACK_MAX_ALPHA = 6


@dataclass(frozen=True)
class Epilogue:
    """What the output stage applies after the convolution: ``f(conv + bias + residual)`` with ``f``
    ReLU (``relu``) or one of :data:`tvm_winograd.activations.ACTIVATIONS` (``activation``), or none."""

    bias: bool = False
    residual: bool = False
    relu: bool = False
    activation: str | None = None

    def __post_init__(self):
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.activation is not None and self.relu:
            raise ValueError(f"an epilogue has one activation: relu and {self.activation}")

    def tag(self) -> str:
        letters = "".join(t for t, on in (("b", self.bias), ("a", self.residual), ("r", self.relu)) if on)
        letters += ACTIVATION_TAGS[self.activation] if self.activation else ""
        return letters or "none"


def _activate(y: tirx.PrimExpr, acc: str, relu: bool, activation: str | None) -> tirx.PrimExpr:
    """``relu(y)`` or ``activation(y)`` in ``acc`` (exp/tanh as TVM intrinsics: on llvm the pipeline
    swaps them for vectorizable polynomials, :func:`~tvm_winograd.schedule.llvm.fastmath.approximate_math`)."""
    zero = tirx.const(0, acc)
    if relu:
        return tirx.max(y, zero)
    if activation == "relu6":
        return tirx.min(tirx.max(y, zero), tirx.const(6, acc))
    if activation == "silu":
        return y * tirx.sigmoid(y)
    if activation == "sigmoid":
        return tirx.sigmoid(y)
    if activation == "tanh":
        return tirx.tanh(y)
    return y


@dataclass(frozen=True)
class WinogradConfig:
    """The algorithmic choices of one Winograd PrimFunc (not tuning knobs)."""

    m: int
    acc_dtype: str = "float32"
    pack_dtype: str | None = None  # None: the input dtype
    kernel_dtype: str | None = None  # storage of U alone (kernel_pack); None: the pack dtype
    points: tuple | None = None
    kernel_block: int | None = None  # None: U is (alpha, alpha, C, K); kb: (alpha, alpha, K/kb, C, kb)
    separable: bool = False  # B_T d B and A_T M A as two 1-D passes (data_pack_rows, inverse_rows)

    def resolved_pack_dtype(self, spec: Conv2dSpec) -> str:
        """The storage dtype of data_pack/kernel_pack: the input dtype, except that fp16 storage is
        only used up to alpha = 6 (F(4,3)): beyond, the transforms' dynamic range (G down to ~1e-4,
        A_T up to 2^14) costs fp16 storage 1e-2 (F(6,3)) to 1e0 (F(8,3)) relative error, measured
        by scripts/accuracy.py, against 3e-4 with fp32 storage."""
        if self.pack_dtype:
            return self.pack_dtype
        if spec.dtype == "float16" and self.m + spec.r - 1 > FP16_PACK_MAX_ALPHA:
            return self.acc_dtype
        return spec.dtype

    def resolved_kernel_dtype(self, spec: Conv2dSpec) -> str:
        """The storage dtype of kernel_pack (U): ``kernel_dtype`` where set (fp16 U for fp32 layers,
        :func:`kernel_dtype_for`), else :meth:`resolved_pack_dtype`."""
        return self.kernel_dtype or self.resolved_pack_dtype(spec)


def tile_counts(spec: Conv2dSpec, m: int) -> tuple[int, int, int]:
    """``(nH, nW, P)``: tiles per column and row, and in total."""
    nh = -(-spec.out_height // m)
    nw = -(-spec.out_width // m)
    return nh, nw, spec.batch * nh * nw


def kernel_pack_shape(spec: Conv2dSpec, m: int, kernel_block: int | None = None) -> tuple[int, ...]:
    """``(alpha, alpha, C, K)``, or ``(alpha, alpha, K / kb, C, kb)`` in panels of ``kb`` channels."""
    alpha = m + spec.r - 1
    if kernel_block is None:
        return (alpha, alpha, spec.in_channels, spec.out_channels)
    if kernel_block <= 0 or spec.out_channels % kernel_block:
        raise ValueError(f"kernel_block {kernel_block} does not divide the {spec.out_channels} output channels")
    return (alpha, alpha, spec.out_channels // kernel_block, spec.in_channels, kernel_block)


#: Panel widths the CPU layout uses: one AVX-512 vector of fp32 (16), else the largest that divides K.
CPU_KERNEL_BLOCKS = (16, 8, 4)


def kernel_block_for(spec: Conv2dSpec, target_kind: str) -> int | None:
    """The kernel_pack panel width for a target kind: 16 (or 8, 4) output channels on ``llvm``;
    ``None`` (the plain layout) for GPUs, whose schedules stage U through shared memory anyway."""
    if target_kind != "llvm":
        return None
    return next((kb for kb in CPU_KERNEL_BLOCKS if spec.out_channels % kb == 0), None)


#: Output channels of one vector of the llvm direct schedule (fp32 on AVX-512).
DIRECT_VECTOR = 16


def direct_channel_multiple(spec: Conv2dSpec, target_kind: str) -> int:
    """What the direct convolution's output channels are padded to a multiple of (``direct_func``'s
    ``out_channel_multiple``) for a target kind: on ``llvm``, a dense NHWC convolution whose output
    channels are more than 8 and no multiple of :data:`DIRECT_VECTOR` computes whole vectors of them, the
    padded weights zero (folded into the packed weight ahead of time), instead of 8- or 4-channel vectors.
    1 (nothing padded) elsewhere.

    The graph pass pads some convolutions earlier (:mod:`tvm_winograd.relax_channels`: output channels
    that no 4-lane vector fits, and from 64 on any that is no multiple of 16, with a slice back, so that
    Winograd gets whole vectors too); what reaches the direct schedule with other counts (MobileNet's and
    EfficientNet's 24 and 40) is padded here, inside the function, with no slice.  Measured (Zen 5, 2
    threads, hot): 144->24 1x1 at 56x56 0.122 -> 0.074 ms, 96->24 0.079 -> 0.054, 240->40 at 28x28
    0.073 -> 0.047, 144->40 0.044 -> 0.028."""
    k = spec.out_channels
    dense_nhwc = spec.layout == "NHWC" and spec.groups == 1
    return DIRECT_VECTOR if target_kind == "llvm" and dense_nhwc and k > 8 and k % DIRECT_VECTOR else 1


#: What ``kernel_dtype`` (the storage of U, opt-in) may be: fp32, or fp16 with fp32 accumulation (the GEMM
#: converts on load: ``vcvtph2ps`` on x86).  Half the bytes of U (in a model every layer's U comes from
#: DRAM) for one more rounding of U (ACCURACY.md).  Measured on the Zen 4: the deep layers alone 10-25 %
#: faster cold, whole models -7 % to +7 % (BENCHMARKS.md, "fp16 U"), hence not the default.
KERNEL_DTYPES = ("float32", "float16")


def check_kernel_dtype(kernel_dtype: str | None, target_kind: str) -> None:
    """Refuse a U storage dtype other than :data:`KERNEL_DTYPES`, and fp16 U off CPUs (the GPU design
    spaces stage U and V in one dtype)."""
    if kernel_dtype is None:
        return
    if kernel_dtype not in KERNEL_DTYPES:
        raise ValueError(f"kernel_dtype {kernel_dtype!r} is not supported: use one of {', '.join(KERNEL_DTYPES)}")
    if kernel_dtype != "float32" and target_kind != "llvm":
        raise ValueError(f"kernel_dtype {kernel_dtype!r} is for CPU (llvm) targets, not {target_kind!r}")


def kernel_dtype_for(spec: Conv2dSpec, m: int, requested: str | None) -> str | None:
    """The U storage a requested ``kernel_dtype`` gives one layer (``WinogradConfig.kernel_dtype``):
    fp16 for an fp32 layer up to alpha = :data:`FP16_PACK_MAX_ALPHA` (beyond, the transforms' range
    costs fp16 storage ~1e-2, as for fp16 packs); ``None`` (U in the pack dtype) otherwise."""
    if requested == "float16" and spec.dtype == "float32" and m + spec.r - 1 <= FP16_PACK_MAX_ALPHA:
        return "float16"
    return None


def target_config(spec: Conv2dSpec, m: int, target_kind: str, **overrides) -> WinogradConfig:
    """The :class:`WinogradConfig` compilation uses for a target kind: on ``llvm`` U in panels
    (:func:`kernel_block_for`) and separable transforms (measured on one core, 64-channel 56x56
    layer, F(4, 3): data_pack 0.86 -> 0.23-0.39 ms); the plain forms for GPUs, whose design spaces
    keep each transform in one thread's registers."""
    cpu = target_kind == "llvm"
    fields = {"kernel_block": kernel_block_for(spec, target_kind), "separable": cpu, **overrides}
    return WinogradConfig(m=m, **fields)


def block_kernel_pack(u: np.ndarray, kernel_block: int | None) -> np.ndarray:
    """Rearrange a plain ``(alpha, alpha, C, K)`` U (e.g. ``reference.winograd_weight_transform``)
    into the panel layout ``(alpha, alpha, K / kb, C, kb)``; unchanged for ``None``."""
    if kernel_block is None:
        return u
    a0, a1, c, k = u.shape
    if k % kernel_block:
        raise ValueError(f"kernel_block {kernel_block} does not divide the {k} output channels")
    return np.ascontiguousarray(u.reshape(a0, a1, c, k // kernel_block, kernel_block).transpose(0, 1, 3, 2, 4))


def _matrices(m: int, r: int, points: Sequence | None, dtype: str) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    a_t, g, b_t = winograd_matrices(m, r, points)
    # const_matrix(X)[i, j] = X[i, j]; stored transposed where the compute reads columns.
    return (
        const_matrix(np.ascontiguousarray(a_t.T).astype(dtype), MATRIX_A),  # alpha x m
        const_matrix(g.astype(dtype), MATRIX_G),  # alpha x r
        const_matrix(np.ascontiguousarray(b_t.T).astype(dtype), MATRIX_B),  # alpha x alpha
    )


def kernel_block_of(func: tirx.PrimFunc) -> int | None:
    """The kernel_pack panel width of a :func:`winograd_func` PrimFunc (its second parameter's
    layout): ``kb`` for ``(alpha, alpha, K/kb, C, kb)``, ``None`` for ``(alpha, alpha, C, K)``."""
    shape = func.params[1].shape
    return int(shape[-1]) if len(shape) == 5 else None


def weight_transform(weight: te.Tensor, spec: Conv2dSpec, config: WinogradConfig) -> te.Tensor:
    """``kernel_pack[e, n, c, k] = sum_{i,j} G[e, i] g[k, c, i, j] G[n, j]`` (alpha, alpha, C, K), or
    ``kernel_pack[e, n, k // kb, c, k % kb]`` with ``config.kernel_block = kb``.

    ``weight`` is OIHW for NCHW and HWIO for NHWC.  Computed in ``acc_dtype``, stored in the pack dtype.
    """
    check_winograd(spec, config.m)
    r, acc = spec.r, config.acc_dtype
    _, g_mat, _ = _matrices(config.m, r, config.points, acc)
    r_kh = te.reduce_axis((0, r), name="r_kh")
    r_kw = te.reduce_axis((0, r), name="r_kw")
    if spec.layout == "NCHW":
        w_at = lambda c, k, i, j: weight[k, c, i, j]  # noqa: E731
    else:
        w_at = lambda c, k, i, j: weight[i, j, c, k]  # noqa: E731
    out_dtype = config.resolved_kernel_dtype(spec)

    def u_value(eps, nu, c, k):
        return te.sum(w_at(c, k, r_kh, r_kw).astype(acc) * g_mat[eps, r_kh] * g_mat[nu, r_kw], axis=[r_kh, r_kw])

    kb = config.kernel_block
    pack = te.compute(
        kernel_pack_shape(spec, config.m, kb),
        u_value if kb is None else (lambda eps, nu, ko, c, ki: u_value(eps, nu, c, ko * kb + ki)),
        name=KERNEL_PACK if out_dtype == acc else KERNEL_PACK_ACC,
        attrs=rule_attrs(KERNEL_PACK),
    )
    if out_dtype == acc:
        return pack
    return te.compute(pack.shape, lambda *i: pack(*i).astype(out_dtype), name=KERNEL_PACK,
                      attrs={SCHEDULE_RULE_ATTR: NO_RULE})


class _Storage:
    """The storage order of one 4-D stage in one layout, so that each stage is written once.

    Every stage is described by its *logical* indices (``(n, c, h, w)`` for images, ``(eps, nu, c, p)``
    for tiles, ...); ``order`` lists which logical axis each storage axis holds, and ``names`` the
    loop variable names of the storage axes (kept from the original per-layout compute so that the
    generated TIR, and every schedule and tuning record over it, stays the same).
    """

    def __init__(self, order: tuple[int, ...], names: tuple[str, ...]) -> None:
        self.order, self.names = order, list(names)

    def shape(self, logical: Sequence) -> tuple:
        return tuple(logical[i] for i in self.order)

    def compute(self, logical_shape: Sequence, fcompute, name: str, attrs: dict) -> te.Tensor:
        """``te.compute`` of a stage stored in this order; ``fcompute`` takes logical indices."""
        def body(*idx):
            logical = [None] * len(idx)
            for axis, var in zip(self.order, idx):
                logical[axis] = var
            return fcompute(*logical)

        return te.compute(self.shape(logical_shape), body, name=name, attrs=attrs, varargs_names=self.names)

    def at(self, tensor: te.Tensor):
        """``(logical indices) -> tensor[storage indices]``."""
        return lambda *logical: tensor[tuple(logical[i] for i in self.order)]


#: Per layout, the storage of each stage (logical axes: images (n, c, h, w); tiles (eps, nu, c, p);
#: the GEMM and inverse (.., .., k, p); the inverse's (vh, vw, k, p)).  NCHW keeps the tile axis P
#: innermost, NHWC the channel axis, so that the GEMM reads its contiguous axis innermost in both.
_STORAGE = {
    "NCHW": {
        "image": _Storage((0, 1, 2, 3), ("n", "c", "h", "w")),
        DATA_PAD: _Storage((0, 1, 2, 3), ("n", "c", "h", "w")),
        INPUT_TILE: _Storage((0, 1, 2, 3), ("eps", "nu", "c", "p")),
        DATA_PACK_ROWS: _Storage((0, 1, 2, 3), ("eps", "b", "c", "p")),
        DATA_PACK: _Storage((0, 1, 2, 3), ("eps", "nu", "c", "p")),
        BGEMM: _Storage((0, 1, 2, 3), ("e", "n", "k", "p")),
        INVERSE_ROWS: _Storage((0, 1, 2, 3), ("vh", "b", "k", "p")),
        INVERSE: _Storage((2, 3, 0, 1), ("k", "p", "vh", "vw")),
        OUTPUT: _Storage((0, 1, 2, 3), ("n", "k", "h", "w")),
    },
    "NHWC": {
        "image": _Storage((0, 2, 3, 1), ("n", "h", "w", "c")),
        DATA_PAD: _Storage((0, 2, 3, 1), ("n", "h", "w", "c")),
        INPUT_TILE: _Storage((0, 1, 3, 2), ("a", "b", "p", "c")),
        DATA_PACK_ROWS: _Storage((0, 1, 3, 2), ("eps", "b", "p", "c")),
        DATA_PACK: _Storage((0, 1, 3, 2), ("e", "n", "p", "c")),
        BGEMM: _Storage((0, 1, 3, 2), ("e", "n", "p", "k")),
        INVERSE_ROWS: _Storage((0, 1, 3, 2), ("vh", "b", "p", "k")),
        INVERSE: _Storage((0, 1, 3, 2), ("vh", "vw", "p", "k")),
        OUTPUT: _Storage((0, 2, 3, 1), ("n", "h", "w", "k")),
    },
}


def _data_pack(data: te.Tensor, spec: Conv2dSpec, config: WinogradConfig, b_mat: te.Tensor, store) -> te.Tensor:
    """``data_pad`` -> ``input_tile`` -> (``data_pack_rows``) -> ``data_pack``: V = B_T d B per tile."""
    m, r, acc = config.m, spec.r, config.acc_dtype
    alpha = m + r - 1
    pack_dtype = config.resolved_pack_dtype(spec)
    nh, nw, n_tiles = tile_counts(spec, m)
    pt, pl, _, _ = spec.padding
    data_at = store["image"].at(data)

    def padded(n, c, h, w):
        inside = tirx.all(h >= pt, h < pt + spec.height, w >= pl, w < pl + spec.width)
        return tirx.if_then_else(inside, data_at(n, c, h - pt, w - pl), tirx.const(0, spec.dtype))

    pad_shape = (spec.batch, spec.in_channels, nh * m + r - 1, nw * m + r - 1)  # what every tile reads
    data_pad = store[DATA_PAD].compute(pad_shape, padded, DATA_PAD, rule_attrs(DATA_PAD))
    pad_at = store[DATA_PAD].at(data_pad)

    def tile_value(eps, nu, c, p):
        n, rest = p // (nh * nw), p % (nh * nw)
        return pad_at(n, c, (rest // nw) * m + eps, (rest % nw) * m + nu)

    tile_shape = (alpha, alpha, spec.in_channels, n_tiles)
    input_tile = store[INPUT_TILE].compute(tile_shape, tile_value, INPUT_TILE, rule_attrs(INPUT_TILE))
    tile_at = store[INPUT_TILE].at(input_tile)
    r_a = te.reduce_axis((0, alpha), "r_a")
    r_b = te.reduce_axis((0, alpha), "r_b")

    def pack_value(eps, nu, c, p):
        # V[eps, nu] = sum_{a, b} B_T[eps, a] d[a, b] B_T[nu, b]; B[a, eps] = B_T[eps, a]
        return te.sum(tile_at(r_a, r_b, c, p).astype(acc) * b_mat[r_a, eps] * b_mat[r_b, nu], axis=[r_a, r_b])

    if config.separable:  # T = B_T d (data_pack_rows), then V = T B: 2 alpha^3 instead of alpha^4 products
        r_a1 = te.reduce_axis((0, alpha), "r_a")
        rows = store[DATA_PACK_ROWS].compute(
            tile_shape, lambda eps, b, c, p: te.sum(tile_at(r_a1, b, c, p).astype(acc) * b_mat[r_a1, eps], axis=r_a1),
            DATA_PACK_ROWS, rule_attrs(DATA_PACK_ROWS))
        rows_at = store[DATA_PACK_ROWS].at(rows)
        r_b1 = te.reduce_axis((0, alpha), "r_b")

        def pack_value(eps, nu, c, p):  # noqa: F811 - the separable form
            return te.sum(rows_at(eps, r_b1, c, p) * b_mat[r_b1, nu], axis=r_b1)

    name = DATA_PACK_ACC if pack_dtype != acc else DATA_PACK
    packed = store[DATA_PACK].compute(tile_shape, pack_value, name, rule_attrs(DATA_PACK))
    if pack_dtype == acc:
        return packed
    return te.compute(packed.shape, lambda *i: packed(*i).astype(pack_dtype), name=DATA_PACK,
                      attrs={SCHEDULE_RULE_ATTR: NO_RULE})


def _bgemm(data_pack: te.Tensor, kernel_pack: te.Tensor, spec: Conv2dSpec, config: WinogradConfig,
           store) -> te.Tensor:
    """``bgemm``: alpha^2 independent GEMMs over the input channels, accumulated in acc_dtype."""
    alpha, acc, kb = config.m + spec.r - 1, config.acc_dtype, config.kernel_block
    _, _, n_tiles = tile_counts(spec, config.m)
    r_c = te.reduce_axis((0, spec.in_channels), name="r_c")
    u_at = (lambda e, n, c, k: kernel_pack[e, n, c, k]) if kb is None else (  # noqa: E731
        lambda e, n, c, k: kernel_pack[e, n, k // kb, c, k % kb])
    v_at = store[DATA_PACK].at(data_pack)
    nchw = spec.layout == "NCHW"

    def product(e, n, k, p):
        u, v = u_at(e, n, r_c, k).astype(acc), v_at(e, n, r_c, p).astype(acc)
        # operand order = the block's read order, which the schedules' cache_read indices rely on
        return te.sum(u * v if nchw else v * u, axis=[r_c])

    return store[BGEMM].compute((alpha, alpha, spec.out_channels, n_tiles), product, BGEMM, rule_attrs(BGEMM))


def _inverse(bgemm: te.Tensor, spec: Conv2dSpec, config: WinogradConfig, a_mat: te.Tensor, store):
    """``(inverse_rows ->) inverse``: Y = A_T M A per tile; returns ``(logical (n, k, h, w)) -> Y``."""
    m, alpha = config.m, config.m + spec.r - 1
    nh, nw, n_tiles = tile_counts(spec, m)
    k_out = spec.out_channels
    m_at = store[BGEMM].at(bgemm)
    # Y[vh, vw] = sum_{a, b} A_T[vh, a] M[a, b] A_T[vw, b]; A[a, vh] = A_T[vh, a]
    r_a2 = te.reduce_axis((0, alpha), "r_a")
    r_b2 = te.reduce_axis((0, alpha), "r_b")
    if config.separable:  # Z = A_T M (inverse_rows), then Y = Z A: alpha^2 m + alpha m^2 products
        r_a3 = te.reduce_axis((0, alpha), "r_a")
        r_b3 = te.reduce_axis((0, alpha), "r_b")
        rows = store[INVERSE_ROWS].compute(
            (m, alpha, k_out, n_tiles), lambda vh, b, k, p: te.sum(m_at(r_a3, b, k, p) * a_mat[r_a3, vh], axis=r_a3),
            INVERSE_ROWS, rule_attrs(INVERSE_ROWS))
        rows_at = store[INVERSE_ROWS].at(rows)
        value = lambda vh, vw, k, p: te.sum(rows_at(vh, r_b3, k, p) * a_mat[r_b3, vw], axis=r_b3)  # noqa: E731
    else:
        value = lambda vh, vw, k, p: te.sum(  # noqa: E731
            m_at(r_a2, r_b2, k, p) * a_mat[r_a2, vh] * a_mat[r_b2, vw], axis=[r_a2, r_b2])
    inverse = store[INVERSE].compute((m, m, k_out, n_tiles), value, INVERSE, rule_attrs(INVERSE))
    inv_at = store[INVERSE].at(inverse)
    return lambda n, k, h, w: inv_at(h % m, w % m, k, (n * nh + h // m) * nw + w // m)


def conv2d_winograd(
    data: te.Tensor,
    kernel_pack: te.Tensor,
    spec: Conv2dSpec,
    config: WinogradConfig,
    *,
    bias: te.Tensor | None = None,
    residual: te.Tensor | None = None,
    relu: bool = False,
    activation: str | None = None,
) -> te.Tensor:
    """The Winograd convolution of ``data`` with pre-transformed weights ``kernel_pack``.

    ``bias`` has shape ``(K,)``; ``residual`` has the output's shape; the epilogue is
    ``f(conv + bias + residual)`` with ``f`` ReLU or ``activation`` (:func:`_activate`), computed in
    the output stage (no extra pass over memory).
    """
    check_winograd(spec, config.m)
    acc = config.acc_dtype
    a_mat, _, b_mat = _matrices(config.m, spec.r, config.points, acc)
    store = _STORAGE[spec.layout]
    data_pack = _data_pack(data, spec, config, b_mat, store)
    bgemm = _bgemm(data_pack, kernel_pack, spec, config, store)
    inv_at = _inverse(bgemm, spec, config, a_mat, store)
    residual_at = None if residual is None else store["image"].at(residual)

    def output_value(n, k, h, w):
        y = inv_at(n, k, h, w)
        if bias is not None:
            y = y + bias[k].astype(acc)
        if residual_at is not None:
            y = y + residual_at(n, k, h, w).astype(acc)
        return _activate(y, acc, relu, activation).astype(spec.out_dtype)

    out_shape = (spec.batch, spec.out_channels, spec.out_height, spec.out_width)
    return store[OUTPUT].compute(out_shape, output_value, OUTPUT, rule_attrs(OUTPUT))


def weight_transform_func(spec: Conv2dSpec, config: WinogradConfig) -> tirx.PrimFunc:
    """PrimFunc ``(weight) -> kernel_pack``."""
    weight = te.placeholder(spec.weight_shape, spec.dtype, name="weight")
    func = te.create_prim_func([weight, weight_transform(weight, spec, config)])
    return tag(func, "weight_transform", spec.layout, config.m)


def _epilogue_placeholders(spec: Conv2dSpec, epilogue: Epilogue) -> tuple[te.Tensor | None, te.Tensor | None]:
    """The ``bias`` (K,) and ``residual`` (output shape) inputs the epilogue needs, else None."""
    bias = te.placeholder((spec.out_channels,), spec.dtype, name="bias") if epilogue.bias else None
    residual = te.placeholder(spec.output_shape, spec.out_dtype, name="residual") if epilogue.residual else None
    return bias, residual


def winograd_func(spec: Conv2dSpec, config: WinogradConfig, epilogue: Epilogue = Epilogue()) -> tirx.PrimFunc:
    """PrimFunc ``(data, kernel_pack[, bias][, residual]) -> output`` for the pre-transformed weights."""
    check_winograd(spec, config.m)
    data = te.placeholder(spec.input_shape, spec.dtype, name="data")
    pack = te.placeholder(kernel_pack_shape(spec, config.m, config.kernel_block),
                          config.resolved_kernel_dtype(spec), name=KERNEL_PACK)
    bias, residual = _epilogue_placeholders(spec, epilogue)
    args = [t for t in (data, pack, bias, residual) if t is not None]
    out = conv2d_winograd(data, pack, spec, config, bias=bias, residual=residual, relu=epilogue.relu,
                          activation=epilogue.activation)
    return tag(te.create_prim_func(args + [out]), "winograd", spec.layout, config.m)


def _epilogue(y: te.Tensor, spec: Conv2dSpec, acc: str, bias, residual, relu: bool, activation: str | None,
              name: str) -> te.Tensor:
    nchw = spec.layout == "NCHW"

    def value(*idx):
        n, k, h, w = idx if nchw else (idx[0], idx[3], idx[1], idx[2])
        v = y[idx].astype(acc)
        if bias is not None:
            v = v + bias[k].astype(acc)
        if residual is not None:
            v = v + residual[idx].astype(acc)
        return _activate(v, acc, relu, activation).astype(spec.out_dtype)

    return te.compute(spec.output_shape, value, name=name)


def direct_conv2d(
    data: te.Tensor,
    weight: te.Tensor,
    spec: Conv2dSpec,
    *,
    acc_dtype: str = "float32",
    bias: te.Tensor | None = None,
    residual: te.Tensor | None = None,
    relu: bool = False,
    activation: str | None = None,
    out_channel_multiple: int = 1,
) -> te.Tensor:
    """Direct convolution (TVM topi's conv2d, any stride/dilation/groups) with the same epilogue as
    :func:`conv2d_winograd`: the baseline every Winograd candidate is measured against.

    ``out_channel_multiple`` (dense NHWC only): the convolution computes its output channels padded to a
    multiple of it, from a weight padded with zeros (block :data:`~tvm_winograd.contract.WEIGHT_PAD`), and
    the epilogue (always present then) writes the real ones (:func:`direct_channel_multiple`)."""
    nchw = spec.layout == "NCHW"
    pad = list(spec.padding)
    k_pad = -(-spec.out_channels // out_channel_multiple) * out_channel_multiple
    padded = k_pad != spec.out_channels and not nchw and spec.groups == 1
    if padded:
        kh, kw, ci, k = (int(v) for v in weight.shape)
        zero = tirx.const(0, weight.dtype)
        weight = te.compute((kh, kw, ci, k_pad), lambda r, s, c, o: tirx.if_then_else(
            o < k, weight[r, s, c, tirx.min(o, k - 1)], zero), name=WEIGHT_PAD)
    if spec.groups == 1:
        conv = (topi.nn.conv2d_nchw if nchw else topi.nn.conv2d_nhwc)(
            data, weight, spec.stride, pad, spec.dilation, out_dtype=acc_dtype)
    else:
        conv = topi.nn.group_conv2d_nchw(data, weight, spec.stride, pad, spec.dilation, spec.groups,
                                         out_dtype=acc_dtype) if nchw else topi.nn.group_conv2d_nhwc(
            data, weight, spec.stride, pad, spec.dilation, spec.groups, out_dtype=acc_dtype)
    if (bias is None and residual is None and not relu and activation is None and spec.out_dtype == acc_dtype
            and not padded):
        return conv
    return _epilogue(conv, spec, acc_dtype, bias, residual, relu, activation, DIRECT_EPILOGUE)


def direct_func(spec: Conv2dSpec, epilogue: Epilogue = Epilogue(), acc_dtype: str = "float32",
                out_channel_multiple: int = 1) -> tirx.PrimFunc:
    """PrimFunc ``(data, weight[, bias][, residual]) -> output`` of the direct convolution
    (``out_channel_multiple``: see :func:`direct_conv2d`)."""
    data = te.placeholder(spec.input_shape, spec.dtype, name="data")
    weight = te.placeholder(spec.weight_shape, spec.dtype, name="weight")
    bias, residual = _epilogue_placeholders(spec, epilogue)
    args = [t for t in (data, weight, bias, residual) if t is not None]
    out = direct_conv2d(data, weight, spec, acc_dtype=acc_dtype, bias=bias, residual=residual, relu=epilogue.relu,
                        activation=epilogue.activation, out_channel_multiple=out_channel_multiple)
    return tag(te.create_prim_func(args + [out]), "direct", spec.layout)
