"""Injective functions: elementwise chains, broadcasts, concatenate, transpose, reshape, pad,
depth-to-space, resize, layout transforms (every block spatial, no reduction).

The chain is inlined into the blocks that write the function's outputs (one pass over memory, no
intermediate buffers), then each remaining block gets the shape every rule here ends with: the
contiguous inner axis vectorized (remainder peeled, :func:`~.base.vectorize_inner`), the loops
outside it fused into one parallel loop (:func:`~.base.parallelize`).  A block that reads an input
across its contiguous axis (a transpose, a layout transform) is tiled instead, so that both the
lines it reads and the lines it writes are used whole (:func:`transposed_tile`).
"""

from __future__ import annotations

import math

import tvm_ffi

from tvm import s_tir, tirx
from tvm.target import Target

from .base import (MIN_PARALLEL_ELEMENTS, LlvmRule, LoopPlan, extent_of, inline_injective, num_cores, parallelize,
                   vars_in, vector_lanes, vectorize_inner)

__all__ = ["Injective", "is_spatial_block", "schedule_spatial_block", "transposed_tile"]


def is_spatial_block(sch: s_tir.Schedule, block) -> bool:
    """Every iteration variable of ``block`` is data parallel (no reduction, no opaque one)."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _output_dtype(sch: s_tir.Schedule, block) -> str:
    writes = sch.get(block).writes
    return str(writes[0].source.dtype) if writes else "float32"


def switch_points(sch: s_tir.Schedule, block) -> list[int]:
    """Where the innermost axis of ``block`` crosses a condition of its body: the boundaries of a
    concatenate along that axis (``if_then_else(48 <= c, C[c - 48], if_then_else(32 <= c, ...))``),
    or of a pad. Sorted, strictly inside the axis."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or not stmt.iter_vars:
        return []
    extent = extent_of(sch, loops[-1])
    axis = stmt.iter_vars[-1].var
    if extent is None:
        return []
    points: set[int] = set()
    # (op, constant on the left?) -> the switch point's offset from the constant: t <= v and v >= t
    # switch at t, t < v and v > t at t + 1, v < t and t > v at t, v <= t and t >= v at t + 1
    offsets = {(tirx.LE, True): 0, (tirx.LT, True): 1, (tirx.LT, False): 0, (tirx.LE, False): 1,
               (tirx.GE, False): 0, (tirx.GT, False): 1, (tirx.GT, True): 0, (tirx.GE, True): 1}

    def visit(node) -> None:
        for const_left in (True, False):
            const, var = (node.a, node.b) if const_left else (node.b, node.a)
            if isinstance(const, tirx.IntImm) and isinstance(var, tirx.Var) and var.same_as(axis):
                points.add(int(const.value) + offsets[(type(node), const_left)])

    tvm_ffi.structural_walk(stmt.body, [(kind, visit) for kind in (tirx.LT, tirx.LE, tirx.GT, tirx.GE)], order="post")
    return sorted(p for p in points if 0 < p < extent)


