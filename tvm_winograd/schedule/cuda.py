"""CUDA design spaces for the Winograd PrimFuncs (MetaSchedule custom rules) and a fixed default schedule.

MetaSchedule calls ``s_tir.meta_schedule.cuda.<rule>(sch, block)`` for every block whose
``schedule_rule`` attribute is ``<rule>`` (the names of :data:`tvm_winograd.contract.SCHEDULE_RULES`);
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
storage, fp32 accumulation) and, in addition, through two tensor-core spaces:

``tensorcore``       (fp16 packs only, target ``sm_75`` or newer, see :func:`bgemm_spaces`) the alpha^2 GEMMs
                     on tensor cores with TVM's own wmma intrinsics (``wmma_load_16x16x16_f16_{a,b}``,
                     ``wmma_sync_16x16x16_f16f16f32``, ``wmma_fill``/``wmma_store`` f32, registered by
                     :func:`ensure_tensor_intrinsics`): fp16 operands, fp32 accumulator fragments.  The
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
                     :func:`postprocs_for`) replaces the annotated blocks by the intrinsics.
``tensorcore_pipelined`` the same with the shared operand tiles double-buffered over the outer reduction
                     loop (software pipelining): pipelining is a structural choice, so it is a second
                     design space rather than a sampled decision; the search samples and mutates both.

fp32 layers never get the tensor-core spaces: on fp32 operands tensor cores would compute in TF32, which
this package never uses.  What can be verified without a GPU, and what cannot, is stated in
:mod:`tvm_winograd.cuda.check` (tensor-core numerics run the schedule in its pre-``RewriteTensorize`` form).
A tuned tensorcore record names our registered intrinsics: a process must call
:func:`ensure_tensor_intrinsics` (or :func:`ensure_tensor_intrinsics_for_database`) before it opens a
MetaSchedule database holding such records.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from typing import Callable, Sequence

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..contract import (BGEMM, DATA_PACK, DATA_PACK_ACC, DATA_PAD, INPUT_TILE, INVERSE, KERNEL_PACK,
                        KERNEL_PACK_ACC, LAYOUT_ATTR, M_ATTR, MATRIX_A, MATRIX_B, MATRIX_G, OUTPUT, SCHEDULE_RULES,
                        func_attr, kind_of)
from .common import root_blocks

logger = logging.getLogger(__name__)

__all__ = [
    "RULE_KEYS",
    "BGEMM_SPACES",
    "TENSORCORE_SPACE",
    "TENSORCORE_PIPELINED_SPACE",
    "TENSORCORE_SPACES",
    "TENSORCORE_MIN_SM",
    "THREAD_CHOICES",
    "bgemm_spaces",
    "tensorcore_ineligibility",
    "ensure_tensor_intrinsics",
    "ensure_tensor_intrinsics_for_database",
    "tensorcore_intrin_group",
    "INTRIN_PREFIX",
    "is_tensorcore_schedule",
    "register_rules",
    "rule_names",
    "schedule_cuda_default",
    "postprocs_for",
    "apply_postprocs",
    "apply_postproc",
    "space_generator",
    "light_tune_context",
]

#: Target keys the rules are registered for (MetaSchedule looks up ``<key>.<rule>`` per target key).
RULE_KEYS = ("cuda", "gpu")
#: SIMT bgemm design spaces: operands staged through shared memory, or read straight from global (L1/L2).
BGEMM_SPACES = ("shared", "direct")
#: The tensor-core bgemm design spaces (fp16 operands, fp32 accumulators; see :func:`bgemm_spaces`):
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
    return func_attr(sch.mod["main"], key, default)


def _layout(sch: s_tir.Schedule) -> str:
    layout = _func_attr(sch, LAYOUT_ATTR)
    if layout is None:
        raise ValueError(f"the PrimFunc lacks the {LAYOUT_ATTR} attribute: build it with tvm_winograd.compute")
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
    m = int(_func_attr(sch, M_ATTR))
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
    _inline_producers(sch, inverse, (MATRIX_A,))
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
                    spaces: Sequence[str] | None = None, target: Target | None = None) -> list[s_tir.Schedule]:
    """Batched GEMM: one design space per entry of ``spaces`` (default: :func:`bgemm_spaces` for the
    block's operand dtype and ``target``, else the current target)."""
    if target is None:
        target = Target.current(allow_none=True)
    if spaces is None:
        spaces = bgemm_spaces(_bgemm_operand_dtypes(sch, gemm), target)
    results = []
    for space in spaces:
        s = sch.copy() if len(spaces) > 1 else sch
        block = s.get_sblock(_name(sch, gemm)) if len(spaces) > 1 else gemm
        if space in TENSORCORE_SPACES:
            tensorized = _bgemm_tensorcore(s, block, target, pipelined=space == TENSORCORE_PIPELINED_SPACE)
            if tensorized is None:
                continue
            results.append(tensorized)
            continue
        _bgemm_space(s, block, space, pin)
        results.append(s)
    return results


# --------------------------------------------------------------------------------------------------
# Tensor-core bgemm
# --------------------------------------------------------------------------------------------------

def _bgemm_operand_dtypes(sch: s_tir.Schedule, gemm) -> tuple[str, ...]:
    return tuple(str(region.source.dtype) for region in sch.get(gemm).reads)


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


def bgemm_spaces(operand_dtypes: Sequence[str] | str, target: Target | None = None) -> tuple[str, ...]:
    """The bgemm design spaces offered for these operand dtypes and target: :data:`BGEMM_SPACES`, plus
    :data:`TENSORCORE_SPACES` when :func:`tensorcore_ineligibility` finds no reason against them."""
    reason = tensorcore_ineligibility(operand_dtypes, target)
    if reason is not None:
        logger.debug("no tensorcore bgemm space: %s", reason)
        return BGEMM_SPACES
    return BGEMM_SPACES + TENSORCORE_SPACES


_INTRIN_LOCK = threading.Lock()
_INTRIN_GROUP: dict[str, str] | None = None


def tensorcore_intrin_group() -> dict[str, str]:
    """Names of the wmma intrinsics the tensorcore space uses (registered on first call):
    16x16x16 fp16 operands from shared memory, fp32 accumulator fragments stored to shared memory."""
    return dict(ensure_tensor_intrinsics())


#: Prefix of our registered copies of TVM's wmma intrinsics (see :func:`ensure_tensor_intrinsics`).
INTRIN_PREFIX = "tvm_winograd_"


def ensure_tensor_intrinsics() -> dict[str, str]:
    """Register the wmma fp16 x fp16 -> fp32 tensor intrinsics the tensorcore spaces use (idempotent);
    returns the intrinsic group (keys init, load_a, load_b, compute, store).

    The intrinsics are TVM's own (``tvm/s_tir/tensor_intrin/cuda.py``: ``get_wmma_fill_intrin``,
    ``get_wmma_load_intrin``, ``get_wmma_sync_intrin``, ``get_wmma_store_intrin``), registered under
    TVM's names prefixed with :data:`INTRIN_PREFIX`.  Why not ``import tvm.s_tir.tensor_intrin.cuda``:
    it registers every CUDA intrinsic of TVM and costs 40-50 s of CPU here (hundreds of TVMScript
    functions parsed); this builds the five needed from that module's generator functions (its top-level
    ``TensorIntrin.register`` statements are skipped) in ~1 s.  Why the prefix: TVM's registry refuses a
    second registration of a name, so copies under TVM's names would make a later full import of that
    module (MetaSchedule's ``TuneContext`` does it) fail.

    Replaying a tuned tensorcore record (its trace holds ``Tensorize`` steps naming these intrinsics) in
    another process needs them registered too: call this first.
    """
    global _INTRIN_GROUP
    from tvm.s_tir import TensorIntrin

    with _INTRIN_LOCK:
        if _INTRIN_GROUP is not None:
            return _INTRIN_GROUP
        module = _tensor_intrin_generators()
        canonical = module["get_wmma_intrin_group"]("shared", "shared.dyn", "float16", "float32", False)
        generators = {
            "init": lambda: module["get_wmma_fill_intrin"](16, 16, 16, "float32"),
            "load_a": lambda: module["get_wmma_load_intrin"](16, 16, 16, "float16", "shared", False, False),
            "load_b": lambda: module["get_wmma_load_intrin"](16, 16, 16, "float16", "shared", True, False),
            "compute": lambda: module["get_wmma_sync_intrin"](16, 16, 16, "float16", "float32", False),
            "store": lambda: module["get_wmma_store_intrin"](16, 16, 16, "float32", "shared.dyn"),
        }
        group = {key: INTRIN_PREFIX + str(canonical[key]) for key in generators}
        for key, make in generators.items():
            if TensorIntrin.get(group[key], allow_missing=True) is None:
                TensorIntrin.register(group[key], *make())
        _INTRIN_GROUP = group
        return group


def ensure_tensor_intrinsics_for_database(work_dir: str | os.PathLike) -> bool:
    """Call :func:`ensure_tensor_intrinsics` if the MetaSchedule JSON database in ``work_dir`` holds
    tensorcore records (it names intrinsics with :data:`INTRIN_PREFIX`); returns whether it did.

    TVM parses every record's trace when a ``JSONDatabase`` is opened, and a trace naming an unregistered
    tensor intrinsic fails the whole open ("TensorIntrin 'tvm_winograd_wmma_fill_16x16x16_f32' is not
    registered"): call this before opening a database that may hold CUDA tensorcore records.
    """
    path = os.path.join(os.fspath(work_dir), "database_tuning_record.json")
    if not os.path.isfile(path):
        return False
    marker = INTRIN_PREFIX.encode()
    with open(path, "rb") as f:
        if marker not in f.read():
            return False
    ensure_tensor_intrinsics()
    return True


def _tensor_intrin_generators() -> dict:
    """The functions of ``tvm/s_tir/tensor_intrin/cuda.py`` without running its registrations."""
    import sys

    loaded = sys.modules.get("tvm.s_tir.tensor_intrin.cuda")
    if loaded is not None:
        return vars(loaded)
    path = os.path.join(os.path.dirname(tvm.__file__), "s_tir", "tensor_intrin", "cuda.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    tree.body = [node for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 or (isinstance(node, ast.FunctionDef) and not node.decorator_list)
                 or (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))]
    # compiled under the real file name: TVMScript reads each generator's source through inspect
    namespace: dict = {"__name__": "tvm.s_tir.tensor_intrin.cuda", "__file__": path}
    exec(compile(tree, path, "exec"), namespace)  # noqa: S102 - TVM's own installed module source
    return namespace


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


