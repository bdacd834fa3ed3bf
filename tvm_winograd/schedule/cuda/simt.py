"""The SIMT CUDA stage schedules: output (+ epilogue), inverse in registers, the ``shared`` / ``direct``
bgemm spaces, data_pack and kernel_pack (see the package docstring for what each does)."""

from __future__ import annotations

from tvm import s_tir

from ...contract import (
    DATA_PACK,
    DATA_PACK_ACC,
    DATA_PAD,
    INPUT_TILE,
    KERNEL_PACK,
    KERNEL_PACK_ACC,
    M_ATTR,
    MATRIX_A,
    MATRIX_B,
    MATRIX_G,
)
from .knobs import (
    bind_threads,
    block_name,
    cast_consumer,
    categorical,
    inline_producers,
    sch_attr,
    sch_layout,
    thread_tag,
    tile2,
)

__all__ = ["BGEMM_SPACES", "THREAD_CHOICES", "schedule_output", "schedule_inverse", "schedule_bgemm_simt",
           "schedule_data_pack", "schedule_kernel_pack"]

#: SIMT bgemm design spaces: operands staged through shared memory, or read straight from global (L1/L2).
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


def schedule_output(sch: s_tir.Schedule, out, pin: bool = False) -> list[s_tir.Schedule]:
    """One thread per m x m output tile; the epilogue is already inlined in this block."""
    m = int(sch_attr(sch, M_ATTR))
    nchw = sch_layout(sch) == "NCHW"
    loops = sch.get_loops(out)
    if nchw:
        n, k, h, w = loops
    else:
        n, h, w, k = loops
    ho, hi = sch.split(h, [None, m])
    wo, wi = sch.split(w, [None, m])
    # NHWC keeps K innermost among the fused axes so neighbouring threads write neighbouring channels.
    # NCHW puts K outermost: (n, ho, wo) stay adjacent, so the tile index p = (n nH + ho) nW + wo that the
    # inverse (computed at this loop) reads is quasi-affine in the fused loop; with (n, k, ho, wo) and
    # a batch above 1, RewriteReductionBlock rejected every schedule.
    outer = (k, n, ho, wo) if nchw else (n, ho, wo, k)
    sch.reorder(*outer, hi, wi)
    threads = categorical(sch, THREAD_CHOICES, DEFAULT_THREADS if pin else None)
    bind_threads(sch, sch.fuse(*outer), threads)
    sch.unroll(hi)
    sch.unroll(wi)
    return [sch]


def schedule_inverse(sch: s_tir.Schedule, inverse, pin: bool = False) -> list[s_tir.Schedule]:
    """Y = A_T M A in registers at the output's thread loop (fused with the epilogue)."""
    inline_producers(sch, inverse, (MATRIX_A,))
    consumers = sch.get_consumers(inverse)
    if len(consumers) != 1:
        raise ValueError(f"inverse has {len(consumers)} consumers; expected the output block")
    out_loops = sch.get_loops(consumers[0])
    tx = next((l for l in out_loops if thread_tag(sch, l) == "threadIdx.x"), None)
    if tx is None:  # output not scheduled by winograd_output (should not happen): bind it here
        schedule_output(sch, consumers[0], pin)
        out_loops = sch.get_loops(consumers[0])
        tx = next(l for l in out_loops if thread_tag(sch, l) == "threadIdx.x")
    sch.compute_at(inverse, tx, preserve_unit_loops=True)
    sch.set_scope(inverse, 0, "local")
    for loop in sch.get_loops(inverse)[-4:]:  # vh, vw, r_a, r_b (or r_a, r_b after reorder)
        sch.unroll(loop)
    return [sch]


def schedule_bgemm_simt(sch: s_tir.Schedule, gemm, space: str, pin: bool) -> None:
    e, n, y0, y1, rc = sch.get_loops(gemm)  # (K, P) for NCHW, (P, K) for NHWC; y1 is contiguous
    batch = sch.fuse(e, n)
    y0_o, y0_r = tile2(sch, y0, MAX_REG_TILE, 2 if pin else None)
    y0_b, y0_t = tile2(sch, y0_o, MAX_THREADS_Y, 8 if pin else None)
    y1_o, y1_r = tile2(sch, y1, MAX_REG_TILE, 4 if pin else None)
    y1_b, y1_t = tile2(sch, y1_o, MAX_THREADS_X, 16 if pin else None)
    rc_o, rc_i = tile2(sch, rc, MAX_REDUCE_STEP, 8 if pin else None)
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
            lanes = categorical(sch, VECTOR_CHOICES, DEFAULT_VECTOR if pin else None)
            sch.annotate(cached, "meta_schedule.cooperative_fetch", lanes)
        if not pin:
            # Double-buffer the shared tiles: load step rc_o + 1 while computing step rc_o (TVM's
            # InjectSoftwarePipeline; ThreadSync places the barriers).  Searched spaces only: the
            # default schedule stays single-buffered, the most conservative choice for untuned code.
            sch.annotate(rc_o, "software_pipeline_stage", [0, 0, 1])
            sch.annotate(rc_o, "software_pipeline_order", [0, 1, 2])
    unroll = categorical(sch, UNROLL_CHOICES, DEFAULT_UNROLL if pin else None)
    sch.annotate(gemm, "meta_schedule.unroll_explicit", unroll)


def schedule_data_pack(sch: s_tir.Schedule, pack, pin: bool = False) -> list[s_tir.Schedule]:
    """V = B_T d B: one thread per (channel, tile), the input tile and V in registers.

    With fp16 storage (``data_pack_acc`` -> cast ``data_pack``) the cast block is the per-thread store
    and the fp32 transform is computed at it in registers (a reduction block cannot be inlined into its
    consumer).
    """
    cast = cast_consumer(sch, pack, DATA_PACK) if block_name(sch, pack) == DATA_PACK_ACC else None
    inline_producers(sch, pack, (MATRIX_B,))
    input_tile = next(p for p in sch.get_producers(pack) if block_name(sch, p) == INPUT_TILE)
    data_pad = next(p for p in sch.get_producers(input_tile) if block_name(sch, p) == DATA_PAD)
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
    bx, tx = tile2(sch, sch.fuse(x0, x1), MAX_PACK_THREADS, DEFAULT_THREADS if pin else None)
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


def schedule_kernel_pack(sch: s_tir.Schedule, pack, pin: bool = False) -> list[s_tir.Schedule]:
    """U = G g G_T: one thread per (channel, output channel), the transform unrolled."""
    cast = cast_consumer(sch, pack, KERNEL_PACK) if block_name(sch, pack) == KERNEL_PACK_ACC else None
    inline_producers(sch, pack, (MATRIX_G,))
    e, nu, c, k, ra, rb = sch.get_loops(pack)
    sch.reorder(c, k, e, nu, ra, rb)
    for loop in (ra, rb):
        sch.unroll(loop)
    if cast is not None:
        ce, cn, c, k = sch.get_loops(cast)
        sch.reorder(c, k, ce, cn)
    threads = categorical(sch, THREAD_CHOICES, DEFAULT_THREADS if pin else None)
    _, tx = bind_threads(sch, sch.fuse(c, k), threads)
    if cast is not None:
        sch.compute_at(pack, tx, preserve_unit_loops=True)
        sch.set_scope(pack, 0, "local")
    return [sch]
