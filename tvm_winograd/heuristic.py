"""The one heuristic: direct or Winograd, and which tile m, when no measurement says otherwise.

Two cost models, one per target family, each a frozen structure holding all of its constants:

* :data:`CPU_COST_MODEL` (:class:`CpuCostModel`, llvm and any other non-CUDA kind): fitted on measured
  CPU timings (see the class);
* :data:`CUDA_HEURISTIC` (:class:`CudaHeuristic`, cuda): **not measured** -- no GPU exists where this
  package is developed -- a roofline estimate from multiply-add counts and DRAM bytes at a datasheet
  balance.

:func:`choose_algorithm` is the only decision; :func:`cheapest_tile` is the same model's least-cost tile
where Winograd is forced.  The relax pass, ``cuda-check``, the benchmarks and the tuner's candidate list
(:data:`CANDIDATE_TILES`) all read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compute import WinogradConfig, tile_counts
from .schedule.fusion import spec_fused_step
from .transforms import ALPHA_MAX
from .workload import Conv2dSpec, winograd_ineligibility

__all__ = [
    "CANDIDATE_TILES",
    "CpuCostModel",
    "CudaHeuristic",
    "CPU_COST_MODEL",
    "CUDA_HEURISTIC",
    "candidate_tiles",
    "cheapest_tile",
    "choose_algorithm",
    "direct_cost",
    "winograd_cost",
]

#: Tile sizes the heuristic and the tuner consider, per input dtype (larger m loses accuracy fast:
#: fp16 has 11 bits, and F(6, 3)'s error is ~10x F(2, 3)'s; see scripts/accuracy.py).
CANDIDATE_TILES = {"float32": (2, 4, 6), "float16": (2, 4)}


def candidate_tiles(spec: Conv2dSpec) -> list[int]:
    """The tiles of :data:`CANDIDATE_TILES` for ``spec``'s dtype whose alpha = m + r - 1 is supported."""
    return [m for m in CANDIDATE_TILES.get(spec.dtype, (2, 4)) if m + spec.r - 1 <= ALPHA_MAX]


def _transform_macs(spec: Conv2dSpec, m: int) -> tuple[int, int]:
    """Multiply-adds of the separable transforms: data (2 alpha^3 per tile and input channel) and
    inverse (alpha^2 m + alpha m^2 per tile and output channel); the weight transform is done ahead of
    time."""
    alpha, tiles = m + spec.r - 1, tile_counts(spec, m)[2]
    return tiles * 2 * alpha**3 * spec.in_channels, tiles * (alpha * alpha * m + alpha * m * m) * spec.out_channels


