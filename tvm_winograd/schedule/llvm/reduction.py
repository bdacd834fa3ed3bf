"""Functions with one reduction block: mean / sum / global pooling, max and average pooling, with
their padding inlined and their epilogue (the average's divide, an activation) fused.

Two shapes, by which axis the data is contiguous in:

* **spatial inner** (NHWC pooling and global pooling, any reduction whose input's last index is the
  output's last index): the kept axes outside, the reduction loops, then the contiguous output axis
  as a vector accumulated in registers -- ``acc[c:c+16] += x[n, h, w, c:c+16]``.
* **reduction inner** (a sum over the last axis, NCHW global pooling): parallel over the kept axes;
  the innermost reduction is split into vectors and ``rfactor``-ed into ``lanes`` partial sums
  (vector adds), which are summed at the end, when its extent is a multiple of the vector width;
  otherwise it stays a scalar loop.

Functions with several reductions over rows (softmax, layer norm) are :class:`RowReduction`'s;
what it declines, DLight's CPU Reduction rule's, next in the list.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .base import (MAX_WHOLE_VECTOR, MIN_PARALLEL_ELEMENTS, TASKS_PER_CORE, LlvmRule, extent_of, inline_injective,
                   num_cores, vars_in, vector_lanes, vectorize_inner)
from .injective import is_spatial_block, schedule_spatial_block

__all__ = ["Reduction", "RowReduction"]


def _vector_width(extent: int, lanes: int) -> int:
    """Lanes that divide ``extent`` (lanes, lanes/2, lanes/4), else the whole axis if it is short
    (one odd-length vector), else ``lanes`` (the last vector runs under the split's predicate)."""
    if extent <= lanes:
        return extent
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and extent % w == 0), None)
    if width is None:
        width = extent if extent <= MAX_WHOLE_VECTOR else lanes
    return width


#: A reduction of at most this many iterations (a pooling window: 3x3, 5x5) is unrolled.
MAX_UNROLLED_WINDOW = 25


def _parallel_prefix(sch: s_tir.Schedule, outer: list, cores: int) -> list:
    """The outer loops to fuse into the parallel one: the shortest prefix with ``TASKS_PER_CORE``
    tasks per core (all of them if none has).  The loops below stay serial, so that a pooling
    window's padding conditions and indices are plain functions of its own loops (measured, NHWC
    3x3/2 max pool on (1, 112, 112, 64), 2 threads: rows parallel 0.033 ms, rows x columns x
    channel vectors fused 0.11 ms)."""
    tasks = 1
    for i, loop in enumerate(outer):
        tasks *= extent_of(sch, loop)
        if tasks >= TASKS_PER_CORE * cores:
            return outer[:i + 1]
    return outer


class Reduction(LlvmRule):
    """One reduction block (plus inlined producers and a fused epilogue); see the module docstring."""

    name = "reduction"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        probe = s_tir.Schedule(func)
        blocks = probe.get_child_blocks(probe.get_sblock("root"))
        if sum(not is_spatial_block(probe, b) for b in blocks) != 1 or any(probe.get_child_blocks(b) for b in blocks):
            return None
        sch = s_tir.Schedule(func)
        remaining = inline_injective(sch)
        (red,) = [b for b in remaining if not is_spatial_block(sch, b)]
        stmt = sch.get(red)
        loops = sch.get_loops(red)
        if len(loops) != len(stmt.iter_vars) or not stmt.writes or not stmt.reads:
            return None
        position = [i for i, b in enumerate(remaining) if sch.get(b).same_as(stmt)][0]
        before, after = remaining[:position], remaining[position + 1:]
        spatial = [lp for lp, iv in zip(loops, stmt.iter_vars) if iv.iter_type == tirx.IterVar.DataPar]
        reduce = [lp for lp, iv in zip(loops, stmt.iter_vars) if iv.iter_type == tirx.IterVar.CommReduce]
        if not spatial or not reduce or len(spatial) + len(reduce) != len(loops):
            return None
        extents = [extent_of(sch, lp) for lp in loops]
        if None in extents:
            return None
        lanes = vector_lanes(str(stmt.writes[0].source.dtype), target)
        last_out = stmt.writes[0].region[-1].min
        dominant = max(stmt.reads, key=lambda r: len(r.region))
        spatial_inner = isinstance(last_out, tvm.ir.expr.Var) and any(
            v.same_as(last_out) for v in vars_in(dominant.region[-1].min))
        for b in before:
            schedule_spatial_block(sch, b, target)
        elements = math.prod(extent_of(sch, lp) for lp in spatial)
        if spatial_inner:
            self._spatial_inner(sch, red, spatial, reduce, after, lanes, elements, target)
        else:
            self._reduction_inner(sch, red, spatial, reduce, after, lanes, elements, target)
        return sch

    @staticmethod
    def _spatial_inner(sch, red, spatial, reduce, epilogue, lanes, elements, target) -> None:
        *kept, inner = spatial
        extent = extent_of(sch, inner)
        width = _vector_width(extent, lanes)
        vo, vi = sch.split(inner, [None, width])
        sch.reorder(*kept, vo, *reduce, vi)
        acc = sch.cache_write(red, 0, "local")
        sch.reverse_compute_at(acc, vo, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(acc)[-1])
        for b in epilogue:
            sch.reverse_compute_at(b, vo, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(b)[-1])
        sch.vectorize(vi)
        if math.prod(extent_of(sch, lp) for lp in reduce) <= MAX_UNROLLED_WINDOW:  # a pooling window
            for lp in reduce:
                sch.unroll(lp)
        outer = [*kept, vo]
        work = elements * math.prod(extent_of(sch, lp) for lp in reduce)
        if outer and num_cores(target) > 1 and work >= MIN_PARALLEL_ELEMENTS:
            # before decompose_reduction: parallel demands a reduction block (with its init) below it
            prefix = _parallel_prefix(sch, outer, num_cores(target))
            sch.parallel(sch.fuse(*prefix) if len(prefix) > 1 else prefix[0])
        init = sch.decompose_reduction(red, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])

    @staticmethod
    def _reduction_inner(sch, red, spatial, reduce, epilogue, lanes, elements, target) -> None:
        sch.reorder(*spatial, *reduce)
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        inner = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
        extent = extent_of(sch, inner)
        partial = None
        if extent >= lanes and extent % lanes == 0:
            # ``lanes`` partial results, one per vector lane: rf[s, l] += x[s, ro * lanes + l]
            # compute_at makes the partial block's loops in its iterators' order, which rfactor
            # starts with the new (spatial) lane axis: (outer, lane, ro); the lane must be innermost
            # to be vectorized
            ro, ri = sch.split(inner, [None, lanes])
            partial = sch.rfactor(ri, factor_axis=len(sch.get(red).writes[0].region))
            # unit loops kept: with one vector of K (ro of extent 1) the loop pair below must exist
            sch.compute_at(partial, outer, preserve_unit_loops=True)
            sch.set_scope(partial, 0, "local")
        for b in epilogue:
            sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
        work = elements * extent
        if num_cores(target) > 1 and work >= MIN_PARALLEL_ELEMENTS and extent_of(sch, outer) > 1:
            sch.parallel(outer)  # before decompose_reduction: parallel demands reduction blocks below it
        if partial is not None:
            _vectorize_partial(sch, partial, outer)


