"""Searched CPU (llvm) design spaces for the Winograd stages, registered as MetaSchedule custom rules.

MetaSchedule calls ``s_tir.meta_schedule.cpu.<rule>`` with ``(sch, block)`` for every block whose
``schedule_rule`` attribute names one of our rules (see :data:`tvm_winograd.contract.SCHEDULE_RULES`), once
:func:`register_cpu_rules` has registered them (through :func:`tvm_winograd.schedule.register_rules`).
Each rule returns a list of schedules (one per structural choice); the knobs inside are *sampled*
(``sample_perfect_tile``), so the evolutionary search mutates them.

The spaces, stage by stage:

``winograd_output`` (visited first: blocks are visited from the last one)
    The output is split into ``m x m`` tiles; a sampled number of tiles along the vector axis (W tiles
    for NCHW, K lanes for NHWC) forms one step; ``inverse`` is computed at that step into a small
    local buffer, ``Y = A_T M A`` runs on whole vectors of tiles (NCHW) or channels (NHWC), fully
    unrolled within :data:`UNROLL_BUDGET` so the constant matrices fold, and the epilogue (bias,
    residual, ReLU) is applied while the tile is written.  Parallel over the outer tiles.
    For fp32 NHWC the rule returns a second, *fused* space: the parallel loop runs over steps of
    ``fused.tiles`` tiles of a row, and ``bgemm`` and ``data_pack`` are computed at the step too
    (their rules below then schedule them inside it), so V and M never leave the core's cache.
``winograd_inverse``
    Nothing more when the output rule placed it (always, for our PrimFuncs); a standalone schedule
    otherwise.
``winograd_bgemm`` (the hot stage)
    ``alpha^2`` GEMMs ``M[e, n] = U[e, n]^T V[e, n]`` with a register-blocked micro-kernel: a
    ``rows x vectors x lanes`` tile of accumulators lives in a local buffer (cache_write) that LLVM
    keeps in registers, the whole reduction over C runs inside it (broadcast one operand, vector-load
    the other, FMA), then the tile is written out once.  Rows are split in three (parallel, cache
    block, register), the vector axis in four (parallel, cache block, vectors per tile, lanes), with
    sampled factors; the reduction in two.  The lanes run along K (contiguous in U's 16-channel panels
    and, for NHWC, in ``M``; NCHW keeps its tile transposed in registers) or, for NCHW only, along P
    (contiguous in ``V[e, n, c, p]`` and ``M``): one design space per axis.
``data_pack_rows`` / ``inverse_rows`` (separable transforms, llvm)
    The first 1-D pass of each transform, computed per step into a local tile, vectorized, unrolled.
``winograd_data_pack``
    ``data_pad`` and ``B`` inlined; vectorized along the contiguous axis of ``data_pack`` (P for
    NCHW, C for NHWC) with a sampled vector length; per step, the ``alpha x alpha x lanes`` input tiles
    are gathered once into a local buffer (``input_tile`` computed there, padding folded in), the
    transform accumulates in a local tile (cache_write) with its ``alpha^2`` outputs and inputs unrolled
    within :data:`UNROLL_BUDGET`, and is written once; parallel over the steps.
``winograd_kernel_pack``
    The weight transform (folded ahead of time on constant weights): parallel over (C, K), unrolled.

Compile time: fully unrolling ``eps, nu, r_a, r_b`` is ``alpha^4`` statements; for F(6, 3) (alpha 8)
that is 4096 and compiles take minutes, so :func:`unroll_within` keeps outer transform loops rolled.
"""

from __future__ import annotations

import logging
from typing import Callable

import tvm
from tvm import s_tir, tirx

from ..contract import (BGEMM, DATA_PACK, DATA_PACK_ACC, DATA_PACK_ROWS, DATA_PAD, INPUT_TILE, INVERSE,
                        INVERSE_ROWS, KERNEL_PACK, KERNEL_PACK_ACC, MATRIX_A, MATRIX_B, MATRIX_G, OUTPUT, SCHEDULE_RULES,
                        kind_of, layout_of, tile_of)
from .common import UNROLL_BUDGET, schedule_inverse_simple, unroll_within

__all__ = [
    "RULES",
    "register_cpu_rules",
    "schedule_output",
    "schedule_inverse",
    "schedule_bgemm",
    "schedule_data_pack",
    "schedule_kernel_pack",
    "bgemm_vector_axes",
    "apply_fixed",
    "fixed_schedule",
]

