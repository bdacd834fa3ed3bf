"""A fixed, reasonable CPU schedule for the Winograd PrimFuncs (no search).

Used where nothing was tuned: the functional API and tests.  The searched design spaces live in
``cpu.py`` / ``cuda.py``; this is the baseline they must beat.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx

from ..contract import (BGEMM, DATA_PACK, DATA_PACK_ACC, DATA_PACK_ROWS, INVERSE, INVERSE_ROWS, KERNEL_PACK,
                        DEFAULT_SCHEDULE_ATTR, FALLBACK_REASON_ATTR, KERNEL_PACK_ACC, OUTPUT, func_attr, kind_of,
                        layout_of, tile_of)
from .common import inline_constants, root_blocks, schedule_inverse_simple, unroll_within, vector_split
from .cpu import apply_fixed, fusable
from .fusion import fused_step

logger = logging.getLogger(__name__)

__all__ = ["schedule_llvm_default", "default_decisions", "default_schedule_path"]


def schedule_llvm_default(func: tirx.PrimFunc, layout: str | None = None, lanes: int = 16) -> tirx.PrimFunc:
    """Parallel outer loops, unrolled transforms, vectorized GEMM and output.

    ``func`` is a :func:`~tvm_winograd.compute.winograd_func` or
    :func:`~tvm_winograd.compute.weight_transform_func` PrimFunc of the given ``layout``.
    """
    if layout is None:
        layout = layout_of(func)
    if kind_of(func) != "winograd":
        return _schedule_simple(func, layout, lanes).with_attr(DEFAULT_SCHEDULE_ATTR, "simple")
    fast, reason = _design_space_default(func)
    if fast is not None:
        return fast.with_attr(DEFAULT_SCHEDULE_ATTR, "design_space")
    logger.warning("the CPU design space does not apply to this %s F(%s) layer (%s): simple default schedule",
                   layout, tile_of(func), reason)
    return (_schedule_simple(func, layout, lanes).with_attr(DEFAULT_SCHEDULE_ATTR, "fallback")
            .with_attr(FALLBACK_REASON_ATTR, reason))


def default_schedule_path(func: tirx.PrimFunc) -> str | None:
    """``"design_space"``, ``"simple"`` or ``"fallback"`` (see
    :data:`~tvm_winograd.contract.DEFAULT_SCHEDULE_ATTR`) for a PrimFunc scheduled by
    :func:`schedule_llvm_default`; ``None`` for any other (tuned, unscheduled)."""
    path = func_attr(func, DEFAULT_SCHEDULE_ATTR)
    return None if path is None else str(path)


def _largest_divisor(extent: int, options: tuple[int, ...]) -> int:
    return next(o for o in options if extent % o == 0)


def default_decisions(func: tirx.PrimFunc) -> dict:
    """Fixed knobs of the CPU design space (schedule/cpu.py) for ``func``, chosen from its shapes.

    The GEMM is vectorized along K with 16 lanes where K allows; the register tile is up to 8 rows
    (tiles) x 2 vectors (16 zmm accumulators); the loop order keeps one group of U panels (C x 32
    channels) in cache while every row tile streams past it (``bgemm.rows = [1, P / rows, rows]``,
    ``bgemm.lanes = [K / 32, 1, 2]``), so U — the largest operand of small-spatial layers — is read
    from memory once per GEMM.  NHWC layers with many tiles and a U that fits in the last-level
    cache use the fused space instead (:func:`_fused_decisions`).
    """
    sch = s_tir.Schedule(func)
    gemm = sch.get(sch.get_sblock(BGEMM))
    ext = [int(iv.dom.extent) for iv in gemm.iter_vars]  # NCHW (e, n, k, p, c); NHWC (e, n, p, k, c)
    nchw = layout_of(func) == "NCHW"
    k, p, c = (ext[2], ext[3], ext[4]) if nchw else (ext[3], ext[2], ext[4])
    vector = _largest_divisor(k, (16, 8, 4, 1))  # the space's lane options are powers of two >= 4
    kv = k // vector
    vectors = 2 if kv % 2 == 0 else 1
    rows = _largest_divisor(p, (8, 7, 6, 5, 4, 3, 2, 1))
    chunk = _largest_divisor(c, tuple(range(min(c, 64), 0, -1)))
    decisions = {
        "bgemm.rows": [1, p // rows, rows],
        # no power-of-two lane count divides K: four plain factors, the innermost the "lanes"
        "bgemm.lanes": [kv // vectors, 1, vectors] if vector > 1 else [k, 1, 1, 1],
        "bgemm.reduce": [c // chunk, chunk],
        "data_pack.lanes": _largest_divisor(p if nchw else c, (16, 8, 4, 1)),
    }
    if vector > 1:
        decisions["bgemm.vector"] = vector
    out_width = int(sch.get(sch.get_sblock(OUTPUT)).iter_vars[3 if nchw else 2].dom.extent)
    nw = -(-out_width // tile_of(func))  # tiles per row
    if nchw:
        decisions["output.tiles"] = _largest_divisor(nw, (4, 2, 1))
    else:
        decisions["output.lanes"] = _largest_divisor(k, (16, 8, 4)) if k % 4 == 0 else None
    if fusable(sch):
        decisions.update(_fused_decisions(ext[0], nw, p, c, k, vector, vectors))
    return decisions


#: Accumulators of the fused GEMM's register tile (rows x vectors): 32 zmm registers minus loads.
FUSE_MAX_ACCUMULATORS = 28


def _fused_decisions(alpha: int, nw: int, p: int, c: int, k: int, vector: int, vectors: int) -> dict:
    """The fused space's knobs (NHWC) where :func:`~tvm_winograd.schedule.fusion.fused_step` (the rule the
    heuristic's cost model shares) says to fuse, else ``{}``: steps of that many tiles of one row
    (``nw`` tiles per row), the step's tiles in one register tile while ``rows x vectors``
    accumulators fit in the registers."""
    step = fused_step(alpha, nw, p, c, k)
    if vector <= 1 or step is None:
        return {}
    rows = _largest_divisor(step, tuple(d for d in range(step, 0, -1) if d * vectors <= FUSE_MAX_ACCUMULATORS))
    return {
        "fused.tiles": [nw // step, step],
        "bgemm.rows": [step // rows, rows],
        "bgemm.lanes": [k // vector // vectors, vectors],
    }


def _design_space_default(func: tirx.PrimFunc) -> tuple[tirx.PrimFunc | None, str | None]:
    """The searched CPU space at :func:`default_decisions` (measured here ~1.8x faster than
    :func:`_schedule_simple` on a 64-channel 56x56 layer), or ``(None, reason)`` if it does not apply."""
    try:
        return apply_fixed(func, default_decisions(func), vector_axis="k"), None
    except Exception as err:  # noqa: BLE001 - TVM's schedule errors have many types; the caller reports it
        text = str(err).strip()
        return None, f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _schedule_simple(func: tirx.PrimFunc, layout: str, lanes: int = 16) -> tirx.PrimFunc:
    """Parallel outer loops, unrolled transforms, vectorized GEMM and output (no register tiling)."""
    sch = s_tir.Schedule(func)
    inline_constants(sch)
    blocks = root_blocks(sch)

    if kind_of(func) == "weight_transform":
        acc = blocks.get(KERNEL_PACK_ACC, blocks[KERNEL_PACK])
        e, n, *channels, ra, rb = sch.get_loops(acc)  # (c, k) or, in panels, (k_outer, c, k_inner)
        sch.reorder(*channels, e, n, ra, rb)
        fused = sch.fuse(*channels)
        sch.parallel(fused)
        unroll_within(sch, (e, n, ra, rb))
        if KERNEL_PACK_ACC in blocks:  # the cast to the pack dtype, per (c, k)
            sch.reverse_compute_at(blocks[KERNEL_PACK], fused)
        return sch.mod["main"]

    pack = blocks.get(DATA_PACK_ACC, blocks[DATA_PACK])
    e, n, x0, x1, *red = sch.get_loops(pack)  # x0, x1 = (C, P) for NCHW, (P, C) for NHWC; red: (r_a, r_b) | (r_b,)
    sch.reorder(x0, x1, e, n, *red)
    sch.parallel(x0)
    unroll_within(sch, (e, n, *red))
    for rows in (DATA_PACK_ROWS, INVERSE_ROWS):  # separable first passes: parallel over their 3rd axis
        if rows in blocks:
            loops = sch.get_loops(blocks[rows])
            sch.reorder(loops[2], loops[3], loops[0], loops[1], loops[4])
            sch.parallel(loops[2])
    if DATA_PACK_ACC in blocks:
        sch.reverse_compute_at(blocks[DATA_PACK], x1)

    gemm = blocks[BGEMM]
    e, n, y0, y1, rc = sch.get_loops(gemm)  # (K, P) for NCHW, (P, K) for NHWC
    outer, inner = vector_split(sch, y1, lanes)
    if outer is not None:
        sch.reorder(outer, rc, inner)
    else:
        sch.reorder(rc, inner)
    sch.parallel(sch.fuse(e, n))
    if outer is not None:
        sch.vectorize(inner)
    sch.decompose_reduction(gemm, rc)

    schedule_inverse_simple(sch, blocks[INVERSE], layout)

    out = blocks[OUTPUT]
    l0, l1, l2, l3 = sch.get_loops(out)
    sch.parallel(sch.fuse(l0, l1))
    outer, inner = vector_split(sch, l3, lanes)
    if outer is not None:
        sch.vectorize(inner)
    return sch.mod["main"]