def _vectorize_partial(sch: s_tir.Schedule, partial, outer) -> None:
    """The ``rfactor``-ed block ``partial`` computed at loop ``outer``: its lane loop (the first below
    ``outer``: compute_at orders the loops as the block's iterators, the new lane axis first, then
    one unit loop per kept axis) moved innermost and vectorized, with its init."""
    loops = list(sch.get_loops(partial))
    below = loops[[i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(outer))][0] + 1:]
    lane, red_outer = below[0], below[-1]
    sch.reorder(red_outer, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(partial, red_outer)
    sch.vectorize(sch.get_loops(init)[-1])


def _kinds(sch: s_tir.Schedule, block) -> str:
    """The iteration kinds of ``block``'s variables: ``S`` data parallel, ``R`` reduction, ``O`` other."""
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


class RowReduction(LlvmRule):
    """Row-wise chains of reductions and elementwise steps over the same leading axes: softmax
    (max, exp, sum, divide), layer norm (mean, variance, normalize), RMS norm.

    One parallel loop over the rows (the leading axes every block shares) with every block
    computed inside it, so a row is read from memory once and the rest stays in L1; each reduction
    over the row is ``rfactor``-ed into a vector of partial results (vector max / add, summed once
    per row), the elementwise steps vectorized.  DLight's CPU Reduction, next in the list, computes
    the same blocks inside the same loop but reduces one element at a time, a chain of dependent
    scalar adds (measured: softmax over (32, 384, 384) 4.1 ms, 27 % of its DRAM limit).  Rows whose
    reduced extent is not a multiple of 8 are left to it.
    """

    name = "row-reduction"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) < 2 or any(sch.get_child_blocks(b) for b in blocks):
            return None
        kinds = [_kinds(sch, b) for b in blocks]
        if "R" in kinds[-1] or not any("R" in k for k in kinds) or any("O" in k for k in kinds):
            return None
        if any(len(sch.get_loops(b)) != len(k) for b, k in zip(blocks, kinds)):
            return None
        rows = min(len(k) - len(k.lstrip("S")) for k in kinds)
        if rows == 0 or any(k[rows:].strip("R") for k in kinds if "R" in k):
            return None  # reduction blocks must be rows x (reduced axes only)
        dtype = str(sch.get(blocks[-1]).writes[0].source.dtype)
        lanes = vector_lanes(dtype, target)
        partials = []
        for block, kind in zip(blocks, kinds):
            if "R" not in kind:
                continue
            reduce = sch.get_loops(block)[rows:]
            inner = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
            extent = extent_of(sch, inner)
            width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 8 and extent and extent % w == 0), None)
            if width is None:
                return None
            _, lane = sch.split(inner, [None, width])
            partials.append(sch.rfactor(lane, factor_axis=rows))
        last = sch.get_child_blocks(sch.get_sblock("root"))[-1]
        loops = sch.get_loops(last)
        row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
        row_count = extent_of(sch, row)
        for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
            sch.compute_at(block, row, preserve_unit_loops=True)
        work = math.prod(extent_of(sch, lp) or 1 for lp in sch.get_loops(last))
        if num_cores(target) > 1 and work >= MIN_PARALLEL_ELEMENTS and (row_count or 2) > 1:
            sch.parallel(row)
        for block in sch.get_child_blocks(row):
            if any(block.same_as(p) or sch.get(block).same_as(sch.get(p)) for p in partials):
                _vectorize_partial(sch, block, row)
            elif "R" not in _kinds(sch, block) and len(sch.get_loops(block)) > 1:
                vectorize_inner(sch, sch.get_loops(block)[1:], lanes)
        return sch
