"""CUDA design spaces for the Winograd PrimFuncs (MetaSchedule custom rules) and a fixed default schedule.

MetaSchedule calls ``s_tir.meta_schedule.cuda.<rule>(sch, block)`` for every block whose
``schedule_rule`` attribute is ``<rule>`` (the names of :data:`tvm_winograd.contract.SCHEDULE_RULES`);
the rules are registered for the target keys ``cuda`` and ``gpu`` by :func:`register_rules` (called by
:func:`space_generator` and :func:`tvm_winograd.schedule.register_rules`; nothing is registered at import).
PostOrderApply visits consumers first, so the stages are scheduled in this order:

``winograd_output``  the output (with its fused epilogue: bias, residual, ReLU) is split into m x m tiles;
                     one thread per (image, channel, tile): the fused tile loop is split over
                     ``blockIdx.x`` x ``threadIdx.x`` (threads per block: a categorical knob).
``winograd_inverse`` Y = A_T M A computed per thread, in registers (``local``), at the output's thread
                     loop: the inverse transform is fused with the epilogue, Y never touches memory.
``winograd_bgemm``   alpha^2 batched GEMMs over C (:data:`BGEMM_SPACES` design spaces): block and thread
                     tiles (perfect tiles, nested so that threads <= 16 x 32 and the shared tiles always
                     fit), a register tile per thread accumulated in ``local``, and in the ``shared``
                     space both operands staged through shared memory per reduction step with
                     vectorized cooperative loads (lanes: a categorical knob) and double-buffered
                     (software pipelining: the next step's tiles load while this one computes),
                     explicit unrolling (a categorical knob).
``winograd_data_pack`` V = B_T d B: one thread per (channel, tile) (threads per block: a perfect tile
                     of C * P up to 256, so no thread is predicated off); the
                     alpha x alpha input tile gathered into registers (padding inlined), the transform
                     fully unrolled, V written from registers.
``winograd_kernel_pack`` U = G g G_T (the weight-transform function; folded ahead of time on constants).

Every knob is a ``sample_perfect_tile`` / ``sample_categorical`` decision, so tuning mutates them and
:func:`schedule_cuda_default` pins them to fixed values.  fp16 runs through the same SIMT spaces (fp16
storage, fp32 accumulation) and, in addition, through two tensor-core spaces:

``tensorcore``       (fp16 packs only, target ``sm_75`` or newer, see :func:`bgemm_spaces`) the alpha^2 GEMMs
                     on tensor cores with TVM's own wmma intrinsics (``wmma_load_16x16x16_f16_{a,b}``,
                     ``wmma_sync_16x16x16_f16f16f32``, ``wmma_fill``/``wmma_store`` f32, registered by
                     :func:`.intrin.ensure_tensor_intrinsics`): fp16 operands, fp32 accumulator fragments.  The
                     tiling is MetaSchedule's ``MultiLevelTilingTensorCore`` applied to the bgemm block
                     from our rule: the operands are re-indexed to a canonical
                     [M, C] x [C, N] GEMM (NCHW's kernel_pack is read transposed into shared memory),
                     padded to multiples of 16 where K, C or P are not (``pad_einsum``), the (alpha, alpha)
                     batch axes fused into ``blockIdx.y`` with the outer M/N tiles, warp tiles on
                     ``threadIdx.y``; sampled knobs: the M/N tiles at every level (block, warp, fragments
                     per warp), the reduction split over C in 16-wide fragments (three levels: channels per
                     shared-memory step, per fragment-load step, innermost) and the vector lanes of the
                     cooperative shared-memory loads.  The accumulators go through (dynamic)
                     shared memory to ``bgemm`` (fp32).  The postprocessor ``RewriteTensorize`` (in
                     :func:`.context.postprocs_for`) replaces the annotated blocks by the intrinsics.
``tensorcore_pipelined`` the same with the shared operand tiles double-buffered over the outer reduction
                     loop (software pipelining): pipelining is a structural choice, so it is a second
                     design space rather than a sampled decision; the search samples and mutates both.

fp32 layers never get the tensor-core spaces: on fp32 operands tensor cores would compute in TF32, which
this package never uses.  What can be verified without a GPU, and what cannot, is stated in
:mod:`tvm_winograd.cuda.check` (tensor-core numerics run the schedule in its pre-``RewriteTensorize`` form).
A tuned tensorcore record names our registered intrinsics: a process must call
:func:`.intrin.ensure_tensor_intrinsics` (or :func:`.intrin.ensure_tensor_intrinsics_for_database`) before
it opens a MetaSchedule database holding such records.

The package: ``simt`` (the SIMT stages and bgemm spaces), ``tensorcore`` (the tensor-core bgemm spaces),
``intrin`` (registering TVM's wmma intrinsics), ``context`` (MetaSchedule's TuneContext and
postprocessors), ``knobs`` (sampled/pinned decisions and block helpers); this module registers the rules,
picks the bgemm spaces and holds the fixed default schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ...contract import (
    BGEMM,
    DATA_PACK,
    DATA_PACK_ACC,
    INVERSE,
    KERNEL_PACK,
    KERNEL_PACK_ACC,
    OUTPUT,
    SCHEDULE_RULES,
    kind_of,
)
from ..common import root_blocks
from .context import apply_postprocs
from .intrin import ensure_tensor_intrinsics
from .knobs import bgemm_operand_dtypes, block_name
from .simt import (
    BGEMM_SPACES,
    schedule_bgemm_simt,
    schedule_data_pack,
    schedule_inverse,
    schedule_kernel_pack,
    schedule_output,
)
from .tensorcore import (
    TENSORCORE_PIPELINED_SPACE,
    TENSORCORE_SPACES,
    schedule_bgemm_tensorcore,
    tensorcore_ineligibility,
)

logger = logging.getLogger(__name__)

__all__ = ["RULE_KEYS", "bgemm_spaces", "cuda_default_schedule", "register_rules", "rule_names", "schedule_cuda_default",
           "space_generator"]

#: Target keys the rules are registered for (MetaSchedule looks up ``<key>.<rule>`` per target key).
RULE_KEYS = ("cuda", "gpu")


def _schedule_bgemm(sch: s_tir.Schedule, gemm, pin: bool = False,
                    spaces: Sequence[str] | None = None, target: Target | None = None) -> list[s_tir.Schedule]:
    """Batched GEMM: one design space per entry of ``spaces`` (default: :func:`bgemm_spaces` for the
    block's operand dtype and ``target``, else the current target)."""
    if target is None:
        target = Target.current(allow_none=True)
    if spaces is None:
        spaces = bgemm_spaces(bgemm_operand_dtypes(sch, gemm), target)
    results = []
    for space in spaces:
        s = sch.copy() if len(spaces) > 1 else sch
        block = s.get_sblock(block_name(sch, gemm)) if len(spaces) > 1 else gemm
        if space in TENSORCORE_SPACES:
            tensorized = schedule_bgemm_tensorcore(s, block, target, pipelined=space == TENSORCORE_PIPELINED_SPACE)
            if tensorized is None:
                continue
            results.append(tensorized)
            continue
        schedule_bgemm_simt(s, block, space, pin)
        results.append(s)
    return results


def bgemm_spaces(operand_dtypes: Sequence[str] | str, target: Target | None = None) -> tuple[str, ...]:
    """The bgemm design spaces offered for these operand dtypes and target: :data:`BGEMM_SPACES`, plus
    :data:`TENSORCORE_SPACES` when :func:`tensorcore_ineligibility` finds no reason against them."""
    reason = tensorcore_ineligibility(operand_dtypes, target)
    if reason is not None:
        logger.debug("no tensorcore bgemm space: %s", reason)
        return BGEMM_SPACES
    return BGEMM_SPACES + TENSORCORE_SPACES


_RULES: dict[str, Callable[..., list[s_tir.Schedule]]] = {
    SCHEDULE_RULES[OUTPUT]: schedule_output,
    SCHEDULE_RULES[INVERSE]: schedule_inverse,
    SCHEDULE_RULES[BGEMM]: _schedule_bgemm,
    SCHEDULE_RULES[DATA_PACK]: schedule_data_pack,
    SCHEDULE_RULES[KERNEL_PACK]: schedule_kernel_pack,
}


def rule_names() -> list[str]:
    """The global function names this module registers."""
    return [f"s_tir.meta_schedule.{key}.{rule}" for key in RULE_KEYS for rule in _RULES]


def _as_rule(fn: Callable[..., list[s_tir.Schedule]]) -> Callable:
    def rule(sch: s_tir.Schedule, block) -> list[s_tir.Schedule]:
        return fn(sch, block)

    rule.__name__ = fn.__name__
    return rule


_registered = False


def register_rules() -> None:
    """Register the CUDA rules for :data:`RULE_KEYS` (idempotent: once per process).

    Not done at import: :func:`space_generator` and :func:`tvm_winograd.schedule.register_rules` call it
    where MetaSchedule will look the rules up."""
    global _registered
    if _registered:
        return
    for key in RULE_KEYS:
        for rule, fn in _RULES.items():
            tvm_ffi.register_global_func(f"s_tir.meta_schedule.{key}.{rule}", _as_rule(fn), override=True)
    _registered = True


def _default_target(target: object | None) -> Target:
    if target is None:
        target = Target.current(allow_none=True)
    if target is None:
        from ...targets import resolve_target

        return resolve_target("cuda")
    if not isinstance(target, Target):
        from ...targets import resolve_target

        return resolve_target(target)
    return target


def schedule_cuda_default(func: tirx.PrimFunc, target: object | None = None) -> tirx.PrimFunc:
    """A fixed, valid GPU schedule for our winograd / weight_transform / direct PrimFuncs (no search).

    The winograd and weight-transform functions get the design spaces above with pinned decisions
    (128 threads, an 8x16 thread tile of 2x4 registers, 8 channels per step, shared ``bgemm``); the
    direct function gets TVM's dlight GPU defaults.  ``target`` defaults to the current target, else sm_80.
    """
    target = _default_target(target)
    kind = kind_of(func) or ""
    if kind == "direct" or not kind:
        return _dlight_default(func, target)
    return cuda_default_schedule(func, target).mod["main"]


def cuda_default_schedule(func: tirx.PrimFunc, target: object | None = None) -> s_tir.Schedule:
    """The schedule (with its trace: a tuning record can be made of it) :func:`schedule_cuda_default`
    gives a winograd or weight_transform function."""
    target = _default_target(target)
    kind = kind_of(func) or ""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if kind == "weight_transform":
        name = KERNEL_PACK_ACC if KERNEL_PACK_ACC in blocks else KERNEL_PACK
        schedule_kernel_pack(sch, blocks[name], pin=True)
    elif kind == "winograd":
        schedule_output(sch, blocks[OUTPUT], pin=True)
        schedule_inverse(sch, sch.get_sblock(INVERSE), pin=True)
        _schedule_bgemm(sch, sch.get_sblock(BGEMM), pin=True, spaces=("shared",))
        pack = DATA_PACK_ACC if DATA_PACK_ACC in blocks else DATA_PACK
        schedule_data_pack(sch, sch.get_sblock(pack), pin=True)
    else:
        raise ValueError(f"kind {kind!r} has no CUDA default schedule")
    with target:
        rejected = apply_postprocs(sch, target)
    if rejected is not None:
        raise RuntimeError(f"the default CUDA schedule was rejected by {rejected} for {target}")
    return sch


def _dlight_default(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    from tvm.s_tir import dlight

    mod = tvm.IRModule({"main": func})
    with target:
        mod = dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                          dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())(mod)
    return mod["main"]


def space_generator() -> ms.space_generator.SpaceGenerator:
    """The design-space generator for our winograd / weight-transform tasks on CUDA.

    Only :class:`ApplyCustomRule` (our rules above): every block of our PrimFuncs is covered by them
    (constants inlined, padding and tile gather inlined), and MetaSchedule's generic CUDA rules add
    nothing but minutes of space generation on these multi-stage functions.  The postprocessors are
    MetaSchedule's ``cuda-tensorcore`` list (its CUDA list plus ``RewriteTensorize``), the mutators its CUDA
    defaults.  The custom rules see no target (MetaSchedule calls them with ``(sch, block)`` only): generate
    the spaces under ``with target:`` so the bgemm rule offers tensor cores only where the arch has them.
    """
    register_rules()
    ensure_tensor_intrinsics()
    return ms.space_generator.PostOrderApply(sch_rules=[ms.schedule_rule.ApplyCustomRule()],
                                             postprocs="cuda-tensorcore", mutator_probs="cuda")
