"""Schedule helpers shared by the llvm default, the CPU design spaces and the other rules."""

from __future__ import annotations

from tvm import s_tir, tirx

from ..contract import CONSTANT_MATRICES, DATA_PAD, INPUT_TILE
from ..lowering import with_body

__all__ = ["UNROLL_BUDGET", "root_blocks", "inline_constants", "vector_split", "unroll_within",
           "schedule_inverse_simple", "body_of", "with_body"]


def root_blocks(sch: s_tir.Schedule) -> dict[str, s_tir.schedule.SBlockRV]:
    """Every block of ``main`` by name (the stage names of :mod:`tvm_winograd.compute`)."""
    root = sch.get_sblock("root")
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}


def inline_constants(sch: s_tir.Schedule) -> None:
    """Inline the padding, tile gather, dtype casts and constant matrices into their consumers."""
    for name, block in root_blocks(sch).items():
        if name in (*CONSTANT_MATRICES, DATA_PAD, INPUT_TILE):
            sch.compute_inline(block)


def vector_split(sch: s_tir.Schedule, loop, lanes: int):
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value >= lanes:
        outer, inner = sch.split(loop, [None, lanes])
        return outer, inner
    return None, loop


#: Unrolled statements per transform body: enough to fold the constant matrices of F(2,3)/F(4,3)
#: entirely; larger tiles keep their outer transform loop rolled to keep compile time in seconds.
UNROLL_BUDGET = 1296


def unroll_within(sch: s_tir.Schedule, loops, budget: int = UNROLL_BUDGET) -> None:
    """Unroll the innermost ``loops`` while the product of their extents stays within ``budget``."""
    total = 1
    for loop in reversed(list(loops)):
        total *= int(sch.get(loop).extent)
        if total > budget:
            break
        sch.unroll(loop)


def schedule_inverse_simple(sch: s_tir.Schedule, block, layout: str) -> None:
    """The inverse transform on its own: parallel over output channels (NCHW) or tiles (NHWC), the
    reduction over the alpha x alpha tile outside the m x m outputs, unrolled."""
    a, b, c, d, *red = sch.get_loops(block)  # red: (r_a, r_b), or (r_b,) when separable
    if layout == "NCHW":
        k, p, vh, vw = a, b, c, d
        sch.reorder(k, p, *red, vh, vw)
        sch.parallel(k)
    else:
        vh, vw, p, k = a, b, c, d
        sch.reorder(p, k, *red, vh, vw)
        sch.parallel(p)
    unroll_within(sch, (*red, vh, vw))


def body_of(stmt):
    """The statement inside a ``For`` or an ``SBlock`` (its body) or an ``SBlockRealize`` (its block)."""
    return stmt.block if isinstance(stmt, s_tir.SBlockRealize) else stmt.body
