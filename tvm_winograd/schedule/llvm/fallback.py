"""The catch-all rule: whatever the other rules do not recognise still runs in parallel and, where
its innermost loop is spatial, vectorized.  Functions it schedules are counted as ``fallback`` in
the compile report, so a model that leans on it shows up.

Per remaining block (after inlining what can be inlined): spatial loops outside, reduction loops
inside (a legal reorder for a reduction block), the spatial loops fused and parallel; a block
without reduction gets the injective shape (vectorized inner axis).  Blocks with opaque iterators,
nested blocks or loops that are not one per iterator are left as they are.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.target import Target

from .base import MIN_PARALLEL_ELEMENTS, LlvmRule, extent_of, inline_injective, num_cores
from .injective import is_spatial_block, schedule_spatial_block

__all__ = ["Fallback"]


class Fallback(LlvmRule):
    """Parallelize (and vectorize where it is spatial) anything; see the module docstring."""

    name = "fallback"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        for block in inline_injective(sch):
            stmt = sch.get(block)
            loops = sch.get_loops(block)
            if sch.get_child_blocks(block) or not loops or len(loops) != len(stmt.iter_vars):
                continue
            kinds = [iv.iter_type for iv in stmt.iter_vars]
            if any(k not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce) for k in kinds):
                continue
            if is_spatial_block(sch, block):
                schedule_spatial_block(sch, block, target)
                continue
            spatial = [lp for lp, k in zip(loops, kinds) if k == tirx.IterVar.DataPar]
            reduce = [lp for lp, k in zip(loops, kinds) if k == tirx.IterVar.CommReduce]
            if not spatial:
                continue
            extents = [extent_of(sch, lp) for lp in loops]  # before the fuse removes these loops
            work = math.prod(extents) if None not in extents else None
            sch.reorder(*spatial, *reduce)
            outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            if num_cores(target) > 1 and (work is None or work >= MIN_PARALLEL_ELEMENTS):
                sch.parallel(outer)
        return sch