@dataclass(frozen=True)
class CpuCostModel:
    """The CPU cost model: multiply-adds and floats moved through memory, in GEMM multiply-add units.

    Fitted by ``scripts/heuristic_sweep.py`` on the untuned default schedules of the ResNet-18 and
    VGG-16 3x3 layers (NHWC, 2 threads, 2026-11-22; tables in BENCHMARKS.md): it picks the measured
    best of direct / F(2,3) / F(4,3) / F(6,3) on 11 of 12 NHWC layers (7 of 8 NCHW) and costs 0.5% on
    average (the NHWC miss: F(4,3) for F(2,3) on VGG conv5_1, 6% slower); before the fused schedule's
    terms it picked F(6,3) on six of them and cost 15% on average.  ``tests/test_heuristic.py`` pins
    its picks.  The fused schedule's own thresholds are the schedule's (:mod:`.schedule.fusion`).
    """

    #: Relative cost of one (separable, vectorized) transform multiply-add vs one register-tiled GEMM
    #: multiply-add: the transforms gather, store and run far from the FMA peak.
    transform_weight: float = 3.0
    #: Cost of one float read or written from memory: the transformed weights U (alpha^2 / r^2 times
    #: the weights) and, unless the fused schedule keeps them in cache, the V and M buffers.
    memory_weight: float = 8.0
    #: Cost of one float of U re-read from the last-level cache (the fused schedule reads U once per step).
    cache_weight: float = 0.8
    #: Winograd must be estimated at least this much cheaper than direct (the model's error is ~10%).
    min_gain: float = 1.2
    #: The CPU GEMM micro-kernel holds ``rows`` tiles x 2 vectors of accumulators, ``rows`` the largest
    #: divisor of the tiles (of a fused step) up to 8 (schedule/default.py); with fewer rows it runs at
    #: rows/8 of its rate (fewer independent FMAs per loaded vector of U).  F(6,3) on 112 pixels has
    #: 19 x 19 tiles: one row.  Fitted on the NCHW sweep (BENCHMARKS.md: 5/8 -> 7/8 picks, 8.3 -> 0.8 %
    #: loss); the NHWC picks are unchanged.
    full_rows: int = 8

    def winograd_cost(self, spec: Conv2dSpec, m: int, target_kind: str = "llvm") -> float:
        """Estimated cost of F(m, r) on ``spec``; the fused-step and register-tile terms are llvm's."""
        alpha = m + spec.r - 1
        tiles = tile_counts(spec, m)[2]
        c, k = spec.in_channels, spec.out_channels
        gemm = tiles * alpha * alpha * c * k
        data, inverse = _transform_macs(spec, m)
        u = alpha * alpha * c * k
        step = spec_fused_step(spec, m, target_kind)
        if step is None:  # U read once; V and M written and read once each
            memory = self.memory_weight * (u + 2 * tiles * alpha * alpha * (c + k))
        else:  # U from memory once, then from the last-level cache once per further step
            memory = self.memory_weight * u + self.cache_weight * (tiles / step - 1) * u
        if target_kind == "llvm":
            rows = step or max(d for d in range(1, self.full_rows + 1) if tiles % d == 0)
            gemm /= min(1.0, rows / self.full_rows)
        return gemm + self.transform_weight * (data + inverse) + memory

    def direct_cost(self, spec: Conv2dSpec) -> float:
        """Estimated cost of the direct convolution: its multiply-adds and one read of the weights."""
        kh, kw = spec.kernel
        weights = spec.out_channels * (spec.in_channels // spec.groups) * kh * kw
        return spec.flops / 2 + self.memory_weight * weights


@dataclass(frozen=True)
class CudaHeuristic:
    """The CUDA heuristic: a roofline estimate, **not measured on a GPU** (none exists here).

    Each kernel takes the longer of its multiply-adds at the FMA peak and its DRAM bytes at the DRAM
    bandwidth: ``max(macs, balance * bytes)``, in multiply-add units; kernels run one after another.
    Winograd (our CUDA schedules, :mod:`.schedule.cuda`) is three kernels -- data_pack (reads the
    input, writes V), bgemm (reads V and U, writes M in the accumulator dtype) and the inverse with its
    epilogue (reads M, writes the output) -- and the direct convolution one implicit GEMM reading input
    and weights once and writing the output.  Operands re-read across thread blocks are assumed to hit
    in L2, every transform multiply-add costs one GEMM multiply-add (no measurement to weigh them), and
    tensor cores are not modelled (they would speed up both sides' GEMMs).  Nothing here was fitted:
    replace it by measured records (``tvm-winograd tune`` on a GPU, or an offline GPU round).
    """

    #: Multiply-adds per DRAM byte at the roofline's ridge, from the datasheet of the default CUDA
    #: target (sm_80, A100-SXM4-40GB: 19.5 TFLOP/s fp32 = 9.75 T multiply-adds/s over 1555 GB/s = 6.3);
    #: an H100 SXM (67 TFLOP/s fp32, 3.35 TB/s) is at 10.
    balance: float = 6.3
    #: Winograd must be estimated at least this much cheaper than direct (an unmeasured model: a margin).
    min_gain: float = 1.2

    def winograd_cost(self, spec: Conv2dSpec, m: int) -> float:
        alpha, tiles = m + spec.r - 1, tile_counts(spec, m)[2]
        c, k = spec.in_channels, spec.out_channels
        data, inverse = _transform_macs(spec, m)
        pack = _itemsize(WinogradConfig(m=m).resolved_pack_dtype(spec))
        acc = _itemsize(WinogradConfig(m=m).acc_dtype)
        v_bytes = tiles * alpha * alpha * c * pack
        u_bytes = alpha * alpha * c * k * pack
        m_bytes = tiles * alpha * alpha * k * acc
        input_bytes = spec.batch * c * spec.height * spec.width * _itemsize(spec.dtype)
        output_bytes = spec.batch * k * spec.out_height * spec.out_width * _itemsize(spec.out_dtype)
        return (self._kernel(data, input_bytes + v_bytes)
                + self._kernel(tiles * alpha * alpha * c * k, v_bytes + u_bytes + m_bytes)
                + self._kernel(inverse, m_bytes + output_bytes))

    def direct_cost(self, spec: Conv2dSpec) -> float:
        kh, kw = spec.kernel
        weights = spec.out_channels * (spec.in_channels // spec.groups) * kh * kw
        size = _itemsize(spec.dtype)
        data = spec.batch * spec.in_channels * spec.height * spec.width * size
        output = spec.batch * spec.out_channels * spec.out_height * spec.out_width * _itemsize(spec.out_dtype)
        return self._kernel(spec.flops / 2, data + weights * size + output)

    def _kernel(self, macs: float, dram_bytes: float) -> float:
        return max(float(macs), self.balance * dram_bytes)


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "float32": 4, "float64": 8}[str(dtype)]


#: The CPU model's fitted constants (the only instance the package uses).
CPU_COST_MODEL = CpuCostModel()
#: The CUDA heuristic's constants (datasheet balance, not measured).
CUDA_HEURISTIC = CudaHeuristic()


def winograd_cost(spec: Conv2dSpec, m: int, target_kind: str = "llvm") -> float:
    """Estimated cost of F(m, r) on ``spec`` for ``target_kind`` (the units of that kind's model)."""
    if target_kind == "cuda":
        return CUDA_HEURISTIC.winograd_cost(spec, m)
    return CPU_COST_MODEL.winograd_cost(spec, m, target_kind)


def direct_cost(spec: Conv2dSpec, target_kind: str = "llvm") -> float:
    """Estimated cost of the direct convolution on ``spec`` for ``target_kind``."""
    return CUDA_HEURISTIC.direct_cost(spec) if target_kind == "cuda" else CPU_COST_MODEL.direct_cost(spec)


def _min_gain(target_kind: str) -> float:
    return CUDA_HEURISTIC.min_gain if target_kind == "cuda" else CPU_COST_MODEL.min_gain


def cheapest_tile(spec: Conv2dSpec, target_kind: str = "llvm") -> int:
    """The candidate tile of least estimated cost (the smaller m on a tie), eligibility not checked."""
    return min(candidate_tiles(spec), key=lambda m: (winograd_cost(spec, m, target_kind), m))


def choose_algorithm(spec: Conv2dSpec, target_kind: str = "llvm") -> tuple[str, int | None, str]:
    """``("winograd", m, reason)`` or ``("direct", None, reason)`` for ``spec`` without measurements."""
    why = winograd_ineligibility(spec)
    if why is not None:
        return "direct", None, why[1]
    best = cheapest_tile(spec, target_kind)
    gain = direct_cost(spec, target_kind) / winograd_cost(spec, best, target_kind)
    if gain < _min_gain(target_kind):
        return "direct", None, f"heuristic: best Winograd F({best},{spec.r}) is estimated only {gain:.2f}x cheaper"
    return "winograd", best, f"heuristic: F({best},{spec.r}) estimated {gain:.2f}x cheaper than direct"
