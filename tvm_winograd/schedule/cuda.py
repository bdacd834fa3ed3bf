"""CUDA design spaces for the Winograd PrimFuncs (MetaSchedule custom rules) and a fixed default schedule.

MetaSchedule calls ``s_tir.meta_schedule.cuda.<rule>(sch, block)`` for every block whose
``schedule_rule`` attribute is ``<rule>`` (the names of :data:`tvm_winograd.compute.SCHEDULE_RULES`);
the rules are registered for the target keys ``cuda`` and ``gpu`` when this module is imported.
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
storage, fp32 accumulation); tensor-core (wmma/mma) bgemm is not implemented yet.  TF32 is never used.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..compute import SCHEDULE_RULES

logger = logging.getLogger(__name__)

__all__ = [
    "RULE_KEYS",
    "BGEMM_SPACES",
    "THREAD_CHOICES",
    "register_rules",
    "rule_names",
    "schedule_cuda_default",
    "postprocs_for",
    "apply_postprocs",
    "space_generator",
    "light_tune_context",
]

#: Target keys the rules are registered for (MetaSchedule looks up ``<key>.<rule>`` per target key).
RULE_KEYS = ("cuda", "gpu")
#: bgemm design spaces: operands staged through shared memory, or read straight from global (L1/L2).
BGEMM_SPACES = ("shared", "direct")
#: Threads per block for the element-wise stages (data_pack, output + inverse, kernel_pack).
THREAD_CHOICES = (32, 64, 128, 256)
#: Threads per block for data_pack: a perfect factor of C * P up to this.
MAX_PACK_THREADS = 256
#: Explicit unroll limits for the bgemm inner loops.
UNROLL_CHOICES = (0, 16, 64, 512)
#: Vector lanes of the cooperative shared-memory loads.
VECTOR_CHOICES = (1, 2, 4)
#: Bounds of the nested bgemm tiles: registers per thread (rows, cols), threads per block (y, x),
#: channels per reduction step.  16 x 32 threads <= 512 and (16*4 + 32*4) * 16 * 4 bytes = 12 KiB of
#: shared memory: every sample is valid on sm_80..sm_90 by construction.
MAX_REG_TILE = 4
MAX_THREADS_Y, MAX_THREADS_X = 16, 32
MAX_REDUCE_STEP = 16

#: Fixed decisions of :func:`schedule_cuda_default`.
DEFAULT_THREADS = 128
DEFAULT_UNROLL = 64
DEFAULT_VECTOR = 1


# --------------------------------------------------------------------------------------------------
# Knobs: sampled when tuning, pinned when ``pin`` is set (the default schedule)
# --------------------------------------------------------------------------------------------------

def _categorical(sch: s_tir.Schedule, candidates: Sequence[int], pin: int | None) -> tirx.PrimExpr:
    probs = [1.0 / len(candidates)] * len(candidates)
    decision = None if pin is None else list(candidates).index(pin)
    return sch.sample_categorical(list(candidates), probs, decision=decision)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _tile2(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, max_inner: int, pin_inner: int | None):
    """Split ``loop`` in two perfect factors ``[outer, inner]`` with ``inner <= max_inner``."""
    decision = None
    if pin_inner is not None:
        extent = int(sch.get(loop).extent)
        inner = _largest_divisor(extent, min(pin_inner, max_inner))
        decision = [extent // inner, inner]
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max_inner, decision=decision)
    return sch.split(loop, factors)


# --------------------------------------------------------------------------------------------------
# Block helpers
# --------------------------------------------------------------------------------------------------

def _name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def _func_attr(sch: s_tir.Schedule, key: str, default=None):
    func = sch.mod["main"]
    attrs = func.attrs
    return attrs[key] if attrs is not None and key in attrs else default


def _layout(sch: s_tir.Schedule) -> str:
    layout = _func_attr(sch, "tvm_winograd.layout")
    if layout is None:
        raise ValueError("the PrimFunc lacks the tvm_winograd.layout attribute: build it with tvm_winograd.compute")
    return str(layout)


def _inline_producers(sch: s_tir.Schedule, block, names: Sequence[str]) -> None:
    for producer in sch.get_producers(block):
        if _name(sch, producer) in names:
            sch.compute_inline(producer)


def _bind_threads(sch: s_tir.Schedule, loop, threads) -> tuple:
    """Split ``loop`` over ``blockIdx.x`` x ``threadIdx.x``; returns (bx, tx)."""
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return bx, tx


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------

def _schedule_output(sch: s_tir.Schedule, out, pin: bool = False) -> list[s_tir.Schedule]:
    """One thread per m x m output tile; the epilogue is already inlined in this block."""
    m = int(_func_attr(sch, "tvm_winograd.m"))
    nchw = _layout(sch) == "NCHW"
    loops = sch.get_loops(out)
    if nchw:
        n, k, h, w = loops
    else:
        n, h, w, k = loops
    ho, hi = sch.split(h, [None, m])
    wo, wi = sch.split(w, [None, m])
    # NHWC keeps K innermost among the fused axes so neighbouring threads write neighbouring channels.
    outer = (n, k, ho, wo) if nchw else (n, ho, wo, k)
    sch.reorder(*outer, hi, wi)
    threads = _categorical(sch, THREAD_CHOICES, DEFAULT_THREADS if pin else None)
    _bind_threads(sch, sch.fuse(*outer), threads)
    sch.unroll(hi)
    sch.unroll(wi)
    return [sch]


def _schedule_inverse(sch: s_tir.Schedule, inverse, pin: bool = False) -> list[s_tir.Schedule]:
    """Y = A_T M A in registers at the output's thread loop (fused with the epilogue)."""
    _inline_producers(sch, inverse, ("A",))
    consumers = sch.get_consumers(inverse)
    if len(consumers) != 1:
        raise ValueError(f"inverse has {len(consumers)} consumers; expected the output block")
    out_loops = sch.get_loops(consumers[0])
    tx = next((l for l in out_loops if _thread_tag(sch, l) == "threadIdx.x"), None)
    if tx is None:  # output not scheduled by winograd_output (should not happen): bind it here
        _schedule_output(sch, consumers[0], pin)
        out_loops = sch.get_loops(consumers[0])
        tx = next(l for l in out_loops if _thread_tag(sch, l) == "threadIdx.x")
    sch.compute_at(inverse, tx, preserve_unit_loops=True)
    sch.set_scope(inverse, 0, "local")
    for loop in sch.get_loops(inverse)[-4:]:  # vh, vw, r_a, r_b (or r_a, r_b after reorder)
        sch.unroll(loop)
    return [sch]


