"""A fixed CPU schedule for the matrix products TVM's llvm pipeline leaves unscheduled.

Relax legalizes ``matmul`` (ONNX ``Gemm``/``MatMul``: the fully connected layers of VGG and ResNet)
to a plain loop nest ``matmul[i, n] += x[i, k] * W[k, n]`` (plus fused bias / ReLU blocks), which
llvm runs as scalar code: VGG-16's 25088x4096 layer took ~0.4 s per image.  At batch 1 the product
is a matrix-vector product bound by reading ``W`` once, so the schedule streams ``W`` row by row:
output channels split in chunks of :data:`CHUNK` (parallel), a register tile of ``CHUNK`` floats
accumulated over the whole reduction (vectorized along the contiguous ``n``), and the epilogue
blocks (bias, activation) applied to the chunk as it is written.  DLight's CPU GEMV rule covers the
other weight layout (``W[n, k]``); :func:`schedule_matmul_llvm` only takes the ``W[k, n]`` one.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx

from ..contract import is_scheduled, mark_scheduled

__all__ = ["CHUNK", "schedule_matmul_llvm", "ScheduleMatmul"]

logger = logging.getLogger(__name__)

#: Output channels per register tile (4 AVX-512 vectors of fp32).
CHUNK = 64
LANES = 16


def _matmul_block(sch: s_tir.Schedule):
    """The one reduction block of a legalized matmul (``x[i, k] * W[k, n]``), else None."""
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    reductions = [b for b in blocks if any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1 or not sch.get(reductions[0]).name_hint.startswith("matmul"):
        return None
    block = reductions[0]
    stmt = sch.get(block)
    if len(stmt.iter_vars) != 3 or len(stmt.reads) != 2:
        return None
    # the weight is the operand indexed (k, n): its last index is the output's last index
    out_last = stmt.writes[0].region[-1].min
    weight = stmt.reads[1]
    if len(weight.region) != 2 or not weight.region[-1].min.same_as(out_last):
        return None
    return block


def schedule_matmul_llvm(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The streaming schedule of a legalized ``x @ W`` (``W[k, n]``), or None if ``func`` is not one."""
    sch = s_tir.Schedule(func)
    block = _matmul_block(sch)
    if block is None:
        return None
    i, n, k = sch.get_loops(block)
    extent = int(sch.get(n).extent)
    chunk = next((c for c in (CHUNK, 40, 32, LANES, 8) if extent % c == 0), None)  # 1000 classes: 40
    if chunk is None:
        return None
    n0, n1 = sch.split(n, [None, chunk])
    sch.reorder(n0, i, k, n1)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, n0, preserve_unit_loops=True)
    # the epilogue (bias, activation): elementwise consumers, applied per chunk as it is written
    consumers = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if not b.same_as(block)
                 and not b.same_as(acc)]
    for b in consumers:
        try:
            sch.reverse_compute_at(b, n0, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(b)[-1])
        except Exception as err:  # noqa: BLE001 - TVM raises its own errors: not elementwise over the chunk
            logger.debug("matmul epilogue block left as is: %s", err)
    sch.parallel(n0)
    sch.vectorize(n1)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    return mark_scheduled(sch.mod["main"])  # the attribute DLight reads, so it skips it


@tvm.transform.module_pass(opt_level=0, name="TvmWinogradScheduleMatmul")
def ScheduleMatmul(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802 - a TVM pass
    """Apply :func:`schedule_matmul_llvm` to every unscheduled PrimFunc it fits."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        try:
            new = schedule_matmul_llvm(func)
        except Exception as err:  # noqa: BLE001 - any schedule failure leaves the function to DLight
            logger.debug("%s: matmul schedule does not apply (%s)", gv.name_hint, err)
            continue
        if new is not None:
            mod[gv] = new
    return mod
