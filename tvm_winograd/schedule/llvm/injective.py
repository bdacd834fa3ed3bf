"""Injective functions: elementwise chains, broadcasts, concatenate, transpose, reshape, pad,
depth-to-space, resize, layout transforms (every block spatial, no reduction).

The chain is inlined into the blocks that write the function's outputs (one pass over memory, no
intermediate buffers), then each remaining block gets the shape every rule here ends with: the
contiguous inner axis vectorized (remainder peeled, :func:`~.base.vectorize_inner`), the loops
outside it fused into one parallel loop (:func:`~.base.parallelize`).
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.target import Target

from .base import LlvmRule, extent_of, inline_injective, num_cores, parallelize, vector_lanes, vectorize_inner

__all__ = ["Injective", "is_spatial_block", "schedule_spatial_block"]


def is_spatial_block(sch: s_tir.Schedule, block) -> bool:
    """Every iteration variable of ``block`` is data parallel (no reduction, no opaque one)."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _output_dtype(sch: s_tir.Schedule, block) -> str:
    writes = sch.get(block).writes
    return str(writes[0].source.dtype) if writes else "float32"


def schedule_spatial_block(sch: s_tir.Schedule, block, target: Target, lanes: int | None = None) -> None:
    """Vectorize the inner axis and parallelize the outer loops of one spatial block (in place)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [extent_of(sch, loop) for loop in loops]
    elements = math.prod(extents) if all(e is not None for e in extents) else None
    if lanes is None:
        lanes = vector_lanes(_output_dtype(sch, block), target)
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
