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

Functions with several reductions (softmax, layer norm) are DLight's CPU Reduction rule's, next in
the list.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from .base import MAX_WHOLE_VECTOR, MIN_PARALLEL_ELEMENTS, LlvmRule, extent_of, inline_injective, num_cores, vector_lanes
from .injective import is_spatial_block, schedule_spatial_block

__all__ = ["Reduction"]


def _uses(expr, var) -> bool:
    """Whether ``expr`` mentions ``var``."""
    found = []
    tvm_ffi.structural_walk(expr, [(tvm.ir.expr.Var, lambda v: found.append(v.same_as(var)))], order="post")
    return any(found)


def _vector_width(extent: int, lanes: int) -> int:
    """Lanes that divide ``extent`` (lanes, lanes/2, lanes/4), else the whole axis if it is short
    (one odd-length vector), else ``lanes`` (the last vector runs under the split's predicate)."""
    if extent <= lanes:
        return extent
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and extent % w == 0), None)
    if width is None:
        width = extent if extent <= MAX_WHOLE_VECTOR else lanes
    return width


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
        spatial_inner = isinstance(last_out, tvm.ir.expr.Var) and _uses(dominant.region[-1].min, last_out)
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
        outer = [*kept, vo]
        work = elements * math.prod(extent_of(sch, lp) for lp in reduce)
        if outer and num_cores(target) > 1 and work >= MIN_PARALLEL_ELEMENTS:
            # before decompose_reduction: parallel demands a reduction block (with its init) below it
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        init = sch.decompose_reduction(red, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])

    @staticmethod
    def _reduction_inner(sch, red, spatial, reduce, epilogue, lanes, elements, target) -> None:
        sch.reorder(*spatial, *reduce)
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        inner = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
        extent = extent_of(sch, inner)
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
            lane, red_outer = sch.get_loops(partial)[-2:]
            sch.reorder(red_outer, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(partial, red_outer)
            sch.vectorize(sch.get_loops(init)[-1])
        for b in epilogue:
            sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
        work = elements * extent
        if num_cores(target) > 1 and work >= MIN_PARALLEL_ELEMENTS and extent_of(sch, outer) > 1:
            sch.parallel(outer)