def _bgemm_tensorcore(sch: s_tir.Schedule, gemm, target: Target | None,
                      pipelined: bool = False) -> s_tir.Schedule | None:
    """The tensorcore space on ``sch`` (returns the new schedule), or None with a logged reason.

    ``pipelined``: double-buffer the shared operand tiles over the outer reduction loop (TVM's
    InjectSoftwarePipeline: step r0 + 1 loads while step r0 runs its fragment loads and mma_sync), as
    the SIMT ``shared`` space does.  (``MultiLevelTilingTensorCore``'s own wmma pipelining, with its
    register stage, produced schedules TVM 0.27 fails to lower: "fragment_info" check.)"""
    if target is None:
        from ..targets import resolve_target

        target = resolve_target("cuda")
    reason = tensorcore_ineligibility(_bgemm_operand_dtypes(sch, gemm), target)
    if reason is None:
        results = _tensorcore_rule(target, sch.mod).apply(sch, gemm)
        tensorized = [r for r in results if is_tensorcore_schedule(r)]
        if len(tensorized) == 1:
            if pipelined:
                _pipeline_tensorcore(tensorized[0])
            return tensorized[0]
        reason = f"MultiLevelTilingTensorCore produced {len(tensorized)} tensorized sketches (expected 1)"
    logger.info("bgemm %s: no tensorcore space (%s)", _layout_or(sch), reason)
    return None