logger = logging.getLogger(__name__)

Decisions = dict  # fixed sampling decisions by knob name, for hand-written schedules and tests


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _layout(sch: s_tir.Schedule) -> str:
    return layout_of(sch.mod["main"])


def _m(sch: s_tir.Schedule) -> int:
    return tile_of(sch.mod["main"])


def _tile(sch: s_tir.Schedule, loop, n: int, max_inner: int, name: str, fixed: Decisions | None):
    """Split ``loop`` in ``n`` with sampled perfect factors (or the fixed decision ``fixed[name]``)."""
    decision = None if fixed is None else fixed.get(name)
    if decision is not None:
        decision = [int(d) for d in decision]
    factors = sch.sample_perfect_tile(loop, n=n, max_innermost_factor=max_inner, decision=decision)
    return sch.split(loop, factors)


#: Vector lengths the spaces use: powers of two.  LLVM turns other lengths (e.g. 28 or 14 lanes, from
#: perfect tiles of P = 196) into very slow code and very long compiles (measured: a 28-lane GEMM
#: micro-kernel ran 10x slower than a 4-lane one; a 14-lane strided inverse took minutes to compile).
VECTOR_LANES = (4, 8, 16, 32, 64)


def _lanes(sch: s_tir.Schedule, loop, name: str, fixed: Decisions | None, max_lanes: int = 64,
           candidates: tuple[int, ...] = VECTOR_LANES):
    """Split ``loop`` into ``(outer, lanes)`` with ``lanes`` a sampled power of two dividing its extent
    (``fixed[name]`` = a lane count pins it); ``(loop, None)`` when no candidate divides the extent."""
    extent = _extent(sch, loop)
    options = [c for c in candidates if c <= max_lanes and extent % c == 0]
    if not options:
        return loop, None
    decision = None
    if fixed is not None and fixed.get(name) is not None:
        want = int(fixed[name])
        if want not in options:
            raise ValueError(f"{name}={want} is not a power-of-two lane count dividing {extent}: {options}")
        decision = options.index(want)
    lanes = sch.sample_categorical(options, [1.0 / len(options)] * len(options), decision=decision)
    outer, inner = sch.split(loop, [None, lanes])
    return outer, inner


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error type for a missing block
        return False


def _decompose_vectorized(sch: s_tir.Schedule, block, loop) -> None:
    """Split the init of reduction ``block`` out above ``loop`` and vectorize the init's innermost loop
    (the update is vectorized before decomposing: TVM refuses to vectorize it afterwards)."""
    init = sch.decompose_reduction(block, loop)
    inner = sch.get_loops(init)[-1]
    if _extent(sch, inner) > 1:
        sch.vectorize(inner)


# --------------------------------------------------------------------------------------------------
# output + inverse
# --------------------------------------------------------------------------------------------------

def fusable(sch: s_tir.Schedule) -> bool:
    """Whether the fused space (:func:`schedule_output` with ``fused=True``) exists for a PrimFunc:
    NHWC (the layout models compile in on CPUs) with the packs stored in the accumulation dtype (no
    separate storage-cast stage, i.e. fp32); others keep the stage-by-stage space."""
    return _layout(sch) == "NHWC" and not _has_block(sch, DATA_PACK_ACC)


