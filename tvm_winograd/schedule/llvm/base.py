"""What every llvm rule shares: the rule base class, the target's vector width and core count, and the
two loop transformations every rule ends with (a parallel outer loop, a vectorized contiguous inner
loop with a correct remainder).

The attribute keys the rules write come from :mod:`tvm_winograd.contract`; nothing in this package
imports the pipeline (``tvm_winograd.export``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target
from tvm.target.codegen import target_has_features

__all__ = [
    "LlvmRule",
    "LoopPlan",
    "ScheduleError",
    "vector_bits",
    "vector_lanes",
    "num_cores",
    "extent_of",
    "vars_in",
    "inline_injective",
    "vectorize_inner",
    "parallelize",
]

logger = logging.getLogger(__name__)

#: Below this many output elements a function runs on one thread: TVM's parallel launch costs a few
#: microseconds, the time a core needs to stream ~16k floats.
MIN_PARALLEL_ELEMENTS = 16384


class LlvmRule(ScheduleRule):
    """A DLight schedule rule for the llvm target, with the name the compile report shows.

    ``apply(func, target, tunable)`` returns ``None`` (not applicable), a Schedule (the fixed
    default, ``tunable=False``) or a list of Schedules (a design space, ``tunable=True``).
    """

    name = "llvm-rule"

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"


def vector_bits(target: Target) -> int:
    """The widest SIMD register of ``target`` in bits (512 AVX-512, 256 AVX/AVX2, else 128).

    TVM's ``llvm_get_vector_width`` answers 512 for every x86 CPU here (checked on znver3, haswell
    and generic), so the features decide."""
    if target_has_features("avx512f", target):
        return 512
    if target_has_features("avx", target):
        return 256
    return 128


def vector_lanes(dtype: str, target: Target) -> int:
    """Lanes of one vector operation on ``dtype``: two SIMD registers (16 fp32 on AVX2, a 64-byte
    cache line; LLVM interleaves the two halves)."""
    return max(2 * vector_bits(target) // tvm_ffi.dtype(str(dtype)).bits, 1)


def num_cores(target: Target) -> int:
    """``num-cores`` of the target (what MetaSchedule uses), at least 1."""
    cores = target.attrs.get("num-cores") if target.attrs is not None else None
    return max(int(cores), 1) if cores is not None else 1


def extent_of(sch: s_tir.Schedule, loop) -> int | None:
    """The constant extent of ``loop``, or None if it is symbolic."""
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def vars_in(expr) -> set:
    """The variables ``expr`` mentions."""
    found: set = set()
    tvm_ffi.structural_walk(expr, [(tirx.Var, found.add)], order="post")
    return found


def inline_injective(sch: s_tir.Schedule, keep: tuple = ()) -> list:
    """Inline every block that can be inlined (into its consumers, else its producer), repeatedly.

    Blocks in ``keep`` (by ``same_as``) stay.  Returns the remaining child blocks of the root in
    program order.  Inlining is what keeps a fused chain fused: each intermediate is computed where
    it is used and never written to memory.
    """
    while True:
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if any(block.same_as(k) or sch.get(block).same_as(sch.get(k)) for k in keep):
                continue
            for primitive in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    primitive(block)
                except ScheduleError:
                    continue
                changed = True
                break
            if changed:
                break
        if not changed:
            return list(sch.get_child_blocks(sch.get_sblock("root")))


#: The longest axis vectorized whole when no vector width divides it (LLVM splits an odd-length
#: vector, e.g. 27 fp32, into full registers and a short one; no scalar remainder loop).
MAX_WHOLE_VECTOR = 64
#: Parallel iterations per core the outer loops must give before the loops inside them stay serial
#: (:func:`parallelize`'s loop over vectors, the pooling rule's inner spatial loops).
TASKS_PER_CORE = 4


@dataclass
class LoopPlan:
    """How :func:`vectorize_inner` shaped a block's innermost loops."""

    outer: list  # the loops left outside the vector axis (to parallelize)
    vector_outer: object | None  # the loop over whole vectors, if it may join the parallel loop
    lanes: int
    peeled: object | None = None  # the loop over the full vectors of a peeled axis (under ``outer``)


def vectorize_inner(sch: s_tir.Schedule, loops: list, lanes: int) -> LoopPlan:
    """Vectorize the contiguous innermost axis of a loop nest; returns the loops around it.

    The trailing loops are fused while the axis is shorter than a vector (NCHW 7x7 -> 49).  The
    axis is split into vectors of ``lanes`` if that divides it, else of ``lanes / 2`` or
    ``lanes / 4`` (>= 4) if one does; an axis up to :data:`MAX_WHOLE_VECTOR` long is otherwise one
    vector; a longer one is partitioned (``sch.loop_partition``) into its full vectors and a
    remainder vectorized on its own, so no lane runs under a condition.  (The split's predicate with
    ``pragma_loop_partition_hint`` would leave the peeling to TVM's LoopPartition, which builds
    ``int32 + int64`` index expressions on int64 loops and fails, checked on a resize.)
    """
    loops = list(loops)
    axis = loops.pop()
    extent = extent_of(sch, axis)
    while loops and extent is not None and extent < lanes:
        prev_extent = extent_of(sch, loops[-1])
        if prev_extent is None:
            break
        axis = sch.fuse(loops.pop(), axis)
        extent *= prev_extent
    if extent is None:  # symbolic: vectors with a predicate (correct; the vectorizer scalarizes it)
        vo, vi = sch.split(axis, [None, lanes])
        sch.vectorize(vi)
        return LoopPlan(loops, None, lanes)
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and extent % w == 0), None)
    if width is None or extent <= width:
        if extent <= MAX_WHOLE_VECTOR or extent <= lanes:
            if extent > 1:
                sch.vectorize(axis)
            return LoopPlan(loops, None, lanes=extent)
        main, tail = sch.loop_partition(axis, [extent - extent % lanes, None])
        vo, vi = sch.split(main, [None, lanes])
        sch.vectorize(vi)
        sch.vectorize(tail)
        return LoopPlan(loops, None, lanes, peeled=vo)
    vo, vi = sch.split(axis, [None, width])
    sch.vectorize(vi)
    return LoopPlan(loops + [vo], vo, lanes=width)


def parallelize(sch: s_tir.Schedule, plan: LoopPlan, elements: int | None, cores: int) -> object | None:
    """Fuse the loops outside the vector axis into one parallel loop; returns it (None if serial).

    TVM's runtime gives each worker one contiguous range of a parallel loop, so a long fused loop
    costs nothing extra; when the loops outside the vectors give fewer than :data:`TASKS_PER_CORE`
    iterations per core, the loop over vectors joins them.  Functions below :data:`MIN_PARALLEL_ELEMENTS` stay serial
    (the launch would cost more than the work).
    """
    if cores <= 1 or (elements is not None and elements < MIN_PARALLEL_ELEMENTS):
        return None
    outer = list(plan.outer)
    if not outer:
        if plan.peeled is None:
            return None
        sch.parallel(plan.peeled)  # a 1-D axis: its full vectors in parallel, the remainder after
        return plan.peeled
    extents = [extent_of(sch, loop) for loop in outer]
    if plan.vector_outer is not None and len(outer) > 1:
        head = extents[:-1]
        if None not in head and math.prod(head) >= TASKS_PER_CORE * cores:
            outer = outer[:-1]  # enough outer iterations: whole rows of vectors per iteration
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    return fused