def _pipeline_tensorcore(sch: s_tir.Schedule) -> None:
    # bgemm_o: [blockIdx.y, blockIdx.x, threadIdx.y, r0, r1, ...]; r0's body: the two shared tile loads and
    # the r1 loop (fragment loads + mma_sync).
    loops = sch.get_loops(sch.get_sblock("bgemm_o"))
    tags = [_thread_tag(sch, loop) for loop in loops[:3]]
    if tags != list(TENSORCORE_TILE_BINDS):
        raise RuntimeError(f"unexpected tensorcore loop nest {tags}: MultiLevelTilingTensorCore changed")
    sch.annotate(loops[3], "software_pipeline_stage", [0, 0, 1])
    sch.annotate(loops[3], "software_pipeline_order", [0, 1, 2])


def _layout_or(sch: s_tir.Schedule) -> str:
    return str(_func_attr(sch, LAYOUT_ATTR, "?"))


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
    cast = _cast_consumer(sch, pack, DATA_PACK) if _name(sch, pack) == DATA_PACK_ACC else None
    _inline_producers(sch, pack, (MATRIX_B,))
    input_tile = next(p for p in sch.get_producers(pack) if _name(sch, p) == INPUT_TILE)
    data_pad = next(p for p in sch.get_producers(input_tile) if _name(sch, p) == DATA_PAD)
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
    cast = _cast_consumer(sch, pack, KERNEL_PACK) if _name(sch, pack) == KERNEL_PACK_ACC else None
    _inline_producers(sch, pack, (MATRIX_G,))
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
    SCHEDULE_RULES[OUTPUT]: _schedule_output,
    SCHEDULE_RULES[INVERSE]: _schedule_inverse,
    SCHEDULE_RULES[BGEMM]: _schedule_bgemm,
    SCHEDULE_RULES[DATA_PACK]: _schedule_data_pack,
    SCHEDULE_RULES[KERNEL_PACK]: _schedule_kernel_pack,
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
    ``meta_schedule.cooperative_fetch`` / ``unroll_explicit``, bind leftovers, decompose reductions,
    verify the GPU limits and, last, ``RewriteTensorize`` the blocks the tensorcore space annotated with
    ``meta_schedule.auto_tensorize``: the ``cuda-tensorcore`` list, a no-op for the SIMT spaces)."""
    ensure_tensor_intrinsics()
    postprocs = ms.postproc.Postproc.create("cuda-tensorcore")
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
    """Apply the CUDA postprocessors in order; returns the name of the first that rejects, or None.

    A postprocessor that raises (e.g. ``RewriteReductionBlock`` on a block whose bindings are not
    quasi-affine) rejects, as in MetaSchedule's search, which discards such samples."""
    for p in postprocs if postprocs is not None else postprocs_for(target, sch.mod):
        if not apply_postproc(p, sch):
            return type(p).__name__
    return None


