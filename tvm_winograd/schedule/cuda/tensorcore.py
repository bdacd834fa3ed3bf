"""The tensor-core bgemm spaces (``tensorcore``, ``tensorcore_pipelined``): fp16 operands, fp32 accumulators,
TVM's wmma intrinsics through MetaSchedule's ``MultiLevelTilingTensorCore`` (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .context import light_tune_context
from .intrin import ensure_tensor_intrinsics
from .knobs import bgemm_operand_dtypes, layout_label, thread_tag

__all__ = ["TENSORCORE_SPACE", "TENSORCORE_PIPELINED_SPACE", "TENSORCORE_SPACES", "TENSORCORE_MIN_SM",
           "tensorcore_ineligibility", "is_tensorcore_schedule", "schedule_bgemm_tensorcore"]

logger = logging.getLogger(__name__)

#: The tensor-core bgemm design spaces (fp16 operands, fp32 accumulators; see :func:`tvm_winograd.schedule.cuda.bgemm_spaces`):
#: single-buffered shared operand tiles, and the same double-buffered (software pipelining).
TENSORCORE_SPACE = "tensorcore"
TENSORCORE_PIPELINED_SPACE = "tensorcore_pipelined"
TENSORCORE_SPACES = (TENSORCORE_SPACE, TENSORCORE_PIPELINED_SPACE)
#: Tensor cores are offered from this SM on: TVM's own threshold for its ``cuda-tensorcore`` defaults,
#: so the default postprocessors of a MetaSchedule search for such a target include ``RewriteTensorize``.
TENSORCORE_MIN_SM = 75
#: Tiling of the tensor-core space (MetaSchedule's ``MultiLevelTilingTensorCore`` on GPU: block tiles
#: to ``blockIdx``, warp tiles to ``threadIdx.y``, two reduction levels, per-warp fragment tiles).
TENSORCORE_STRUCTURE = "SSSRRSRS"
TENSORCORE_TILE_BINDS = ("blockIdx.y", "blockIdx.x", "threadIdx.y")
TENSORCORE_MAX_INNERMOST = 4
#: Vector lanes of the cooperative global -> shared loads of the fp16 operands (8 x fp16 = 16 bytes).
TENSORCORE_VECTOR_CHOICES = (1, 2, 4, 8)


def _target_sm(target: Target | None) -> int | None:
    if target is None or target.kind.name != "cuda":
        return None
    arch = str(target.attrs.get("arch", ""))
    digits = arch[3:].rstrip("a") if arch.startswith("sm_") else ""
    return int(digits) if digits.isdigit() else None


def tensorcore_ineligibility(operand_dtypes: Sequence[str] | str, target: Target | None = None) -> str | None:
    """Why the ``tensorcore`` bgemm space is not offered (``None``: it is).

    ``operand_dtypes`` are the dtypes of the bgemm operands (data_pack, kernel_pack) or one pack dtype.
    Only fp16 packs qualify: fp32 operands on tensor cores would be TF32, which is never used.  The target
    must be CUDA ``sm_75`` or newer (:data:`TENSORCORE_MIN_SM`); ``target=None`` (no current target, e.g.
    a custom rule called without one) is taken as one of this package's CUDA targets (sm_80..sm_90).
    """
    dtypes = (operand_dtypes,) if isinstance(operand_dtypes, str) else tuple(operand_dtypes)
    if not dtypes or any(d != "float16" for d in dtypes):
        return (f"bgemm operands are {'/'.join(dtypes) or 'unknown'}: tensor cores are used for float16 packs "
                "only (fp32 operands would run in TF32, never used)")
    if target is not None:
        if target.kind.name != "cuda":
            return f"target {target.kind.name!r} is not CUDA"
        sm = _target_sm(target)
        if sm is None or sm < TENSORCORE_MIN_SM:
            return f"target arch {target.attrs.get('arch', '?')!s} is older than sm_{TENSORCORE_MIN_SM}"
    return None


def _tensorcore_rule(target: Target, mod: tvm.IRModule) -> ms.schedule_rule.ScheduleRule:
    # Scopes: the fp16 operand tiles in static shared memory, the fp32 accumulator tile (write reuse, which
    # MultiLevelTilingTensorCore requires for wmma) in dynamic shared memory.  With both static, TVM 0.27's
    # StorageRewrite reuses an fp16 operand buffer for the fp32 tile and the build fails in LowerAccessPtr
    # ("tvm_access_ptr element type must match"); all-dynamic fails the same way when the dynamic
    # allocations are merged.
    group = ensure_tensor_intrinsics()
    rule = ms.schedule_rule.MultiLevelTilingTensorCore(
        intrin_groups=[group],
        structure=TENSORCORE_STRUCTURE,
        tile_binds=list(TENSORCORE_TILE_BINDS),
        max_innermost_factor=TENSORCORE_MAX_INNERMOST,
        vector_load_lens=list(TENSORCORE_VECTOR_CHOICES),
        reuse_read=ms.schedule_rule.ReuseType(req="must", levels=[4], scope="shared"),
        reuse_write=ms.schedule_rule.ReuseType(req="must", levels=[2], scope="shared.dyn"),
        use_software_pipeline=False,
    )
    rule._initialize_with_tune_context(light_tune_context(mod, target))
    return rule


def is_tensorcore_schedule(sch: s_tir.Schedule) -> bool:
    """Whether ``sch``'s trace holds the tensorcore bgemm space (blocks annotated for ``RewriteTensorize``)."""
    return any(inst.kind.name == "Annotate" and "meta_schedule.auto_tensorize" in str(inst.attrs)
               for inst in sch.trace.insts)


