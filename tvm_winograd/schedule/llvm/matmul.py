"""Matrix products of any rank with their fused epilogues: ``C[S, I, J] += A[S, I, K] * B[S, K, J]``
(``S`` batch axes, ``I`` rows, ``J`` columns, ``K`` the reduction; each may be several loops, e.g.
ConvNeXt's MLP ``(1, 14, 14, 384) x (384, 1536)`` has ``I = (1, 14, 14)``), followed by bias,
activation or scale blocks.

Two schedules, by the number of rows ``M`` (the product of the ``I`` extents):

* ``M == 1`` with the weight indexed ``[k, n]`` (Relax's legalized ``x @ W``, VGG/ResNet's fully
  connected layers at batch 1; the schedule ``schedule/dense.py`` had): the product is bound by
  reading ``W`` once, so it streams ``W`` row by row: from 64 rows per core on, each core sums
  the products of a range of rows (``rfactor``: whole rows, one contiguous stream per core) and the
  partial sums are added after, with the epilogue; otherwise output columns in parallel tasks of
  :data:`STREAM_COLUMNS`, vector chunks of :data:`CHUNK` accumulated over the whole reduction
  (vectorized along the contiguous ``n``), the epilogue applied to the chunk as it is written (VGG-16's
  25088x4096 layer took ~0.4 s per image unscheduled).  ``W[n, k]`` at ``M == 1`` is DLight's GEMV
  rule's (next in the list).
* ``M > 1``: the register-tiled GEMM of BLIS/GotoBLAS.  The product is first normalized to one
  iterator per role (:func:`_normalize`).  A micro-kernel keeps an ``MR x NR`` tile of ``C`` in
  registers (NR = two SIMD registers of columns; MR rows: 6 x 16 fp32 is 12 of AVX2's 16 registers,
  leaving room for the two ``B`` vectors and the broadcast ``A`` value); per ``k`` it loads two ``B``
  vectors, broadcasts ``MR`` values of ``A`` and issues ``2 MR`` FMAs.  A weight (an unbatched ``B``
  that is a parameter of the function) is repacked whole into ``K x NR`` column panels by a
  layout-rewrite block, which the build pipeline folds at compile time on constant weights
  (:func:`_prepack_weight`): each panel is then one contiguous stream from DRAM.  Otherwise, when a
  worker's row tiles share a column panel, the ``K x NR`` panel of ``B`` is first copied to a
  contiguous buffer (any layout of ``B``: ``[k, n]``, ``[n, k]`` or batched), so the micro-kernel reads
  it with unit stride from L1/L2.  The parallel loop runs over the column panels (and batch), each
  worker walking all row tiles of its panels, or over the tiles too when there are few panels (then
  nothing is packed); the epilogue is applied
  to each tile while it is in registers.  ``M`` that no tile height divides is padded
  (:func:`_row_tile`); a column count that is no multiple of a vector runs its last vector under
  the split's predicate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.gpu.matmul import IterKind, get_index_map
from tvm.tirx.analysis import undefined_vars
from tvm.target import Target

from ...contract import LAYOUT_REWRITE_PREPROC
from .base import (LlvmRule, ScheduleError, extent_of, inline_injective, num_cores, vector_bits, vector_lanes)
from .injective import schedule_spatial_block

__all__ = ["CHUNK", "Matmul", "MatmulConfig", "analyze_matmul"]

logger = logging.getLogger(__name__)

#: Output columns per vector step of the batch-1 streaming schedule (4 AVX-512 vectors of fp32).
CHUNK = 64

#: Output columns per parallel task of the streaming schedule (a 4 KiB page of a row of ``W``): each
#: task walks the rows of ``W`` once, reading this many contiguous columns per row, with its
#: accumulators in L1 (measured on AlexNet's 9216x4096 and 4096x4096 layers: 64 columns per
#: task, 256 bytes per row with a page-sized stride, defeated the prefetcher at 9-14 GB/s).
STREAM_COLUMNS = 1024


@dataclass(frozen=True)
class MatmulConfig:
    """The knobs of the packed schedule: the register tile (``mr`` rows x ``nr`` columns) and whether
    a ``B`` that is no weight is copied panel by panel (a weight is packed whole whatever ``pack`` says,
    :func:`_prepack_weight`)."""

    mr: int
    nr: int
    pack: bool = True


@dataclass
class MatmulInfo:
    """A legalized matrix product, its loops grouped by role (after :func:`analyze_matmul`)."""

    block: object
    batch: list  # loops of S (and unit) iterators
    rows: list  # I
    cols: list  # J
    red: list  # K
    b_dims: list  # per dimension of B: IterKind or None (an expression that is not one iterator)
    m: int
    n: int
    k: int
    batch_size: int


def _is_multiply_add(block) -> bool:
    """The update is ``C = C + x * y`` (possibly with casts) and there is an init."""
    store = block.body
    value = getattr(store, "value", None)
    if not isinstance(value, tirx.Add) or block.init is None:
        return False
    products = [t for t in (value.a, value.b) if not isinstance(t, tvm.ir.expr.TensorLoad)]
    if len(products) != 1:
        return False
    p = products[0]
    while isinstance(p, tirx.Cast):
        p = p.value
    return isinstance(p, tirx.Mul)


def _var_kind(expr, kind_of: dict):
    """The IterKind of an index that is exactly one block iterator, else None."""
    return kind_of.get(expr) if isinstance(expr, tvm.ir.expr.Var) else None


def _iter_kinds(stmt) -> dict | None:
    """The role of each iterator of ``C[...] += A[...] * B[...]`` (DLight's ``detect_iter_traits``
    rules, which also demand a row iterator: here a product with one row, ``M == 1``, is one too):
    in A, B and C: batch; A and C: row; B and C: column; reduced over A and B: K; extent 1: trivial.
    None unless every access is one element and there are column and K iterators."""
    def axes(region):
        if any(not (isinstance(r.extent, tirx.IntImm) and r.extent.value == 1) for r in region):
            return None
        return {v for r in region for v in undefined_vars(r.min)}

    a_axes, b_axes, c_axes = axes(stmt.reads[0].region), axes(stmt.reads[1].region), axes(stmt.writes[0].region)
    if a_axes is None or b_axes is None or c_axes is None:
        return None
    kinds = {}
    for iv in stmt.iter_vars:
        v = iv.var
        if isinstance(iv.dom.extent, tirx.IntImm) and iv.dom.extent.value == 1:
            kind = IterKind.kIter_T
        elif iv.iter_type == tirx.IterVar.DataPar:
            kind = {(True, True, True): IterKind.kIter_S, (True, False, True): IterKind.kIter_I,
                    (False, True, True): IterKind.kIter_J}.get((v in a_axes, v in b_axes, v in c_axes))
        elif iv.iter_type == tirx.IterVar.CommReduce and v in a_axes and v in b_axes and v not in c_axes:
            kind = IterKind.kIter_K
        else:
            kind = None
        if kind is None:
            return None
        kinds[v] = kind
    if not {IterKind.kIter_J, IterKind.kIter_K} <= set(kinds.values()):
        return None
    return kinds


def analyze_matmul(sch: s_tir.Schedule) -> MatmulInfo | None:
    """The matrix product of ``sch`` (its only reduction block), or None if it is not one.

    ``normalize_prim_func`` (DLight) gives the loop of each iterator (it returns None unless every
    block binds its iterators to loops one to one); :func:`_iter_kinds` their roles."""
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    reductions = [bi for bi in infos if not bi.is_injective()]
    if len(reductions) != 1:
        return None
    info = reductions[0]
    stmt = sch.get(info.block_rv)
    if len(stmt.reads) != 2 or len(stmt.writes) != 1 or not _is_multiply_add(stmt):
        return None
    kind_of = _iter_kinds(stmt)
    if kind_of is None:
        return None
    groups = {IterKind.kIter_S: [], IterKind.kIter_I: [], IterKind.kIter_J: [], IterKind.kIter_K: []}
    for it in info.iters:
        kind = kind_of[it.var]
        groups[IterKind.kIter_S if kind == IterKind.kIter_T else kind].append(it.loop_rv)
    # one J iterator, and it is the output's last index: the contiguous axis the tile vectorizes
    if len(groups[IterKind.kIter_J]) != 1 or _var_kind(stmt.writes[0].region[-1].min, kind_of) != IterKind.kIter_J:
        return None
    b_index = next((i for i, r in enumerate(stmt.reads)
                    if any(_var_kind(d.min, kind_of) == IterKind.kIter_J for d in r.region)), None)
    if b_index != 1:
        # DLight's index maps (used to normalize) take reads[0] as A; Relax's legalized matmul reads
        # (A, B) in that order, so a product that does not is left to the later rules
        return None
    b_dims = [_var_kind(d.min, kind_of) for d in stmt.reads[1].region]
    sizes = []
    for kind in (IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K, IterKind.kIter_S):
        extents = [extent_of(sch, loop) for loop in groups[kind]]
        sizes.append(math.prod(extents) if None not in extents else None)
    if None in sizes:
        return None  # symbolic shapes: left to the later rules
    m, n, k, batch_size = sizes
    return MatmulInfo(info.block_rv, groups[IterKind.kIter_S], groups[IterKind.kIter_I], groups[IterKind.kIter_J],
                      groups[IterKind.kIter_K], b_dims, m, n, k, batch_size)


def _tile_config(target: Target, dtype: str, m: int) -> MatmulConfig:
    """The register tile for ``target``: NR = two SIMD registers of columns; MR fills the register
    file (6 rows with 16 registers, 12 with AVX-512's 32)."""
    nr = vector_lanes(dtype, target)
    mr = 12 if vector_bits(target) >= 512 else 6
    return MatmulConfig(mr=mr, nr=nr, pack=m > mr)


class Matmul(LlvmRule):
    """Matrix products with fused epilogues; see the module docstring."""

    name = "matmul"

    #: The register tiles of the search space (rows x columns in SIMD registers).
    TUNABLE_TILES = ((6, 2), (4, 2), (8, 1), (4, 3), (3, 4))

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        probe = s_tir.Schedule(func)
        info = analyze_matmul(probe)
        if info is None:
            return None
        dtype = str(probe.get(info.block).writes[0].source.dtype)
        if info.m == 1:
            if info.b_dims[-1] != IterKind.kIter_J:
                return None  # W[n, k]: DLight's GEMV
            # None if no chunk width divides the columns (e.g. 10 classes): the reduction rule's
            # vectorized sum takes it (the tiled GEMM's normalization needs a row axis)
            return _streaming(func, target, dtype)
        config = _tile_config(target, dtype, info.m)
        if not tunable:
            return _packed(func, target, config)
        lanes = vector_lanes(dtype, target) // 2
        spaces = []
        for mr, regs in self.TUNABLE_TILES:
            spaces.append(_packed(func, target, MatmulConfig(mr=mr, nr=regs * lanes, pack=info.m > mr)))
        return spaces


def _inline_around(sch: s_tir.Schedule, block) -> list:
    """Inline the spatial producers of ``A``/``B`` and the epilogue chain; returns the blocks left
    after the product (the epilogue's last blocks), in program order."""
    remaining = inline_injective(sch, keep=(block,))
    after, seen = [], False
    for b in remaining:
        if sch.get(b).same_as(sch.get(block)):
            seen = True
        elif seen:
            after.append(b)
    return after


def _group_loops(sch: s_tir.Schedule, info: MatmulInfo):
    """Reorder the product's loops to (S, I, J, K) and fuse each group; returns the four loops
    (``None`` for an empty batch group)."""
    sch.reorder(*info.batch, *info.rows, *info.cols, *info.red)
    fuse = lambda ls: (sch.fuse(*ls) if len(ls) > 1 else ls[0]) if ls else None  # noqa: E731
    return fuse(info.batch), fuse(info.rows), fuse(info.cols), fuse(info.red)


def _epilogue_at(sch: s_tir.Schedule, epilogue: list, loop, target: Target) -> None:
    """Compute each epilogue block at ``loop`` (on the tile just finished) and vectorize it; a block
    that cannot move there (not elementwise over the tile) gets its own spatial schedule."""
    for b in epilogue:
        try:
            sch.reverse_compute_at(b, loop, preserve_unit_loops=True)
        except ScheduleError as err:
            logger.debug("matmul epilogue %s scheduled on its own: %s", sch.get(b).name_hint, err)
            schedule_spatial_block(sch, b, target)
            continue
        inner = sch.get_loops(b)[-1]
        if extent_of(sch, inner) not in (None, 1):
            sch.vectorize(inner)


def _streaming(func: tirx.PrimFunc, target: Target, dtype: str) -> s_tir.Schedule | None:
    """Batch 1, ``W[k, n]``: stream ``W`` once (module docstring). The rows of ``W`` are split
    among the cores (:func:`_split_rows`) where that is possible, else the columns, in tasks of
    :data:`STREAM_COLUMNS`."""
    sch = s_tir.Schedule(func)
    info = analyze_matmul(sch)
    epilogue = _inline_around(sch, info.block)
    info = analyze_matmul(sch)
    block = info.block
    batch, m, n, k = _group_loops(sch, info)
    chunk = next((c for c in (CHUNK, 40, 32, 16, 8) if info.n % c == 0), None)  # 1000 classes: 40
    if chunk is None:
        return None
    parts = 2 * num_cores(target)
    if batch is None and num_cores(target) > 1 and info.k % parts == 0 and info.k >= 64 * parts:
        return _split_rows(sch, block, epilogue, k, parts, chunk, target)
    chunks = info.n // chunk
    per_task = next((b for b in range(min(chunks, STREAM_COLUMNS // chunk), 0, -1) if chunks % b == 0), 1)
    n0, nb, n1 = sch.split(n, [None, per_task, chunk])
    sch.reorder(*(loop for loop in (n0, m, k, nb, n1) if loop is not None))
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, n0, preserve_unit_loops=True)
    _epilogue_at(sch, epilogue, n0, target)
    outer = sch.fuse(batch, n0) if batch is not None else n0
    sch.parallel(outer)
    sch.vectorize(n1)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    return sch


def _split_rows(sch: s_tir.Schedule, block, epilogue: list, k, parts: int, chunk: int,
                target: Target) -> s_tir.Schedule:
    """``y = x W`` as ``parts`` partial products over consecutive row ranges of ``W`` (``rfactor``),
    one parallel task each, summed after: every task reads whole rows of ``W``, one contiguous
    stream, with its ``N`` partial sums in L1/L2. Measured (2 threads, DRAM-resident weights):
    AlexNet's 9216x4096 layer 10.0 -> 5.6 ms (15 -> 27 GB/s), 4096x4096 4.3 -> 2.9 ms, 4096x1000
    0.38 -> 0.17 ms, against column tasks that each walked every row for 4 KiB of it."""
    ko, _ = sch.split(k, [parts, None])
    partial = sch.rfactor(ko, 0)
    *outer, n, part, rows = sch.get_loops(partial)
    n0, n1 = sch.split(n, [None, chunk])
    sch.reorder(part, *outer, rows, n0, n1)
    sch.parallel(part)
    sch.vectorize(n1)
    init = sch.decompose_reduction(partial, rows)
    sch.vectorize(sch.get_loops(init)[-1])
    *outer, n, part = sch.get_loops(block)
    n0, n1 = sch.split(n, [None, chunk])
    sch.reorder(*outer, n0, part, n1)
    sch.parallel(n0)
    sch.vectorize(n1)
    _epilogue_at(sch, epilogue, n0, target)
    sch.decompose_reduction(block, part)
    return sch


def _column_tile(n: int, nr: int, lanes: int) -> int:
    """Columns per register tile: ``nr`` if it divides ``n``, else one register if that does, else half
    a register (1000 classes: 8), else ``nr`` with the last tile's vector under the split's predicate
    -- all of ``n`` if narrower.  The predicate is the last resort: the vectorizer scalarizes every
    tile under it (measured, 2 threads: a (8, 2048) x (2048, 1000) product, ResNet-50's classifier at
    batch 8, 6.4 ms in 32-column tiles, 0.63-0.67 ms in 8-column ones)."""
    if n <= nr:
        return n
    return next((c for c in (nr, lanes, lanes // 2) if n % c == 0), nr)


def _row_tile(m: int, mr: int) -> tuple[int, bool]:
    """``(rows per tile, pad)``: the largest tile height from ``mr`` down to ``mr / 2`` that divides
    ``m``; if none does, ``mr`` with the rows padded to a multiple of it.

    A partial last tile would need the split's row guard, which TVM leaves inside the ``k`` loop of
    every tile (LoopPartition does not peel it there; ``sch.loop_partition`` of the tiled nest
    segfaults): it halved the speed of ConvNeXt's 196-row product (measured under load).  Padding
    copies ``A`` once (``M x K`` per call, a few percent of the product)."""
    if m <= mr:
        return m, False
    for rows in range(mr, (mr + 1) // 2 - 1, -1):
        if m % rows == 0:
            return rows, False
    return mr, True


def _normalize(sch: s_tir.Schedule, info: MatmulInfo, epilogue: list, target: Target, pad_rows: int = 0):
    """Rewrite the product as ``C'[s, i, j] += A[...] * B[...]`` over one iterator per role (DLight's
    GPU matmul normalization: ``reindex`` the output, fuse its layout and the block's iterators),
    with the epilogue folded into the block that writes ``C'`` back.  With ``pad_rows``, ``A`` is
    also copied to a fused ``[s, i, k]`` layout and padded (``pad_einsum``) to a multiple of
    ``pad_rows`` rows, so that every row tile is full.

    Fusing the row loops at loop level would not do: a tile of rows ``i0 * 14 + i1`` is no rectangle
    in ``(i0, i1)``, and the write-back computed at the tile would cover its bounding box (rows of
    other tiles).  Returns ``(block, writeback, leftover epilogue blocks)``.
    """
    block = info.block
    # pad_einsum wants every operand indexed by plain iterators: with padding, B is copied to the
    # normalized layout too (a batched B[s0, s1, k, n] would be read at [s // S1, s % S1, k, n])
    a_copy = sch.reindex(block, ("read", 0)) if pad_rows else None
    b_copy = sch.reindex(block, ("read", 1)) if pad_rows else None
    writeback = sch.reindex(block, ("write", 0))
    matmul_map, a_map, b_map, c_map = get_index_map(sch.get(block))
    sch.transform_layout(block, ("write", 0), c_map)
    sch.transform_block_layout(writeback, c_map)
    if a_copy is not None:
        sch.transform_layout(a_copy, ("write", 0), a_map)
        sch.transform_layout(b_copy, ("write", 0), b_map)
    sch.transform_block_layout(block, matmul_map)
    leftover = []
    for b in epilogue:
        try:
            sch.reverse_compute_inline(b)
        except ScheduleError as err:  # not elementwise over C (e.g. a transpose): scheduled on its own
            logger.debug("matmul epilogue %s not fused: %s", sch.get(b).name_hint, err)
            leftover.append(b)
    if a_copy is not None:
        sch.pad_einsum(block, [1, pad_rows, 1, 1])
        # pad_einsum adds a padded copy of A (read from the fused copy) and a crop of C: one copy
        # of A remains, scheduled as a spatial block; the crop is folded into the write-back
        (a_pad,) = [p for p in sch.get_producers(block) if not sch.get(p).same_as(sch.get(a_copy))
                    and any(sch.get(q).same_as(sch.get(a_copy)) for q in sch.get_producers(p))]
        sch.compute_inline(a_copy)
        sch.compute_inline(b_copy)  # read in place again: the packed panel copies it where it pays
        (crop,) = sch.get_consumers(block)
        sch.compute_inline(crop)
        schedule_spatial_block(sch, a_pad, target)
    return block, writeback, leftover


def _b_layout(sch: s_tir.Schedule, block) -> tuple[int, list]:
    """Which read of the normalized block is ``B`` and the role of each of its dimensions."""
    stmt = sch.get(block)
    kinds = dict(zip((iv.var for iv in stmt.iter_vars),
                     (IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K)))
    for index, read in enumerate(stmt.reads):
        dims = [_var_kind(d.min, kinds) for d in read.region]
        if IterKind.kIter_J in dims:
            return index, dims
    raise ValueError("normalized matmul has no operand indexed by its columns")


def _packed(func: tirx.PrimFunc, target: Target, config: MatmulConfig) -> s_tir.Schedule:
    """The register-tiled (packed) GEMM of the module docstring."""
    sch = s_tir.Schedule(func)
    info = analyze_matmul(sch)
    epilogue = _inline_around(sch, info.block)
    info = analyze_matmul(sch)  # inlining a producer into A or B changes the reads: analyse again
    mr, pad = _row_tile(info.m, config.mr)
    block, writeback, leftover = _normalize(sch, info, epilogue, target, mr if pad else 0)
    m_size, n_size, batch_size = -(-info.m // mr) * mr, info.n, info.batch_size
    dtype = str(sch.get(block).writes[0].source.dtype)
    nr = _column_tile(n_size, config.nr, vector_lanes(dtype, target) // 2)
    batch, m, n, k = sch.get_loops(block)
    n_o, n_i = sch.split(n, [None, nr])
    m_o, m_i = sch.split(m, [None, mr])
    sch.reorder(batch, n_o, m_o, k, m_i, n_i)
    # Parallel over (batch, column panels), each worker walking the row tiles of its panels (and
    # packing each panel once), when there are enough panels; else over row tiles as well.
    panels = batch_size * -(-n_size // nr)
    by_panel = panels >= 2 * num_cores(target) or m_size <= mr
    parallel = sch.fuse(batch, n_o)
    tile_loop = m_o
    if not by_panel:
        parallel = tile_loop = sch.fuse(parallel, m_o)
    # the tile accumulates in registers (a local buffer), written back with the epilogue per tile
    sch.set_scope(block, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(writeback)[-1])
    for b in leftover:
        schedule_spatial_block(sch, b, target)
    if by_panel and not _prepack_weight(sch, block, nr):  # a weight: packed whole, at compile time
        if config.pack and m_size > mr:
            _pack_panel(sch, block, parallel)
    if (extent_of(sch, parallel) or 2) > 1:
        sch.parallel(parallel)
    sch.unroll(m_i)
    sch.vectorize(n_i)
    init = sch.decompose_reduction(block, k)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    sch.unroll(init_loops[-2])
    return sch


def _prepack_weight(sch: s_tir.Schedule, block, nr: int) -> bool:
    """Repack an unbatched ``B`` that is a parameter of the function (a weight) whole into panels,
    ``(N / nr, K, nr)``, in a block annotated :data:`~tvm_winograd.contract.LAYOUT_REWRITE_PREPROC`:
    the build pipeline hoists it out (``hoist_weight_packing``) and folds it on a constant weight, so a
    model packs its weights at compile time and the product reads each panel as one contiguous
    stream. Per-panel copies of a row-major ``B`` read it ``nr`` columns (128 bytes) per row of
    ``N * 4`` bytes, which DRAM serves at a fraction of its bandwidth. Measured (Zen 5, 2 threads,
    weights cold): ConvNeXt-T's (49, 768) x (768, 3072) 0.75 -> 0.60 ms, (196, 384) x (384, 1536) 0.59
    -> 0.54; a batch-8 classifier, where no panel was copied at all, (8, 25088) x (25088, 4096) 17.0 ->
    11.3 ms, (8, 2048) x (2048, 1000) 0.74 -> 0.58; the whole ConvNeXt-T 1.20x. A weight that is no
    constant is repacked on each call, one pass over ``B`` in its own parallel block. False (nothing
    changed) for a batched ``B``, one computed inside the function, or columns that are no multiple of
    ``nr``."""
    b_index, dims = _b_layout(sch, block)
    buffer = sch.get(block).reads[b_index].source
    params = list(sch.mod["main"].params)
    if (len(dims) != 2 or set(dims) != {IterKind.kIter_K, IterKind.kIter_J} or not any(p.same_as(buffer) for p in params)
            or any(not isinstance(d, tirx.IntImm) for d in buffer.shape)):
        return False
    n = int(buffer.shape[dims.index(IterKind.kIter_J)])
    if n % nr:
        return False
    pack = sch.cache_read(block, b_index, "global")
    if dims[0] == IterKind.kIter_K:  # W[k, n]
        sch.transform_layout(pack, ("write", 0), lambda k, j: (j // nr, k, j % nr))
    else:  # W[n, k]
        sch.transform_layout(pack, ("write", 0), lambda j, k: (j // nr, k, j % nr))
    sch.annotate(pack, LAYOUT_REWRITE_PREPROC, True)
    # loops in the packed order (panel, k, column of the panel): each panel written as one stream,
    # a row-major W read nr columns (one vector) at a time
    first, second = sch.get_loops(pack)
    j_loop, k_loop = (second, first) if dims[0] == IterKind.kIter_K else (first, second)
    panel, column = sch.split(j_loop, [None, nr])
    sch.reorder(panel, k_loop, column)
    sch.parallel(panel)
    if dims[0] == IterKind.kIter_K:
        sch.vectorize(column)
    return True


def _pack_panel(sch: s_tir.Schedule, block, panel_loop) -> None:
    """Copy the ``K x NR`` panel of ``B`` the iterations of ``panel_loop`` use into a contiguous
    buffer (``[..., k, n]`` whatever ``B``'s layout), once per panel."""
    b_index, dims = _b_layout(sch, block)
    pack = sch.cache_read(block, b_index, "global")
    j_dim = dims.index(IterKind.kIter_J)
    if j_dim != len(dims) - 1:  # e.g. W[n, k]: make n the last (contiguous) dimension of the copy
        perm = [d for d in range(len(dims)) if d != j_dim] + [j_dim]
        sch.transform_layout(pack, ("write", 0), tirx.IndexMap.from_func(
            lambda *idx: [idx[p] for p in perm], ndim=len(dims)))
    sch.compute_at(pack, panel_loop, preserve_unit_loops=True)
    loops = sch.get_loops(pack)
    inner = loops[-1]
    if j_dim != len(dims) - 1 and len(loops) >= 2:
        # the copy's loops follow B's dimensions; walk it in the packed buffer's order
        sch.reorder(loops[-1], loops[-2])
        inner = sch.get_loops(pack)[-1]
    if extent_of(sch, inner) not in (None, 1):
        sch.vectorize(inner)
