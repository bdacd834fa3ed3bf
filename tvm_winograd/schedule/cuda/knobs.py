"""Knobs (sampled when tuning, pinned when ``pin`` is set: the default schedule) and block helpers shared
by the SIMT and tensor-core CUDA spaces."""

from __future__ import annotations

from collections.abc import Sequence

from tvm import s_tir, tirx

from ...contract import LAYOUT_ATTR, func_attr

__all__ = ["categorical", "largest_divisor", "tile2", "block_name", "sch_attr", "sch_layout", "layout_label",
           "inline_producers", "bind_threads", "thread_tag", "bgemm_operand_dtypes", "cast_consumer"]


def categorical(sch: s_tir.Schedule, candidates: Sequence[int], pin: int | None) -> tirx.PrimExpr:
    probs = [1.0 / len(candidates)] * len(candidates)
    decision = None if pin is None else list(candidates).index(pin)
    return sch.sample_categorical(list(candidates), probs, decision=decision)


def largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def tile2(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, max_inner: int, pin_inner: int | None):
    """Split ``loop`` in two perfect factors ``[outer, inner]`` with ``inner <= max_inner``."""
    decision = None
    if pin_inner is not None:
        extent = int(sch.get(loop).extent)
        inner = largest_divisor(extent, min(pin_inner, max_inner))
        decision = [extent // inner, inner]
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max_inner, decision=decision)
    return sch.split(loop, factors)


def block_name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def sch_attr(sch: s_tir.Schedule, key: str, default=None):
    return func_attr(sch.mod["main"], key, default)


def sch_layout(sch: s_tir.Schedule) -> str:
    layout = sch_attr(sch, LAYOUT_ATTR)
    if layout is None:
        raise ValueError(f"the PrimFunc lacks the {LAYOUT_ATTR} attribute: build it with tvm_winograd.compute")
    return str(layout)


def layout_label(sch: s_tir.Schedule) -> str:
    return str(sch_attr(sch, LAYOUT_ATTR, "?"))


def inline_producers(sch: s_tir.Schedule, block, names: Sequence[str]) -> None:
    for producer in sch.get_producers(block):
        if block_name(sch, producer) in names:
            sch.compute_inline(producer)


def bind_threads(sch: s_tir.Schedule, loop, threads) -> tuple:
    """Split ``loop`` over ``blockIdx.x`` x ``threadIdx.x``; returns (bx, tx)."""
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return bx, tx


def thread_tag(sch: s_tir.Schedule, loop) -> str | None:
    node = sch.get(loop)
    return None if node.thread_binding is None else str(node.thread_binding.thread_tag)


def bgemm_operand_dtypes(sch: s_tir.Schedule, gemm) -> tuple[str, ...]:
    return tuple(str(region.source.dtype) for region in sch.get(gemm).reads)


def cast_consumer(sch: s_tir.Schedule, block, name: str):
    """The dtype-cast block ``name`` that consumes ``block`` (fp16 storage of an fp32 transform), if any."""
    return next((c for c in sch.get_consumers(block) if block_name(sch, c) == name), None)
