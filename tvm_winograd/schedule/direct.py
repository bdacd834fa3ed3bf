"""Fixed CPU schedule (no search) for :func:`~tvm_winograd.compute.direct_func` on llvm.

The classic x86 direct-convolution recipe (as in oneDNN or TVM's ``conv2d_NCHWc``), keeping the
function's signature:

- output channels are the vector dimension (``lanes``: 16 floats, one zmm register);
- a register tile of ``k_vectors`` output-channel vectors x ``w_tile`` output columns is accumulated
  in registers while the whole reduction (input channels x the r x r window) runs inside it: each
  step loads ``k_vectors`` weight vectors, broadcasts ``w_tile`` input scalars and issues
  ``k_vectors * w_tile`` FMAs. The input is only read as scalars, so any stride costs the same;
- the reduction runs over the window rows and columns, then input channels innermost: both the
  input (NCHW: copied channels-last with the padding, as NCHW's channel stride of H * W floats
  costs a page per channel) and the weight are then read contiguously;
- NCHW: the OIHW weight is repacked to ``(K / lanes, R, S, C, lanes)`` by a block annotated
  ``meta_schedule.layout_rewrite_preproc``. ``relax.transform.SplitLayoutRewritePreproc`` hoists it
  out of the function, after which ``FoldConstant`` packs constant weights at compile time (see
  :func:`hoist_weight_packing`); left inside, it runs on every call. The tile is written back to NCHW
  (transposed) together with the epilogue. NHWC: HWIO weights are contiguous along the output
  channels already; packing them too (``pack_weight=True``) pays off only when hoisted.

Weights larger than a core's L2 (:data:`STREAM_MIN_WEIGHT_BYTES`; NHWC, dense, enough output-channel
blocks to share out) are **streamed** (:func:`_tile_streamed`): inside a model they come from DRAM, and
with the reduction inside the rows each task reads its block of weights at DRAM speed on its first row
and computes the other rows from L2, the two never overlapping. The streamed schedule takes the
reduction in blocks of :data:`STREAM_CHUNK` input channels outside the rows (partial sums in the task's
local output tile) and prefetches the next block's weights a few cache lines per row, so that DRAM
streams while the FMAs run. Measured on a Zen 5 (2 threads, weights cold: eight copies, 72 MB, in
turn): ResNet 512@7 3x3 0.67-0.75 -> 0.58 ms, 1x1 2048->512 at 7x7 0.27-0.29 -> 0.24, 1x1 1024->2048
stride 2 0.63 -> 0.51, equal hot; below ~1 MB of weights it costs up to 20 % and is not used.

The parallel tasks are an image's output row and block of output channels. Where the weights are small
(up to :data:`ROWS_OUTER_MAX_WEIGHT_BYTES`) the rows run outside the channel blocks, so that a row's input
is read once and reused from L1/L2 by every block while each core keeps all the weights in its L2; with
the blocks outside, the input is read from the shared cache once per block. Measured in the models on an
Intel Ice Lake (2 threads, same process, alternating): the 1x1 convs at 56x56 with 64-256 input channels
1.1-1.5x, DenseNet-121 1.10x, ResNet-50 1.05x, ResNeXt50 1.02-1.05x, MobileNetV2 1.02x, ResNet-18 equal;
at 512 KiB of weights equal or 1.1x, above it (hot, standalone) 5-15 % slower.

Dense NHWC convolutions whose output channels are no multiple of 16 come padded to whole vectors
(:func:`~tvm_winograd.compute.direct_channel_multiple`: a zero-padded weight block, which the packing
absorbs, so a model pads its weights ahead of time, and an epilogue that writes the real channels): the
register tile then runs on zmm vectors instead of 8- or 4-channel ones (MobileNetV2's 144->24 1x1 at
56x56 1.7x, EfficientNet's 240->40 at 28x28 1.6x).

Grouped NHWC convolutions take the same tile when a vector of output channels lies within one
group (4, 8 or 16 channels per group or a multiple: each lane then reads the same input channel);
depthwise NHWC convolutions vectorize over the channels (input and weight both contiguous vectors)
with the window's columns unrolled inside the tile (:func:`depthwise_tile`). Measured side by side
on this machine against the simple schedule: ResNeXt's 32-group 3x3 convs 1.6-3x, MobileNet's and
EfficientNet's depthwise 3x3/5x5 1.1-1.7x, ConvNeXt's depthwise 7x7 1.3-1.5x. Both pad their input
inside each parallel task, not in a pass of its own (:func:`_pad_per_task`: a further 2-3.8x on the
depthwise layers below 56x56). NCHW grouped
convolutions, groups of 1-2 channels, a channel multiplier and output-channel counts that are not a
multiple of 4 use :func:`schedule_direct_simple`.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import tvm
from tvm import relax, s_tir, tirx

from ..contract import DATA_PAD, DIRECT_EPILOGUE, LAYOUT_REWRITE_PREPROC, WEIGHT_PAD, layout_of
from ..lowering import constant_bytes
from .common import body_of, root_blocks, with_body
from .llvm.base import TASKS_PER_CORE

__all__ = ["schedule_direct_llvm", "schedule_direct_simple", "direct_tile", "depthwise_tile", "hoist_weight_packing"]

logger = logging.getLogger(__name__)

#: Accumulators a tile may hold with the channel vectors outside the columns in the reduction step. AVX-512
#: has 32 zmm registers, but LLVM then keeps every column's broadcast live and spills beyond about 14
#: accumulators (measured: 2 x 7 beats 2 x 8 by 2x, 2 x 14 by 5x); see :data:`WIDE_ACC_REGISTERS`.
ACC_REGISTERS = 14

#: Accumulators of the wide tile of a dense convolution whose weights are not streamed: two channel
#: vectors x up to 14 columns, with the columns outside the channel vectors in the reduction step (each
#: broadcast input feeds both vectors at once; the kernel then needs 28 accumulators, 2 weight vectors
#: and 1-2 broadcasts, and LLVM keeps them all in registers). Measured on an Intel Ice Lake (2 threads,
#: hot, against the 2 x 7 tile): 1x1 convs at 14-56 columns 1.04-1.16x, stride-2 3x3 1.08-1.10x, the
#: 7x7 stem 1.09x; in the models (one process, alternating) DenseNet-121 1.03x, ResNet-50 1.03x, ResNet-18
#: 1.01x. With the streamed weights it lost (0.93x), which keeps the 2 x 7 tile.
WIDE_ACC_REGISTERS = 28

#: Output columns of a depthwise tile: its accumulators, the row's ``w_tile + s - 1`` input vectors
#: and the row's weights share the 32 registers.
DEPTHWISE_COLUMNS = 8

#: Weights (bytes) from which the NHWC register tile streams them (:func:`_tile_streamed`): more than a
#: core's L2 (1 MiB on Zen 4 and Zen 5), so that inside a model they come from DRAM. Measured on a Zen 5:
#: from 4 MB of weights the streamed schedule is 10-25 % faster cold, at ~1 MB equal, at 0.06-0.25 MB
#: up to 20 % slower (hot and cold alike: the partial sums' loads and stores per block).
STREAM_MIN_WEIGHT_BYTES = 1 << 20

#: Weights (bytes) up to which a dense register-tiled convolution runs its output rows outside its
#: output-channel blocks (tasks: image, row, channel block): the row's input is then read once from
#: the shared cache and reused from L1/L2 by every channel block, the weights staying in each core's L2.
#: Above it the channel blocks stay outside (each task's weights reused over its rows).
ROWS_OUTER_MAX_WEIGHT_BYTES = 512 << 10

#: Input channels per block of the streamed reduction (measured 32 / 64 / 128 on the ResNet-50 shapes:
#: 64 best; 32 pays the partial sums twice as often, 128 prefetches too far ahead).
STREAM_CHUNK = 64

#: Output rows per task of a grouped or depthwise convolution, whose task pads its own input rows
#: (:func:`_pad_per_task`): measured on a Zen 5 (2 threads, hot) against the rows of 2, 4 and 8: 16 (or the
#: whole image) best or equal on every MobileNetV2 / EfficientNet / ConvNeXt / ResNeXt / RegNet shape.
PAD_TASK_ROWS = 16

#: The loop annotation that makes TVM's LoopPartition peel a loop's guarded iterations.
PARTITION_HINT = "pragma_loop_partition_hint"

_CONV_BLOCKS = {"NCHW": "conv2d_nchw", "NHWC": "conv2d_nhwc"}
_GROUP_BLOCK = "group_conv2d_nhwc"  # topi's grouped NHWC convolution, depthwise included
_PAD_BLOCKS = ("pad_temp", DATA_PAD, "PaddedInput")
_EPILOGUE = DIRECT_EPILOGUE


def _largest_divisor(n: int, options: Sequence[int]) -> int:
    return next((o for o in options if n % o == 0 and n >= o), 1)


def _layout(func: tirx.PrimFunc) -> str:
    return layout_of(func, "NCHW")


def direct_tile(out_channels: int, out_width: int, lanes: int = 16,
                group_channels: int | None = None, wide: bool = False) -> tuple[int, int, int] | None:
    """The register tile ``(vector, k_vectors, w_tile)`` for ``out_channels`` x ``out_width``.

    ``vector`` output channels per register (``lanes``, else 8 or 4), ``k_vectors`` registers along
    the output channels and ``w_tile`` output columns, a divisor of ``out_width`` (no tail): two
    channel vectors x up to 7 columns (one vector x up to 14 if the channel blocks are odd).
    Measured on Zen 5 (AVX-512): larger tiles (2 x 14, 4 x 7) make LLVM spill accumulators and run
    2-5x slower. ``group_channels`` (a grouped convolution's output channels per group): the
    vector must lie within one group, so that each lane reads the same input channel (a broadcast).
    ``wide``: a dense convolution whose weights are not streamed takes two ``lanes``-wide vectors x up
    to 14 columns, with the columns outside the vectors in the reduction step (:data:`WIDE_ACC_REGISTERS`).
    ``None`` if no vector of 4 or more fits.
    """
    vector = _channel_vector(out_channels if group_channels is None else math.gcd(out_channels, group_channels),
                             lanes)
    if vector is None:
        return None
    k_vectors = 2 if (out_channels // vector) % 2 == 0 else 1
    w_tile = _width_tile(out_width, ACC_REGISTERS // k_vectors)
    if wide and group_channels is None and vector == lanes and k_vectors == 2:
        w_tile = max(w_tile, _width_tile(out_width, WIDE_ACC_REGISTERS // k_vectors))
    return vector, k_vectors, w_tile


def depthwise_tile(channels: int, out_width: int, lanes: int = 16) -> tuple[int, int, int] | None:
    """The register tile ``(vector, 1, w_tile)`` of a depthwise convolution: one channel vector x
    up to 8 output columns, the window's columns unrolled inside so that LLVM loads each input
    vector of a row once for all the columns that use it (``w_tile + s - 1`` loads instead of
    ``w_tile * s``); the accumulators, the row's inputs and the weights stay in registers.
    ``None`` if ``channels`` is not a multiple of 4."""
    vector = _channel_vector(channels, lanes)
    return None if vector is None else (vector, 1, _width_tile(out_width, DEPTHWISE_COLUMNS))


def _channel_vector(channels: int, lanes: int) -> int | None:
    """Channels per vector register: ``lanes``, else 8 or 4, dividing ``channels``; None if none does."""
    vector = _largest_divisor(channels, (lanes, 8, 4))
    return vector if channels % vector == 0 and vector >= 4 else None


def _width_tile(out_width: int, cap: int) -> int:
    w_tile = _largest_divisor(out_width, range(cap, 0, -1))
    if 2 * w_tile < min(cap, out_width):  # e.g. a prime width: a full tile and a masked tail instead
        w_tile = min(cap, out_width)
    return w_tile


def schedule_direct_llvm(func: tirx.PrimFunc, lanes: int = 16, pack_weight: bool | None = None,
                         cores: int = 1) -> tirx.PrimFunc:
    """A fixed CPU schedule for :func:`~tvm_winograd.compute.direct_func` (no search).

    Parameters
    ----------
    func
        A direct PrimFunc (``tvm_winograd.kind == "direct"``), NCHW/OIHW or NHWC/HWIO; grouped and
        depthwise NHWC convolutions too.
    lanes
        float32 lanes of one vector register (16: AVX-512).
    pack_weight
        Repack the weight to ``(K / lanes, R, S, C, lanes)`` in a ``layout_rewrite_preproc`` block.
        ``None``: NCHW yes (OIHW cannot be read as output-channel vectors), NHWC no (HWIO can). With
        :func:`hoist_weight_packing` applied to the Relax module the packing costs nothing at run
        time and NHWC gains too where the weights are large (measured, one core: ResNet 512@7x7
        3x3 3.4 -> 2.4 ms); without it the packing runs on every call.
    cores
        The target's cores (``num-cores``): the streamed schedule (large NHWC weights, see the module
        docstring) parallelizes over output-channel blocks only and is used where they give at least
        ``TASKS_PER_CORE`` tasks per core.

    Returns
    -------
    tirx.PrimFunc
        The scheduled function; same signature. See the module docstring for the recipe.
    """
    try:
        return _schedule_register_tiled(func, lanes, pack_weight=pack_weight, cores=cores)
    except _NotApplicable as why:
        logger.debug("direct schedule: %s; simple schedule", why)
    except (s_tir.ScheduleError, RuntimeError, ValueError) as err:  # a shape the recipe did not foresee: stay correct
        logger.warning("register-tiled direct schedule failed (%s); simple schedule", err)
    return schedule_direct_simple(func, lanes)


class _NotApplicable(Exception):
    pass


def _conv_block(sch: s_tir.Schedule, blocks: dict, layout: str):
    """The convolution block and its groups: ``(block, groups, depthwise)``."""
    if layout == "NHWC" and _GROUP_BLOCK in blocks:
        conv = blocks[_GROUP_BLOCK]
        data, weight = (region.source for region in sch.get(conv).reads[:2])
        in_channels, group_in = int(data.shape[-1]), int(weight.shape[2])
        groups = in_channels // group_in
        out_channels = int(weight.shape[3])
        return conv, groups, group_in == 1 and out_channels == groups
    conv_name = _CONV_BLOCKS.get(layout)
    if conv_name not in blocks:
        raise _NotApplicable(f"no {conv_name} block (an NCHW grouped convolution)")
    return blocks[conv_name], 1, False


def _schedule_register_tiled(func: tirx.PrimFunc, lanes: int, tile: tuple[int, int, int] | None = None,
                             pack_weight: bool | None = None, cores: int = 1) -> tirx.PrimFunc:
    layout = _layout(func)
    nchw = layout == "NCHW"
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    conv, groups, depthwise = _conv_block(sch, blocks, layout)
    out_shape = [int(sch.get(loop).extent) for loop in sch.get_loops(conv)[:4]]
    out_channels, out_width = (out_shape[1], out_shape[3]) if nchw else (out_shape[3], out_shape[2])
    chosen = tile is None
    if tile is None:
        tile = depthwise_tile(out_channels, out_width, lanes) if depthwise else direct_tile(
            out_channels, out_width, lanes, out_channels // groups if groups > 1 else None)
    if tile is None:
        raise _NotApplicable(f"{out_channels} output channels in {groups} groups")
    if pack_weight is None:
        pack_weight = nchw
    if nchw and not pack_weight:
        raise _NotApplicable("NCHW needs the packed weight")
    pad = next((blocks[n] for n in _PAD_BLOCKS if n in blocks), None)
    streamed = (not nchw and groups == 1 and pack_weight and tile[0] == lanes
                and _streams_weights(sch, conv, tile, cores))
    if chosen and groups == 1 and not depthwise and not streamed:
        tile = direct_tile(out_channels, out_width, lanes, wide=True)
    task_pad = pad if groups > 1 and pad is not None and not _is_copy(sch, pad) else None
    pack = _prepare_operands(sch, conv, None if task_pad is not None else pad, nchw, pack_weight, tile[0])
    if streamed:
        return _tile_streamed(sch, conv, blocks.get(_EPILOGUE), tile, pack)
    _tile_accumulate(sch, conv, blocks.get(_EPILOGUE), nchw, tile, depthwise, task_pad, cores)
    return sch.mod["main"]


def _streams_weights(sch: s_tir.Schedule, conv, tile: tuple[int, int, int], cores: int) -> bool:
    """Whether the NHWC convolution ``conv`` takes :func:`_tile_streamed`: weights of at least
    :data:`STREAM_MIN_WEIGHT_BYTES`, input channels in whole :data:`STREAM_CHUNK` blocks and at least
    ``TASKS_PER_CORE`` output-channel blocks (times the batch) per core."""
    vector, k_vectors, _ = tile
    loops = sch.get_loops(conv)
    n, _, _, k, _, _, rc = (int(sch.get(loop).extent) for loop in loops[:7])
    tasks = n * (k // (vector * k_vectors))
    return (_weight_bytes(sch, conv) >= STREAM_MIN_WEIGHT_BYTES and rc % STREAM_CHUNK == 0
            and tasks >= TASKS_PER_CORE * max(cores, 1))


def _weight_bytes(sch: s_tir.Schedule, conv) -> int:
    """Bytes of the weight the convolution block reads (packed or not)."""
    return constant_bytes(sch.get(conv).reads[1].source)


def _prepare_operands(sch: s_tir.Schedule, conv, pad, nchw: bool, pack_weight: bool, vector: int):
    """Copy NCHW's input channels-last (with the padding), parallelize the padding, and pack the
    weight to ``(K / vector, R, S, C, vector)`` in a hoistable preproc block (returned; None if not
    packed)."""
    if nchw:
        # The input, padded or not, is copied channels-last: the reduction then reads it (and the
        # packed weight) contiguously; NCHW's channel stride of H * W floats costs a page per channel.
        if pad is None:
            pad = sch.cache_read(conv, 0, "global")
        sch.transform_layout(pad, ("write", 0), lambda n, c, h, w: (n, h, w, c))
        p_loops = sch.get_loops(pad)
        sch.reorder(p_loops[0], p_loops[2], p_loops[3], p_loops[1])
        sch.parallel(sch.fuse(p_loops[0], p_loops[2]))
    elif pad is not None and _is_copy(sch, pad):  # topi's pad_temp of a conv without padding: read the input
        sch.compute_inline(pad)
    elif pad is not None:
        p_loops = sch.get_loops(pad)
        sch.parallel(sch.fuse(p_loops[0], p_loops[1]))
    if pack_weight:
        pack = sch.cache_read(conv, 1, "global")
        weight_pad = root_blocks(sch).get(WEIGHT_PAD)
        if weight_pad is not None:  # the zero-padded output channels, folded into the packing
            sch.compute_inline(weight_pad)
        if nchw:
            sch.transform_layout(pack, ("write", 0), lambda o, i, h, w: (o // vector, h, w, i, o % vector))
        else:
            sch.transform_layout(pack, ("write", 0), lambda h, w, i, o: (o // vector, h, w, i, o % vector))
        sch.annotate(pack, LAYOUT_REWRITE_PREPROC, True)
        sch.parallel(sch.get_loops(pack)[0])
        return pack
    return None


def _is_copy(sch: s_tir.Schedule, pad) -> bool:
    """Whether the padding block pads nothing (its buffer has the input's shape)."""
    block = sch.get(pad)
    return [int(v) for v in block.writes[0].source.shape] == [int(v) for v in block.reads[0].source.shape]


def _tile_accumulate(sch: s_tir.Schedule, conv, epilogue, nchw: bool, tile: tuple[int, int, int],
                     depthwise: bool, task_pad=None, cores: int = 1) -> None:
    """The register tile: accumulate in a local buffer over the whole reduction, then write it back
    through the epilogue. Dense and grouped: the window, then the input channels, inside the tile
    (weight vectors x broadcast inputs). Depthwise: the window's rows outside, its columns unrolled
    inside (each input vector loaded once per row for every column that reads it). ``task_pad``: the
    padding block, computed per task (:func:`_pad_per_task`); None: it is a pass of its own."""
    vector = tile[0]
    # The accumulator tile lives in a local buffer that LLVM keeps in registers (fully unrolled).
    acc = sch.cache_write(conv, 0, "local")
    if nchw:  # output channels innermost in the tile too: whole-vector accumulator accesses
        sch.transform_layout(conv, ("write", 0), lambda n, k, h, w: (n, k // vector, h, w, k % vector))
    loops = sch.get_loops(conv)
    n, a, b, c = loops[:4]
    k_loop, h_loop, w_loop = (a, b, c) if nchw else (c, a, b)
    ko, kt, ki, wo, wi = _split_tile(sch, k_loop, w_loop, tile)
    rc, ry, rx = loops[4:] if nchw else (loops[6], loops[4], loops[5])
    # a wide tile broadcasts each column's input once for both channel vectors (see WIDE_ACC_REGISTERS)
    step = (wi, kt) if tile[1] * tile[2] > ACC_REGISTERS else (kt, wi)
    if depthwise:
        sch.reorder(n, ko, h_loop, wo, ry, rc, rx, kt, wi, ki)
        sch.unroll(rx)
    elif task_pad is None and _weight_bytes(sch, conv) <= ROWS_OUTER_MAX_WEIGHT_BYTES:
        sch.reorder(n, h_loop, ko, wo, ry, rx, rc, *step, ki)
        ko, h_loop = h_loop, ko  # the task is (image, row, channel block): fused in that order below
    else:
        sch.reorder(n, ko, h_loop, wo, ry, rx, rc, *step, ki)
    if task_pad is not None:
        _pad_per_task(sch, task_pad, n, ko, h_loop, cores)
    else:
        sch.parallel(sch.fuse(n, ko, h_loop))
    writer = _write_back_at(sch, conv, acc, epilogue, wo, (ki, wi, kt), ry)
    if not nchw:  # NHWC write-back (w, k): k is contiguous in memory, vectorize it
        _, inner = sch.split(sch.get_loops(writer)[-1], [None, vector])
        sch.vectorize(inner)
    for loop in sch.get_loops(writer)[2:]:
        if sch.get(loop).kind == tirx.ForKind.SERIAL:
            sch.unroll(loop)


def _pad_per_task(sch: s_tir.Schedule, pad, n, ko, h_loop, cores: int) -> None:
    """Pad the input inside each parallel task of a grouped or depthwise convolution: a task takes an
    image's block of output channels over up to :data:`PAD_TASK_ROWS` output rows (fewer where the tasks
    would not give ``TASKS_PER_CORE`` per core) and first copies the input rows and channels it reads,
    with their zero border, into a buffer of its own (L1/L2-resident; its halo rows are copied by both
    neighbouring tasks). A padding pass of its own costs these convolutions as much as the
    convolution: per input element it does the load and store the convolution's few FMAs are set
    against. Measured on a Zen 5 (2 threads, hot), against the pass: depthwise 3x3 192@28 2.0x,
    384@14 2.2x, 960@7 2.4x, 96@112 stride 2 1.3x, 144@56 equal; EfficientNet's 5x5 672@14 3.8x,
    ConvNeXt's 7x7 768@7 2.9x; grouped 3x3 (ResNeXt, RegNet) 1.0-1.3x. Dense convolutions keep the
    pass (each task would copy all input channels: the 3->64 3x3 stem at 224x224 ran 2.2x slower).
    Where the padding cannot move into the task it stays a parallel pass of its own."""
    out_rows = int(sch.get(h_loop).extent)
    blocks = int(sch.get(n).extent) * int(sch.get(ko).extent)
    rows = next((r for r in range(min(PAD_TASK_ROWS, out_rows), 0, -1)
                 if out_rows % r == 0 and blocks * (out_rows // r) >= TASKS_PER_CORE * max(cores, 1)), 1)
    task = sch.fuse(n, ko, sch.split(h_loop, [None, rows])[0])
    sch.parallel(task)
    try:
        sch.compute_at(pad, task)
    except s_tir.ScheduleError as err:
        logger.warning("grouped convolution: its padding stays a pass of its own (%s)", err)
        p_loops = sch.get_loops(pad)
        sch.parallel(sch.fuse(p_loops[0], p_loops[1]))
        return
    sch.vectorize(sch.get_loops(pad)[-1])


def _split_tile(sch: s_tir.Schedule, k_loop, w_loop, tile: tuple[int, int, int]):
    """Split the output channels into (blocks, vectors per tile, lanes) and the columns into (tiles,
    columns per tile) for the register ``tile``: ``(ko, kt, ki, wo, wi)``."""
    vector, k_vectors, w_tile = tile
    ko, kt, ki = sch.split(k_loop, [None, k_vectors, vector])
    out_width = int(sch.get(w_loop).extent)
    wo, wi = sch.split(w_loop, [None, w_tile])
    if out_width % w_tile:
        # The split's guard (column < width) would stay on every FMA of the reduction loop, and LLVM
        # does not unswitch it: TVM's LoopPartition peels the last tile instead (full tiles free of
        # guards, the tail's folded to constants). Measured (Zen 4, 2 threads): Inception-v3's
        # 768->192 1x1 at 17x17, 126 -> 211 GFLOP/s; a 7x7 192->192 at 17x17, 113 -> 193.
        sch.annotate(wo, PARTITION_HINT, 1)
    return ko, kt, ki, wo, wi


def _write_back_at(sch: s_tir.Schedule, conv, acc, epilogue, loop, tile_loops, first_reduction):
    """Write the local accumulator tile back (through the epilogue, which then reads it directly: conv
    -> local tile -> epilogue) at ``loop``; vectorize the tile's channel loop and unroll its other two
    (``tile_loops``: vector, columns, channel vectors), and zero the tile before ``first_reduction``.
    Returns the write-back block."""
    sch.reverse_compute_at(acc, loop)
    writer = acc
    if epilogue is not None:
        sch.compute_inline(acc)
        sch.reverse_compute_at(epilogue, loop)
        writer = epilogue
    vector_loop, *unrolled = tile_loops
    sch.vectorize(vector_loop)  # before decompose_reduction: the update block alone fails vectorize's checks
    for tile_loop in unrolled:
        sch.unroll(tile_loop)
    init = sch.decompose_reduction(conv, first_reduction)
    i_loops = sch.get_loops(init)
    if sch.get(i_loops[-1]).kind != tirx.ForKind.VECTORIZED:
        sch.vectorize(i_loops[-1])
    return writer


def _tile_streamed(sch: s_tir.Schedule, conv, epilogue, tile: tuple[int, int, int], pack) -> tirx.PrimFunc:
    """The NHWC register tile with the weights streamed (see the module docstring).

    Per task (an image's block of ``k_vectors * vector`` output channels) the whole output tile is
    accumulated in a local buffer; the reduction runs window row, window column and blocks of
    :data:`STREAM_CHUNK` input channels outside the output rows, each row's register tiles adding one
    block's partial sums to it. While a row computes, it prefetches its share of the next block's
    weights (``ceil(chunk / rows)`` cache lines per weight stream), so the block after this one is in
    the cache when the rows reach it. The packed weight is ``(K / vector, R, S, C, vector)``: a
    stream's next block is the next ``chunk * vector`` floats, across window positions and, past the
    last one, the next output-channel block's first (a prefetch past the array's end is harmless)."""
    vector, k_vectors, _ = tile
    acc = sch.cache_write(conv, 0, "local")
    loops = sch.get_loops(conv)
    n, h_loop, w_loop, k_loop = loops[:4]
    ry, rx, rc = loops[4:7]
    ko, kt, ki, wo, wi = _split_tile(sch, k_loop, w_loop, tile)
    k_blocks = int(sch.get(ko).extent)
    rows = int(sch.get(h_loop).extent)
    rco, rci = sch.split(rc, [None, STREAM_CHUNK])
    sch.reorder(n, ko, ry, rx, rco, h_loop, wo, rci, kt, wi, ki)
    task = sch.fuse(n, ko)
    sch.parallel(task)
    writer = _write_back_at(sch, conv, acc, epilogue, task, (ki, wi, kt), ry)
    _, inner = sch.split(sch.get_loops(writer)[-1], [None, vector])
    sch.vectorize(inner)

    row_loop = sch.get(h_loop)
    task_var, ry_var, rx_var, block_var, row_var = (sch.get(loop).loop_var for loop in (task, ry, rx, rco, h_loop))
    weight = sch.get(pack).writes[0].source
    per_row = -(-STREAM_CHUNK // rows)  # cache lines of one stream's next block prefetched per row
    line = tirx.Var("line", str(row_var.ty))
    channel = (block_var + 1) * STREAM_CHUNK + row_var * per_row + line  # one cache line = 16 floats
    fetches = [tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", tirx.address_of(tirx.BufferLoad(
        weight, [tirx.floormod(task_var, k_blocks) * k_vectors + j, ry_var, rx_var, channel, 0])), 0, 3, 1))
        for j in range(k_vectors)]
    head = tirx.For(line, 0, per_row, tirx.ForKind.SERIAL, tirx.SeqStmt(fetches) if len(fetches) > 1 else fetches[0])
    func = sch.mod["main"]
    return func.with_body(_with_loop_head(func.body, row_loop, head))


def _with_loop_head(stmt, loop: tirx.For, head: tirx.Stmt):
    """``stmt`` with ``head`` run first in every iteration of ``loop`` (a node of ``stmt``); None when
    ``stmt`` does not contain ``loop``."""
    if stmt.same_as(loop):
        return with_body(loop, tirx.SeqStmt([head, loop.body]))
    if isinstance(stmt, tirx.SeqStmt):
        for i, child in enumerate(stmt.seq):
            new = _with_loop_head(child, loop, head)
            if new is not None:
                return tirx.SeqStmt(list(stmt.seq[:i]) + [new] + list(stmt.seq[i + 1:]))
        return None
    if isinstance(stmt, (tirx.For, s_tir.SBlockRealize, s_tir.SBlock)):
        body = _with_loop_head(body_of(stmt), loop, head)
        return None if body is None else with_body(stmt, body)
    return None


def schedule_direct_simple(func: tirx.PrimFunc, lanes: int = 16) -> tirx.PrimFunc:
    """The simple fixed schedule (any direct PrimFunc, grouped too): a (channels x columns) tile,
    the contiguous one vectorized, outer loops parallel; padding and epilogue parallel apart."""
    layout = _layout(func)
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    epilogue = blocks.pop(_EPILOGUE, None)
    for name in _PAD_BLOCKS:
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


def split_weight_packing(func: tirx.PrimFunc) -> tuple[tirx.PrimFunc, tirx.PrimFunc | None]:
    """``(prepacked, packing)`` of a scheduled PrimFunc ``(data, weight, ..., output)``: ``packing`` maps
    the weight to the layout ``prepacked`` reads in its place (``relax.transform.SplitLayoutRewritePreproc``,
    as :func:`hoist_weight_packing` does in a model); ``(func, None)`` when ``func`` packs nothing.  For a
    single layer outside a model (the per-layer benchmark): pack once, then time ``prepacked``."""
    params = [relax.Var(f"p{i}", relax.TensorType([int(d) for d in p.shape], str(p.dtype)))
              for i, p in enumerate(func.params)]
    bb = relax.BlockBuilder()
    with bb.function("main", params[:-1]):
        gv = bb.add_func(func, "conv")
        bb.emit_func_output(bb.emit(relax.call_tir(gv, params[:-1], params[-1].ty)))
    split = relax.transform.SplitLayoutRewritePreproc()(bb.get())
    prims = {gv.name_hint: f for gv, f in split.functions.items() if isinstance(f, tirx.PrimFunc)}
    if "conv_prepacked" not in prims:
        return func, None
    return prims["conv_prepacked"], prims["conv_weight_prepack"]


def hoist_weight_packing(mod: tvm.IRModule) -> tvm.IRModule:
    """Move the weight-packing blocks of scheduled PrimFuncs into their own PrimFuncs
    (``relax.transform.SplitLayoutRewritePreproc``) and fold them on constant weights
    (``FoldConstant``), so packing happens once at compile time instead of on every call.

    The split functions keep their names (the split would add ``_prepacked``: layer reports name the
    PrimFunc they call) and the folded packing functions are dropped. A non-constant weight keeps
    its packing call at run time (correct, only slower).
    """
    split = relax.transform.SplitLayoutRewritePreproc()(mod)
    if len(split.functions) == len(mod.functions):
        return mod
    split = relax.transform.FoldConstant()(split)
    entries = [gv.name_hint for gv, f in split.functions.items() if isinstance(f, relax.Function)]
    split = relax.transform.DeadCodeElimination(entries)(split)
    return _restore_names(split, "_prepacked")


def _restore_names(mod: tvm.IRModule, suffix: str) -> tvm.IRModule:
    """Rename the PrimFuncs ``<name><suffix>`` back to ``<name>`` (when free) in ``mod``."""
    taken = {gv.name_hint for gv in mod.get_global_vars()}
    renames = {}
    for gv, func in mod.functions.items():
        name = gv.name_hint
        if isinstance(func, tirx.PrimFunc) and name.endswith(suffix) and name[: -len(suffix)] not in taken:
            renames[gv] = name[: -len(suffix)]
    if not renames:
        return mod
    builder = relax.BlockBuilder()
    mapping = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            mapping[gv] = builder.add_func(func, renames.get(gv, gv.name_hint))

    @relax.expr_functor.mutator
    class _Rename(relax.PyExprMutator):
        def visit_global_var_(self, op: tvm.ir.GlobalVar) -> tvm.ir.GlobalVar:  # noqa: N802 - TVM's name
            return mapping.get(op, op)

    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            builder.add_func(_Rename().visit_expr(func), gv.name_hint)
    out = builder.get()
    if mod.attrs is not None:
        out = out.with_attrs(mod.attrs)
    return out