def schedule_output(sch: s_tir.Schedule, block, fixed: Decisions | None = None,
                    fused: bool = False) -> s_tir.Schedule:
    """Output tiles with ``inverse`` computed per step of tiles, vectorized, epilogue fused.

    ``fused`` (NHWC): the tiles of each output row are split into parallel *steps* of ``fused.tiles``
    (2 perfect factors of the tiles per row, the inner one the step), and the whole chain runs per step:
    ``data_pack``, ``bgemm`` and the inverse are computed at the step, so ``V`` and ``M`` live in a
    per-step buffer that stays in the core's cache instead of a layer-sized one that goes through
    memory twice.  The price: every step reads all of ``U``, so it pays where U is small next to V
    and M (large images, few channels) and loses where U dominates.
    """
    m, layout = _m(sch), _layout(sch)
    if fused and not fusable(sch):
        raise ValueError(f"the fused CPU space is for fp32 NHWC, not this {layout} PrimFunc")
    if _has_block(sch, MATRIX_A):
        sch.compute_inline(sch.get_sblock(MATRIX_A))
    inverse = sch.get_sblock(INVERSE)
    ra_ext = sch.get(inverse).iter_vars[4].dom.extent
    alpha = int(ra_ext)
    if layout == "NCHW":
        n, k, h, w = sch.get_loops(block)
        ht, hi = sch.split(h, [None, m])
        wt, wi = sch.split(w, [None, m])
        wt0, wt1 = _lanes(sch, wt, "output.tiles", fixed, max_lanes=16, candidates=(1, 2, 4, 8, 16))
        sch.reorder(n, k, ht, wt0, hi, wt1, wi)
        outer = sch.fuse(n, k, ht)
        step = wt0
        sch.compute_at(inverse, step, preserve_unit_loops=True)
        sch.vectorize(sch.fuse(wt1, wi))
    else:
        n, h, w, k = sch.get_loops(block)
        ht, hi = sch.split(h, [None, m])
        wt, wi = sch.split(w, [None, m])
        steps = _tile(sch, wt, 2, 32, "fused.tiles", fixed) if fused else [wt]  # (steps, tiles per step)
        k0, k1 = _lanes(sch, k, "output.lanes", fixed)
        if k1 is None:
            k0, k1 = _tile(sch, k, 2, 64, "output.lanes", fixed)
        sch.reorder(n, ht, *steps, k0, hi, wi, k1)
        outer = sch.fuse(n, ht, steps[0])
        step = k0
        sch.compute_at(inverse, step, preserve_unit_loops=True)
        sch.vectorize(k1)
    sch.parallel(outer)
    sch.set_scope(inverse, 0, "local")
    separable = _has_block(sch, INVERSE_ROWS)
    # inverse's own loops: (k, p, vh, vw, r_a, r_b) for NCHW, (vh, vw, p, k, r_a, r_b) for NHWC
    # (only r_b when separable: Z = A_T M is the inverse_rows stage).
    n_red = 1 if separable else 2
    all_loops = sch.get_loops(inverse)
    loops, red = all_loops[-4 - n_red:-n_red], all_loops[-n_red:]
    if layout == "NCHW":
        k_l, p_l, vh, vw = loops
        vec, rest = p_l, k_l
    else:
        vh, vw, p_l, k_l = loops
        vec, rest = k_l, p_l
    sch.reorder(rest, *red, vh, vw, vec)
    sch.vectorize(vec)
    unroll_within(sch, (*red, vh, vw), UNROLL_BUDGET // 2 if alpha > 6 else UNROLL_BUDGET)
    _decompose_vectorized(sch, inverse, red[0])
    if separable:
        _schedule_rows(sch, sch.get_sblock(INVERSE_ROWS), step)
    if fused:  # the GEMM and the input transform of the step's tiles, at the (parallel) step
        sch.compute_at(sch.get_sblock(BGEMM), outer, preserve_unit_loops=True)
        sch.compute_at(_pack_block(sch), outer, preserve_unit_loops=True)
    return sch


def _pack_block(sch: s_tir.Schedule):
    """The input-transform block (``data_pack_acc`` when the packs are stored in another dtype: its
    storage cast ``data_pack`` is then the write-back of :func:`schedule_data_pack`)."""
    return sch.get_sblock(DATA_PACK_ACC if _has_block(sch, DATA_PACK_ACC) else DATA_PACK)


def _nested(sch: s_tir.Schedule, block, own_loops: int) -> bool:
    """Whether ``block`` was computed at an outer loop (the fused space's step) by another rule."""
    return len(sch.get_loops(block)) > own_loops


def _schedule_rows(sch: s_tir.Schedule, rows, step) -> None:
    """A separable transform's first 1-D pass (``data_pack_rows`` / ``inverse_rows``) computed at
    ``step`` into a local tile: vectorized along its contiguous (last spatial) axis, unrolled."""
    sch.compute_at(rows, step, preserve_unit_loops=True)
    sch.set_scope(rows, 0, "local")
    i, j, y0, y1, ra = sch.get_loops(rows)[-5:]
    sch.reorder(i, j, y0, ra, y1)
    sch.vectorize(y1)
    unroll_within(sch, (i, j, y0, ra))
    _decompose_vectorized(sch, rows, ra)


def schedule_inverse(sch: s_tir.Schedule, block, fixed: Decisions | None = None) -> s_tir.Schedule:
    """Standalone inverse (only when no output rule placed it): parallel, unrolled, vectorized."""
    if len(sch.get_loops(block)) > 6:  # already computed at the output's tiles
        return sch
    schedule_inverse_simple(sch, block, _layout(sch))
    return sch


# --------------------------------------------------------------------------------------------------
# bgemm
# --------------------------------------------------------------------------------------------------

def bgemm_vector_axes(layout: str) -> tuple[str, ...]:
    """The axes the GEMM micro-kernel may vectorize: K (contiguous in U's panels, and in ``M`` for
    NHWC; NCHW keeps the register tile transposed, see :func:`schedule_bgemm`) and, for NCHW, P (the
    contiguous axis of ``V`` and ``M``)."""
    return ("k", "p") if layout == "NCHW" else ("k",)



def schedule_bgemm(sch: s_tir.Schedule, block, vector_axis: str = "k",
                   fixed: Decisions | None = None) -> s_tir.Schedule:
    """Register-blocked batched GEMM vectorized along ``vector_axis`` ("k" or "p").

    Loops, outer to inner: ``e*n, rows0, vec0`` (parallel), ``rows1, vec1`` (cache blocks: the U
    panels of one ``vec1`` step are reused by ``rows1`` register tiles, the V rows by ``vec1``), the
    whole reduction over C, then the register tile ``rows2 x vectors x lanes`` accumulated in a local
    buffer that LLVM keeps in registers (broadcast a V element, load U vectors, FMA), written once.
    Knobs: ``bgemm.rows`` (3 perfect factors), ``bgemm.vector`` (lanes: a power of two),
    ``bgemm.lanes`` (3 perfect factors of the vector axis / lanes: vec0, vec1, vectors per tile),
    ``bgemm.reduce`` (2 factors of C, both inside the tile's loops).
    """
    layout = _layout(sch)
    if _nested(sch, block, 5):
        return _schedule_bgemm_step(sch, block, fixed)
    e, n, y0, y1, rc = sch.get_loops(block)
    k, p = (y0, y1) if layout == "NCHW" else (y1, y0)
    vec, row = (k, p) if vector_axis == "k" else (p, k)
    en = sch.fuse(e, n)
    r0, r1, r2 = _tile(sch, row, 3, 16, "bgemm.rows", fixed)
    vec_outer, v3 = _lanes(sch, vec, "bgemm.vector", fixed)
    if v3 is None:  # no power-of-two lane count divides the axis: perfect tiles, the innermost the lanes
        v0, v1, v2, v3 = _tile(sch, vec, 4, 64, "bgemm.lanes", fixed)
    else:
        v0, v1, v2 = _tile(sch, vec_outer, 3, 4, "bgemm.lanes", fixed)
    c0, c1 = _tile(sch, rc, 2, 64, "bgemm.reduce", fixed)
    sch.reorder(en, r0, v0, r1, v1, c0, c1, r2, v2, v3)
    sch.parallel(sch.fuse(en, r0, v0))
    _register_tile(sch, block, v1, (r2, v2), v3, c0, transposed=(layout == "NCHW") == (vector_axis == "k"))
    return sch


def _register_tile(sch: s_tir.Schedule, block, at, unrolled, lanes, reduce_outer, transposed: bool = False) -> None:
    """Accumulate the GEMM's ``rows x vectors x lanes`` tile (the loops ``unrolled`` and ``lanes``,
    under the whole reduction from ``reduce_outer``) in a local buffer that LLVM keeps in registers,
    written back to ``M`` once per tile at loop ``at``.  ``transposed``: the tile's lanes run along
    M's non-contiguous axis (NCHW vectorized along K), so the local tile is stored transposed to
    keep them contiguous in registers, and the write-back is left scalar."""
    out = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(out, at, preserve_unit_loops=True)
    if transposed:  # local M[e, n, k, p] stored as [.., p, k]
        sch.transform_layout(block, ("write", 0), lambda a, b, y, x: (a, b, x, y))
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lanes)
    _decompose_vectorized(sch, block, reduce_outer)
    if not transposed:  # the write-back loops follow M's order: its contiguous one is the lanes
        sch.vectorize(sch.get_loops(out)[-1])