def transposed_tile(sch: s_tir.Schedule, block, lanes: int) -> tuple[int, int] | None:
    """``(axis, tile)`` when ``block`` reads a buffer across its contiguous axis: the read's last
    index follows loop ``axis`` of the block, not its innermost loop, which steps through the read
    with a stride of a whole row.  Vectorized along the output alone, each vector then touches
    ``tile`` input lines and uses 4 bytes of each; 4 KiB-strided rows (1024 fp32 channels) also
    alias in L1.  ``tile`` (a vector of ``lanes / 2``, or 8 or 4) divides both extents; ``None``
    for anything else (contiguous reads, broadcasts, symbolic or indivisible extents)."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    ivs = [iv.var for iv in stmt.iter_vars]
    if len(loops) != len(ivs) or len(ivs) < 2:
        return None
    extents = [extent_of(sch, loop) for loop in loops]
    inner = ivs[-1]
    for read in stmt.reads:
        if len(read.region) < 2:
            continue
        last = vars_in(read.region[-1].min)
        if any(v.same_as(inner) for v in last) or len(last) != 1:
            continue  # contiguous along the output's inner axis, or not a plain transposition
        if not any(v.same_as(inner) for r in read.region[:-1] for v in vars_in(r.min)):
            continue  # a broadcast along the inner axis
        (var,) = last
        axis = next((i for i, v in enumerate(ivs[:-1]) if v.same_as(var)), None)
        if axis is None or extents[axis] is None or extents[-1] is None:
            return None
        tile = next((t for t in (lanes // 2, 8, 4) if t >= 4 and extents[axis] % t == 0 and extents[-1] % t == 0), None)
        return None if tile is None else (axis, tile)
    return None


def _schedule_transposed(sch: s_tir.Schedule, loops: list, axis: int, tile: int, elements: int | None,
                         cores: int) -> None:
    """Tiles of ``tile`` x ``tile`` over loop ``axis`` and the innermost loop: the tile's rows
    (unrolled) outside its vectors (measured, 2 threads: (1, 56, 56, 1024) -> NCHW 11.4 -> 1.6 ms,
    (1, 256, 224, 224) -> NHWC 18.6 -> 7.0 ms, (1, 224, 224, 256) -> NCHW 33 -> 5.6 ms)."""
    rows, row = sch.split(loops[axis], [None, tile])
    cols, col = sch.split(loops[-1], [None, tile])
    outer = loops[:axis] + [rows] + loops[axis + 1:-1]
    sch.reorder(*outer, cols, row, col)
    sch.vectorize(col)
    sch.unroll(row)
    if cores > 1 and (elements is None or elements >= MIN_PARALLEL_ELEMENTS):
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def schedule_spatial_block(sch: s_tir.Schedule, block, target: Target, lanes: int | None = None) -> None:
    """Vectorize the inner axis and parallelize the outer loops of one spatial block (in place).

    Where the inner axis crosses conditions (a concatenate along it, e.g. DenseNet's channel
    concatenations of up to 32 inputs) at whole vectors (of 2, 1 or 1/2 registers), it is split
    into vectors and the loop over vectors partitioned at them (``sch.loop_partition``; a
    partitioned loop cannot be split any more): each part reads one input and its vectors are
    plain loads, instead of every lane selecting among all the inputs (measured, one thread: a 16-input concat + scale + ReLU at 14x14x736,
    DenseNet's, 0.30 -> 0.05 ms)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [extent_of(sch, loop) for loop in loops]
    elements = math.prod(extents) if all(e is not None for e in extents) else None
    if lanes is None:
        lanes = vector_lanes(_output_dtype(sch, block), target)
    points = switch_points(sch, block) if len(loops) > 1 else []
    width = next((w for w in (lanes, lanes // 2, lanes // 4)
                  if points and w >= 4 and all(p % w == 0 for p in points + [extents[-1]])), None)
    if width is not None:  # whole vectors per part: split first (a partitioned loop cannot be split)
        parallelize(sch, LoopPlan(loops[:-1], None, width), elements, num_cores(target))
        vectors, inner = sch.split(loops[-1], [None, width])
        sch.vectorize(inner)
        sch.loop_partition(vectors, [b // width - a // width for a, b in zip([0] + points, points)] + [None])
        return
    tile = transposed_tile(sch, block, lanes)
    if tile is not None:
        _schedule_transposed(sch, loops, *tile, elements, num_cores(target))
        return
    plan = vectorize_inner(sch, loops, lanes)
    parallelize(sch, plan, elements, num_cores(target))


class Injective(LlvmRule):
    """Functions made only of spatial blocks; see the module docstring."""

    name = "injective"

    #: The vector widths of the search space, in multiples of the default (a cache line).
    TUNABLE_WIDTHS = (1, 0.5, 2)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        probe = s_tir.Schedule(func)
        blocks = probe.get_child_blocks(probe.get_sblock("root"))
        if not blocks or not all(is_spatial_block(probe, b) and not probe.get_child_blocks(b) for b in blocks):
            return None
        if not tunable:
            return self._schedule(func, target, 1)
        return [self._schedule(func, target, w) for w in self.TUNABLE_WIDTHS]

    @staticmethod
    def _schedule(func: tirx.PrimFunc, target: Target, width: float) -> s_tir.Schedule:
        sch = s_tir.Schedule(func)
        for block in inline_injective(sch):
            lanes = max(int(vector_lanes(_output_dtype(sch, block), target) * width), 1)
            schedule_spatial_block(sch, block, target, lanes)
        return sch