def _thread_tag(sch: s_tir.Schedule, loop) -> str | None:
    node = sch.get(loop)
    return None if node.thread_binding is None else str(node.thread_binding.thread_tag)


def _schedule_bgemm(sch: s_tir.Schedule, gemm, pin: bool = False,
                    spaces: Sequence[str] = BGEMM_SPACES) -> list[s_tir.Schedule]:
    """Batched GEMM: one design space per entry of ``spaces`` (see :data:`BGEMM_SPACES`)."""
    results = []
    for space in spaces:
        s = sch.copy() if len(spaces) > 1 else sch
        block = s.get_sblock(_name(sch, gemm)) if len(spaces) > 1 else gemm
        _bgemm_space(s, block, space, pin)
        results.append(s)
    return results


def _bgemm_space(sch: s_tir.Schedule, gemm, space: str, pin: bool) -> None:
    e, n, y0, y1, rc = sch.get_loops(gemm)  # (K, P) for NCHW, (P, K) for NHWC; y1 is contiguous
    batch = sch.fuse(e, n)
    y0_o, y0_r = _tile2(sch, y0, MAX_REG_TILE, 2 if pin else None)
    y0_b, y0_t = _tile2(sch, y0_o, MAX_THREADS_Y, 8 if pin else None)
    y1_o, y1_r = _tile2(sch, y1, MAX_REG_TILE, 4 if pin else None)
    y1_b, y1_t = _tile2(sch, y1_o, MAX_THREADS_X, 16 if pin else None)
    rc_o, rc_i = _tile2(sch, rc, MAX_REDUCE_STEP, 8 if pin else None)
    sch.reorder(batch, y0_b, y1_b, y0_t, y1_t, rc_o, rc_i, y0_r, y1_r)
    sch.bind(batch, "blockIdx.z")
    sch.bind(y0_b, "blockIdx.y")
    sch.bind(y1_b, "blockIdx.x")
    sch.bind(y0_t, "threadIdx.y")
    sch.bind(y1_t, "threadIdx.x")
    # Accumulate the register tile in local memory; write it back once per thread.
    acc = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc, y1_t, preserve_unit_loops=True)
    if space == "shared":
        for index in range(len(sch.get(gemm).reads)):
            cached = sch.cache_read(gemm, index, "shared")
            sch.compute_at(cached, rc_o, preserve_unit_loops=True)
            loops = sch.get_loops(cached)
            ndim = len(sch.get(cached).writes[0].region)
            sch.fuse(*loops[-ndim:])
            lanes = _categorical(sch, VECTOR_CHOICES, DEFAULT_VECTOR if pin else None)
            sch.annotate(cached, "meta_schedule.cooperative_fetch", lanes)
        if not pin:
            # Double-buffer the shared tiles: load step rc_o + 1 while computing step rc_o (TVM's
            # InjectSoftwarePipeline; ThreadSync places the barriers).  Searched spaces only: the
            # default schedule stays single-buffered, the most conservative choice for untuned code.
            sch.annotate(rc_o, "software_pipeline_stage", [0, 0, 1])
            sch.annotate(rc_o, "software_pipeline_order", [0, 1, 2])
    unroll = _categorical(sch, UNROLL_CHOICES, DEFAULT_UNROLL if pin else None)
    sch.annotate(gemm, "meta_schedule.unroll_explicit", unroll)