def apply_postproc(postproc: ms.postproc.Postproc, sch: s_tir.Schedule) -> bool:
    """One postprocessor; False if it rejects or raises (logged at debug level)."""
    try:
        return bool(postproc.apply(sch))
    except Exception as err:  # noqa: BLE001 - MetaSchedule's search treats any failure as a rejection
        logger.debug("%s raised: %s", type(postproc).__name__, str(err).splitlines()[-1] if str(err) else err)
        return False


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
    kind = kind_of(func) or ""
    if kind == "direct" or not kind:
        return _dlight_default(func, target)
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if kind == "weight_transform":
        name = KERNEL_PACK_ACC if KERNEL_PACK_ACC in blocks else KERNEL_PACK
        _schedule_kernel_pack(sch, blocks[name], pin=True)
    elif kind == "winograd":
        _schedule_output(sch, blocks[OUTPUT], pin=True)
        _schedule_inverse(sch, sch.get_sblock(INVERSE), pin=True)
        _schedule_bgemm(sch, sch.get_sblock(BGEMM), pin=True, spaces=("shared",))
        pack = DATA_PACK_ACC if DATA_PACK_ACC in blocks else DATA_PACK
        _schedule_data_pack(sch, sch.get_sblock(pack), pin=True)
    else:
        raise ValueError(f"kind {kind!r} has no CUDA default schedule")
    with target:
        rejected = apply_postprocs(sch, target)
    if rejected is not None:
        raise RuntimeError(f"the default CUDA schedule was rejected by {rejected} for {target}")
    return sch.mod["main"]


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
    ensure_tensor_intrinsics()
    return ms.space_generator.PostOrderApply(sch_rules=[ms.schedule_rule.ApplyCustomRule()],
                                             postprocs="cuda-tensorcore", mutator_probs="cuda")