def _schedule_bgemm_step(sch: s_tir.Schedule, block, fixed: Decisions | None) -> s_tir.Schedule:
    """The GEMM of one step of the fused space (NHWC, computed at the step, which is parallel):
    per ``(e, n)``, per group of U panels (``vec1``), every register tile of the step's rows.
    Knobs: ``bgemm.rows`` (2 perfect factors of the step's tiles: row tiles, rows per register tile),
    ``bgemm.vector`` (lanes), ``bgemm.lanes`` (2 factors of K / lanes: panel groups, vectors per
    register tile), ``bgemm.reduce`` (2 factors of C)."""
    e, n, p, k, rc = sch.get_loops(block)[-5:]
    r1, r2 = _tile(sch, p, 2, 16, "bgemm.rows", fixed)
    vec_outer, v3 = _lanes(sch, k, "bgemm.vector", fixed)
    if v3 is None:
        v1, v2, v3 = _tile(sch, k, 3, 64, "bgemm.lanes", fixed)
    else:
        v1, v2 = _tile(sch, vec_outer, 2, 4, "bgemm.lanes", fixed)
    c0, c1 = _tile(sch, rc, 2, 64, "bgemm.reduce", fixed)
    sch.reorder(e, n, v1, r1, c0, c1, r2, v2, v3)
    _register_tile(sch, block, r1, (r2, v2), v3, c0)
    return sch