def _cast_consumer(sch: s_tir.Schedule, block, name: str):
    """The dtype-cast block ``name`` that consumes ``block`` (fp16 storage of an fp32 transform), if any."""
    return next((c for c in sch.get_consumers(block) if _name(sch, c) == name), None)


def _schedule_data_pack(sch: s_tir.Schedule, pack, pin: bool = False) -> list[s_tir.Schedule]:
    """V = B_T d B: one thread per (channel, tile), the input tile and V in registers.

    With fp16 storage (``data_pack_acc`` -> cast ``data_pack``) the cast block is the per-thread store
    and the fp32 transform is computed at it in registers (a reduction block cannot be inlined into its
    consumer).
    """
    cast = _cast_consumer(sch, pack, "data_pack") if _name(sch, pack) == "data_pack_acc" else None
    _inline_producers(sch, pack, ("B",))
    input_tile = next(p for p in sch.get_producers(pack) if _name(sch, p) == "input_tile")
    data_pad = next(p for p in sch.get_producers(input_tile) if _name(sch, p) == "data_pad")
    e, nu, x0, x1, ra, rb = sch.get_loops(pack)  # x0, x1 = (C, P) for NCHW, (P, C) for NHWC
    sch.reorder(x0, x1, e, nu, ra, rb)
    for loop in (e, nu, ra, rb):
        sch.unroll(loop)
    store = pack if cast is None else cast
    if cast is not None:
        ce, cn, c0, c1 = sch.get_loops(cast)
        sch.reorder(c0, c1, ce, cn)
        sch.unroll(ce)
        sch.unroll(cn)
        x0, x1 = c0, c1
    # A perfect split: reverse_compute_at of the local write-back under a predicated (non-divisible)
    # thread loop drops the predicate in TVM 0.27 and writes past the end of data_pack.
    bx, tx = _tile2(sch, sch.fuse(x0, x1), MAX_PACK_THREADS, DEFAULT_THREADS if pin else None)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    if cast is None:
        local = sch.cache_write(store, 0, "local")
        sch.reverse_compute_at(local, tx, preserve_unit_loops=True)
    else:
        sch.compute_at(pack, tx, preserve_unit_loops=True)
        sch.set_scope(pack, 0, "local")
    sch.compute_at(input_tile, tx, preserve_unit_loops=True)
    sch.set_scope(input_tile, 0, "local")
    sch.compute_inline(data_pad)
    return [sch]


