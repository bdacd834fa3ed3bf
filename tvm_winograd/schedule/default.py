"""A fixed, reasonable CPU schedule for the Winograd PrimFuncs (no search).

Used where nothing was tuned: the functional API and tests.  The searched design spaces live in
``cpu.py`` / ``cuda.py``; this is the baseline they must beat.
"""

from __future__ import annotations

from tvm import s_tir, tirx

__all__ = ["schedule_llvm_default", "inline_constants"]


def _blocks(sch: s_tir.Schedule) -> dict[str, s_tir.schedule.SBlockRV]:
    """Every block of ``main`` by name (the stage names of :mod:`tvm_winograd.compute`)."""
    root = sch.get_sblock("root")
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}


def inline_constants(sch: s_tir.Schedule) -> None:
    """Inline the padding, tile gather, dtype casts and constant matrices into their consumers."""
    for name, block in _blocks(sch).items():
        if name in ("A", "B", "G", "data_pad", "input_tile"):
            sch.compute_inline(block)


def _vector_split(sch: s_tir.Schedule, loop, lanes: int):
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value >= lanes:
        outer, inner = sch.split(loop, [None, lanes])
        return outer, inner
    return None, loop


#: Unrolled statements per transform body: enough to fold the constant matrices of F(2,3)/F(4,3)
#: entirely; larger tiles keep their outer transform loop rolled to keep compile time in seconds.
UNROLL_BUDGET = 1296


def _unroll_within(sch: s_tir.Schedule, loops, budget: int = UNROLL_BUDGET) -> None:
    """Unroll the innermost ``loops`` while the product of their extents stays within ``budget``."""
    total = 1
    for loop in reversed(list(loops)):
        total *= int(sch.get(loop).extent)
        if total > budget:
            break
        sch.unroll(loop)


def schedule_llvm_default(func: tirx.PrimFunc, layout: str | None = None, lanes: int = 16) -> tirx.PrimFunc:
    """Parallel outer loops, unrolled transforms, vectorized GEMM and output.

    ``func`` is a :func:`~tvm_winograd.compute.winograd_func` or
    :func:`~tvm_winograd.compute.weight_transform_func` PrimFunc of the given ``layout``.
    """
    if layout is None:
        layout = str(func.attrs["tvm_winograd.layout"])
    sch = s_tir.Schedule(func)
    inline_constants(sch)
    blocks = _blocks(sch)
    nchw = layout == "NCHW"

    if func.attrs["tvm_winograd.kind"] == "weight_transform":
        acc = blocks.get("kernel_pack_acc", blocks["kernel_pack"])
        e, n, c, k, ra, rb = sch.get_loops(acc)
        sch.reorder(c, k, e, n, ra, rb)
        fused = sch.fuse(c, k)
        sch.parallel(fused)
        _unroll_within(sch, (e, n, ra, rb))
        if "kernel_pack_acc" in blocks:  # the cast to the pack dtype, per (c, k)
            sch.reverse_compute_at(blocks["kernel_pack"], fused)
        return sch.mod["main"]

    pack = blocks.get("data_pack_acc", blocks["data_pack"])
    e, n, x0, x1, ra, rb = sch.get_loops(pack)  # x0, x1 = (C, P) for NCHW, (P, C) for NHWC
    sch.reorder(x0, x1, e, n, ra, rb)
    sch.parallel(x0)
    _unroll_within(sch, (e, n, ra, rb))
    if "data_pack_acc" in blocks:
        sch.reverse_compute_at(blocks["data_pack"], x1)

    gemm = blocks["bgemm"]
    e, n, y0, y1, rc = sch.get_loops(gemm)  # (K, P) for NCHW, (P, K) for NHWC
    outer, inner = _vector_split(sch, y1, lanes)
    if outer is not None:
        sch.reorder(outer, rc, inner)
    else:
        sch.reorder(rc, inner)
    sch.parallel(sch.fuse(e, n))
    if outer is not None:
        sch.vectorize(inner)
    sch.decompose_reduction(gemm, rc)

    inv = blocks["inverse"]
    loops = sch.get_loops(inv)
    if nchw:
        k, p, vh, vw, ra, rb = loops
        sch.reorder(k, p, ra, rb, vh, vw)
        sch.parallel(k)
    else:
        vh, vw, p, k, ra, rb = loops
        sch.reorder(p, k, ra, rb, vh, vw)
        sch.parallel(p)
    _unroll_within(sch, (ra, rb, vh, vw))

    out = blocks["conv2d_winograd"]
    l0, l1, l2, l3 = sch.get_loops(out)
    sch.parallel(sch.fuse(l0, l1))
    outer, inner = _vector_split(sch, l3, lanes)
    if outer is not None:
        sch.vectorize(inner)
    return sch.mod["main"]

