"""Fixed CPU schedule (no search) for :func:`~tvm_winograd.compute.direct_func` on llvm."""

from __future__ import annotations

import logging
from typing import Sequence

from tvm import s_tir, tirx

__all__ = ["schedule_direct_llvm"]

logger = logging.getLogger(__name__)


def _blocks(sch: s_tir.Schedule) -> dict:
    root = sch.get_sblock("root")
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}


def _largest_divisor(n: int, options: Sequence[int]) -> int:
    return next((o for o in options if n % o == 0 and n >= o), 1)


def schedule_direct_llvm(func: tirx.PrimFunc, lanes: int = 16) -> tirx.PrimFunc:
    """A fixed CPU schedule for :func:`~tvm_winograd.compute.direct_func` (no search).

    Register tile of (output channels x output columns) accumulated under the reduction loops, the
    contiguous one vectorized; outer loops fused and parallel; padding and epilogue parallel apart.
    """
    layout = str(func.attrs["tvm_winograd.layout"]) if func.attrs is not None and "tvm_winograd.layout" in func.attrs else "NCHW"
    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    epilogue = blocks.pop("conv2d_direct_epilogue", None)
    for name in ("pad_temp", "data_pad", "PaddedInput"):
        if name in blocks:
            pad = blocks.pop(name)
            p_loops = sch.get_loops(pad)
            sch.parallel(sch.fuse(p_loops[0], p_loops[1]))
    (_, conv), = list(blocks.items())
    loops = sch.get_loops(conv)
    (n, a, b, c), reduce = loops[:4], loops[4:]
    if layout == "NCHW":  # n, k, h, w: tile k (unrolled) x w (vector)
        k_loop, h_loop, w_loop = a, b, c
        k_tile = _largest_divisor(int(sch.get(k_loop).extent), (8, 4, 2))
        w_tile = _largest_divisor(int(sch.get(w_loop).extent), (16, 14, 8, 7, 4))
        ko, ki = sch.split(k_loop, [None, k_tile])
        wo, wi = sch.split(w_loop, [None, w_tile])
        sch.reorder(n, ko, h_loop, wo, *reduce, ki, wi)
        vector, unrolled = wi, ki
        outer = sch.fuse(n, ko, h_loop)
    else:  # n, h, w, k: tile w (unrolled) x k (vector)
        h_loop, w_loop, k_loop = a, b, c
        k_tile = _largest_divisor(int(sch.get(k_loop).extent), (lanes, 8, 4))
        w_tile = _largest_divisor(int(sch.get(w_loop).extent), (8, 7, 4, 2))
        ko, ki = sch.split(k_loop, [None, k_tile])
        wo, wi = sch.split(w_loop, [None, w_tile])
        sch.reorder(n, h_loop, ko, wo, *reduce, wi, ki)
        vector, unrolled = ki, wi
        outer = sch.fuse(n, h_loop, ko)
    sch.parallel(outer)
    init = sch.decompose_reduction(conv, reduce[0])
    try:
        sch.vectorize(vector)
    except s_tir.ScheduleError:  # the reduction's block checks refuse it: LLVM's loop vectorizer still can
        pass
    sch.unroll(unrolled)
    i_loops = sch.get_loops(init)
    sch.vectorize(i_loops[-1])
    if epilogue is not None:
        e_loops = sch.get_loops(epilogue)
        sch.parallel(sch.fuse(e_loops[0], e_loops[1]))
        extent = int(sch.get(e_loops[3]).extent)
        if extent >= lanes and extent % lanes == 0:
            _, inner = sch.split(e_loops[3], [None, lanes])
            sch.vectorize(inner)
    return sch.mod["main"]