def _schedule_kernel_pack(sch: s_tir.Schedule, pack, pin: bool = False) -> list[s_tir.Schedule]:
    """U = G g G_T: one thread per (channel, output channel), the transform unrolled."""
    cast = _cast_consumer(sch, pack, "kernel_pack") if _name(sch, pack) == "kernel_pack_acc" else None
    _inline_producers(sch, pack, ("G",))
    e, nu, c, k, ra, rb = sch.get_loops(pack)
    sch.reorder(c, k, e, nu, ra, rb)
    for loop in (ra, rb):
        sch.unroll(loop)
    if cast is not None:
        ce, cn, c, k = sch.get_loops(cast)
        sch.reorder(c, k, ce, cn)
    threads = _categorical(sch, THREAD_CHOICES, DEFAULT_THREADS if pin else None)
    _, tx = _bind_threads(sch, sch.fuse(c, k), threads)
    if cast is not None:
        sch.compute_at(pack, tx, preserve_unit_loops=True)
        sch.set_scope(pack, 0, "local")
    return [sch]


_RULES: dict[str, Callable[..., list[s_tir.Schedule]]] = {
    SCHEDULE_RULES["conv2d_winograd"]: _schedule_output,
    SCHEDULE_RULES["inverse"]: _schedule_inverse,
    SCHEDULE_RULES["bgemm"]: _schedule_bgemm,
    SCHEDULE_RULES["data_pack"]: _schedule_data_pack,
    SCHEDULE_RULES["kernel_pack"]: _schedule_kernel_pack,
}


def rule_names() -> list[str]:
    """The global function names this module registers."""
    return [f"s_tir.meta_schedule.{key}.{rule}" for key in RULE_KEYS for rule in _RULES]


def _as_rule(fn: Callable[..., list[s_tir.Schedule]]) -> Callable:
    def rule(sch: s_tir.Schedule, block) -> list[s_tir.Schedule]:
        return fn(sch, block)

    rule.__name__ = fn.__name__
    return rule


def register_rules() -> None:
    """Register the CUDA rules (idempotent; done at import)."""
    for key in RULE_KEYS:
        for rule, fn in _RULES.items():
            tvm_ffi.register_global_func(f"s_tir.meta_schedule.{key}.{rule}", _as_rule(fn), override=True)


register_rules()


# --------------------------------------------------------------------------------------------------
# Postprocessors and the default schedule
# --------------------------------------------------------------------------------------------------

def postprocs_for(target: Target, mod: tvm.IRModule) -> list[ms.postproc.Postproc]:
    """MetaSchedule's CUDA postprocessors, initialized for ``target`` (they realize the annotations
    ``meta_schedule.cooperative_fetch`` / ``unroll_explicit``, bind leftovers, decompose reductions
    and verify the GPU limits)."""
    postprocs = ms.postproc.Postproc.create("cuda")
    ctx = light_tune_context(mod, target)
    for p in postprocs:
        p._initialize_with_tune_context(ctx)
    return postprocs