# --------------------------------------------------------------------------------------------------
# data_pack
# --------------------------------------------------------------------------------------------------

def schedule_data_pack(sch: s_tir.Schedule, block, fixed: Decisions | None = None) -> s_tir.Schedule:
    """Input transform, vectorized along data_pack's contiguous axis (P for NCHW, C for NHWC).

    The ``alpha x alpha x lanes`` input tiles are gathered once into a local buffer (``input_tile``
    computed at the step, padding inlined), so the unrolled transform reads constant-indexed vectors.
    """
    for name in (DATA_PAD, MATRIX_B):
        if _has_block(sch, name):
            sch.compute_inline(sch.get_sblock(name))
    pack = _pack_block(sch)
    own = len(sch.get(pack).iter_vars)  # (e, n, x0, x1) and (r_a, r_b), or (r_b,) when separable
    nested = _nested(sch, pack, own)
    e, n, x0, x1, *red = sch.get_loops(pack)[-own:]
    x10, x11 = _lanes(sch, x1, "data_pack.lanes", fixed, candidates=(1,) + VECTOR_LANES)
    sch.reorder(x0, x10, e, n, *red, x11)
    step = sch.fuse(x0, x10)
    if not nested:  # in the fused space the enclosing step is the parallel loop
        sch.parallel(step)
    # V accumulates in a local (alpha, alpha, lanes) tile, written to data_pack once (fp16 packs:
    # the storage cast is that write; a reduction cannot be inlined into it).
    if sch.get(pack).name_hint == DATA_PACK_ACC:
        sch.set_scope(pack, 0, "local")
        out = sch.get_sblock(DATA_PACK)
    else:
        out = sch.cache_write(pack, 0, "local")
    sch.reverse_compute_at(out, step, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    if _has_block(sch, DATA_PACK_ROWS):  # separable: T = B_T d per step, in a local tile
        _schedule_rows(sch, sch.get_sblock(DATA_PACK_ROWS), step)
    tile = sch.get_sblock(INPUT_TILE)
    sch.compute_at(tile, step, preserve_unit_loops=True)
    sch.set_scope(tile, 0, "local")
    tile_loops = sch.get_loops(tile)[-4:]
    sch.vectorize(tile_loops[-1])
    unroll_within(sch, tile_loops[:2])
    sch.vectorize(x11)
    unroll_within(sch, (e, n, *red))
    _decompose_vectorized(sch, pack, red[0])
    return sch


def schedule_kernel_pack(sch: s_tir.Schedule, block, fixed: Decisions | None = None) -> s_tir.Schedule:
    """The weight transform ``U = G g G_T``: parallel over (C, K), unrolled transform loops."""
    if _has_block(sch, MATRIX_G):
        sch.compute_inline(sch.get_sblock(MATRIX_G))
    if sch.get(block).name_hint == KERNEL_PACK_ACC and _has_block(sch, KERNEL_PACK):
        sch.reverse_compute_inline(sch.get_sblock(KERNEL_PACK))
    e, n, *channels, ra, rb = sch.get_loops(block)  # channels: (c, k) or, in panels, (k_outer, c, k_inner)
    sch.reorder(*channels, e, n, ra, rb)
    sch.parallel(sch.fuse(*channels))
    unroll_within(sch, (e, n, ra, rb))
    return sch


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------

def _rule_output(sch, block):
    spaces = [False, True] if fusable(sch) else [False]
    out = []
    for fused in spaces:
        fork = sch.copy()
        fork.seed(sch.fork_seed())
        out.append(schedule_output(fork, block, fused=fused))
    return out


def _rule_inverse(sch, block):
    return [schedule_inverse(sch, block)]


def _rule_bgemm(sch, block):
    spaces = []
    for axis in bgemm_vector_axes(_layout(sch)):
        fork = sch.copy()
        fork.seed(sch.fork_seed())
        spaces.append(schedule_bgemm(fork, block, axis))
    return spaces


def _rule_data_pack(sch, block):
    return [schedule_data_pack(sch, block)]


def _rule_kernel_pack(sch, block):
    return [schedule_kernel_pack(sch, block)]


#: rule name (``schedule_rule`` attribute) -> design-space function ``(sch, block) -> [sch, ...]``
RULES: dict[str, Callable] = {
    SCHEDULE_RULES[OUTPUT]: _rule_output,
    SCHEDULE_RULES[INVERSE]: _rule_inverse,
    SCHEDULE_RULES[BGEMM]: _rule_bgemm,
    SCHEDULE_RULES[DATA_PACK]: _rule_data_pack,
    SCHEDULE_RULES[KERNEL_PACK]: _rule_kernel_pack,
}


_registered = False


def register_cpu_rules() -> None:
    """Register every rule as ``s_tir.meta_schedule.cpu.<rule>`` (idempotent: once per process).

    Not done at import: :func:`tvm_winograd.schedule.register_rules` calls it where MetaSchedule will
    look the rules up (generating the llvm design space of a Winograd task)."""
    global _registered
    if _registered:
        return
    for name, fn in RULES.items():
        tvm.register_global_func(f"s_tir.meta_schedule.cpu.{name}", fn, override=True)
    _registered = True


def apply_fixed(func: tirx.PrimFunc, decisions: Decisions | None = None, vector_axis: str = "k") -> tirx.PrimFunc:
    """Apply the CPU design space with fixed decisions (hand-written schedules, experiments, tests).

    ``decisions`` maps knob names to values; a missing knob is sampled.  Lane counts (powers of two
    dividing the axis): ``bgemm.vector``, ``output.tiles`` (NCHW: tiles per vector), ``output.lanes``
    (NHWC), ``data_pack.lanes``.  Perfect-tile factor lists: ``bgemm.rows`` (3 factors),
    ``bgemm.lanes`` (3 factors of the vector axis / lanes: parallel, cache block, vectors per
    register tile), ``bgemm.reduce`` (2 factors).  A ``fused.tiles`` entry (2 factors of the tiles
    per row: steps, tiles per step) selects the fused space, whose ``bgemm.rows`` and
    ``bgemm.lanes`` have 2 factors (no parallel one: the step is the parallel loop).
    """
    return fixed_schedule(func, decisions, vector_axis).mod["main"]


def fixed_schedule(func_or_mod: tirx.PrimFunc | tvm.IRModule, decisions: Decisions | None = None,
                   vector_axis: str = "k") -> s_tir.Schedule:
    """:func:`apply_fixed` as a Schedule: its trace is a point of the design space (the sampling
    instructions carry the fixed decisions), so it can seed a search as a tuning record."""
    sch = s_tir.Schedule(func_or_mod)
    func = sch.mod["main"]
    kind = kind_of(func)
    if kind == "weight_transform":
        name = KERNEL_PACK_ACC if _has_block(sch, KERNEL_PACK_ACC) else KERNEL_PACK
        return schedule_kernel_pack(sch, sch.get_sblock(name), decisions)
    fused = decisions is not None and "fused.tiles" in decisions
    schedule_output(sch, sch.get_sblock(OUTPUT), decisions, fused=fused)
    schedule_bgemm(sch, sch.get_sblock(BGEMM), vector_axis, decisions)
    schedule_data_pack(sch, _pack_block(sch), decisions)
    return sch