def schedule_bgemm_tensorcore(sch: s_tir.Schedule, gemm, target: Target | None,
                      pipelined: bool = False) -> s_tir.Schedule | None:
    """The tensorcore space on ``sch`` (returns the new schedule), or None with a logged reason.

    ``pipelined``: double-buffer the shared operand tiles over the outer reduction loop (TVM's
    InjectSoftwarePipeline: step r0 + 1 loads while step r0 runs its fragment loads and mma_sync), as
    the SIMT ``shared`` space does.  (``MultiLevelTilingTensorCore``'s own wmma pipelining, with its
    register stage, produced schedules TVM 0.27 fails to lower: "fragment_info" check.)"""
    if target is None:
        from ...targets import resolve_target

        target = resolve_target("cuda")
    reason = tensorcore_ineligibility(bgemm_operand_dtypes(sch, gemm), target)
    if reason is None:
        results = _tensorcore_rule(target, sch.mod).apply(sch, gemm)
        tensorized = [r for r in results if is_tensorcore_schedule(r)]
        if len(tensorized) == 1:
            if pipelined:
                _pipeline_tensorcore(tensorized[0])
            return tensorized[0]
        reason = f"MultiLevelTilingTensorCore produced {len(tensorized)} tensorized sketches (expected 1)"
    logger.info("bgemm %s: no tensorcore space (%s)", layout_label(sch), reason)
    return None


def _pipeline_tensorcore(sch: s_tir.Schedule) -> None:
    # bgemm_o: [blockIdx.y, blockIdx.x, threadIdx.y, r0, r1, ...]; r0's body: the two shared tile loads and
    # the r1 loop (fragment loads + mma_sync).
    loops = sch.get_loops(sch.get_sblock("bgemm_o"))
    tags = [thread_tag(sch, loop) for loop in loops[:3]]
    if tags != list(TENSORCORE_TILE_BINDS):
        raise RuntimeError(f"unexpected tensorcore loop nest {tags}: MultiLevelTilingTensorCore changed")
    sch.annotate(loops[3], "software_pipeline_stage", [0, 0, 1])
    sch.annotate(loops[3], "software_pipeline_order", [0, 1, 2])