def light_tune_context(mod: tvm.IRModule, target: Target,
                       space: ms.space_generator.SpaceGenerator | None = None) -> ms.TuneContext:
    """A ``TuneContext`` for initializing postprocessors / a space generator, without the Python
    constructor's ``import tvm.s_tir.tensor_intrin`` (which registers every tensor intrinsic and costs
    30-90 s of CPU on first use; our spaces use none).  Falls back to the ordinary constructor."""
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    try:
        ctx = ms.TuneContext.__new__(ms.TuneContext)
        ctx.__init_handle_by_constructor__(_ffi_api.TuneContext, mod, target, space, None, "tvm_winograd", 1, 1,
                                           get_logging_func(get_logger(__name__)))
        _ffi_api.TuneContextInitialize(ctx)
        return ctx
    except Exception as err:  # pragma: no cover - TVM internals moved
        logger.debug("light TuneContext failed (%s): using the ordinary constructor", err)
        return ms.TuneContext(mod=mod, target=target, space_generator=space, task_name="tvm_winograd",
                              rand_state=1, num_threads=1)


def apply_postprocs(sch: s_tir.Schedule, target: Target, postprocs=None) -> str | None:
    """Apply the CUDA postprocessors in order; returns the name of the first that rejects, or None."""
    for p in postprocs if postprocs is not None else postprocs_for(target, sch.mod):
        if not p.apply(sch):
            return type(p).__name__
    return None


def _default_target(target: object | None) -> Target:
    if target is None:
        target = Target.current(allow_none=True)
    if target is None:
        from ..targets import resolve_target

        return resolve_target("cuda")
    if not isinstance(target, Target):
        from ..targets import resolve_target

        return resolve_target(target)
    return target


def schedule_cuda_default(func: tirx.PrimFunc, target: object | None = None) -> tirx.PrimFunc:
    """A fixed, valid GPU schedule for our winograd / weight_transform / direct PrimFuncs (no search).

    The winograd and weight-transform functions get the design spaces above with pinned decisions
    (128 threads, an 8x16 thread tile of 2x4 registers, 8 channels per step, shared ``bgemm``); the
    direct function gets TVM's dlight GPU defaults.  ``target`` defaults to the current target, else sm_80.
    """
    target = _default_target(target)
    kind = str(_attr(func, "tvm_winograd.kind", ""))
    if kind == "direct" or not kind:
        return _dlight_default(func, target)
    sch = s_tir.Schedule(func)
    blocks = _root_blocks(sch)
    if kind == "weight_transform":
        name = "kernel_pack_acc" if "kernel_pack_acc" in blocks else "kernel_pack"
        _schedule_kernel_pack(sch, blocks[name], pin=True)
    elif kind == "winograd":
        _schedule_output(sch, blocks["conv2d_winograd"], pin=True)
        _schedule_inverse(sch, sch.get_sblock("inverse"), pin=True)
        _schedule_bgemm(sch, sch.get_sblock("bgemm"), pin=True, spaces=("shared",))
        pack = "data_pack_acc" if "data_pack_acc" in blocks else "data_pack"
        _schedule_data_pack(sch, sch.get_sblock(pack), pin=True)
    else:
        raise ValueError(f"tvm_winograd.kind {kind!r} has no CUDA default schedule")
    with target:
        rejected = apply_postprocs(sch, target)
    if rejected is not None:
        raise RuntimeError(f"the default CUDA schedule was rejected by {rejected} for {target}")
    return sch.mod["main"]


def _attr(func: tirx.PrimFunc, key: str, default=None):
    return func.attrs[key] if func.attrs is not None and key in func.attrs else default


def _root_blocks(sch: s_tir.Schedule) -> dict:
    root = sch.get_sblock("root")
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}


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
    nothing but minutes of space generation on these multi-stage functions.  The CUDA postprocessors and
    mutators are MetaSchedule's defaults.
    """
    return ms.space_generator.PostOrderApply(sch_rules=[ms.schedule_rule.ApplyCustomRule()],
                                             postprocs="cuda", mutator_probs="cuda")
