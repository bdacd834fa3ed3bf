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

from dataclasses import dataclass, replace
from typing import Union

from tvm.target import Target

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
    "cpu_cost_model",
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

    Fitted by ``scripts/heuristic_sweep.py --cold`` on the untuned default schedules of the ResNet-18 and
    VGG-16 3x3 layers (NHWC, 2 threads, 2026-12-05; table in BENCHMARKS.md), each call made after reading
    twice the last-level cache, as inside a whole model whose weights do not stay in the cache: it picks the
    measured best of F(2,3) / F(4,3) / F(6,3) on 11 of 12 layers and costs 0.2 % on average (the miss:
    F(4,3) for F(2,3) on ResNet 128@28, 2 % slower).  The earlier fit on hot calls (weights in cache,
    2026-11-22) kept F(4,3) on VGG conv5_1 and ResNet 256@14 and 128@28, 7-22 % slower than F(2,3) in a
    model.  The fit's machine was a Zen 5 (two 512-bit FMAs per cycle per core); on a Zen 4 (half the
    FMA rate, the same DRAM bandwidth: 2026-12-06) :func:`cpu_cost_model` halves ``dram_weight`` and the
    model then picks the measured best of direct / F(2,3) / F(4,3) / F(6,3) on 11-12 of 12 layers in two
    sweeps (F(4,3) on VGG conv5_1 and ResNet 256@14, a tie with F(2,3) there; F(2,3) on 512@7).  The
    2026-12-07 split of the transforms' weight (input transform 2.0, inverse 3.0, from the per-stage profile)
    keeps every pick on those layers and changes two of the model set: ESPCN's 32 -> 16-channel 224x224
    layer to F(4,3) (was direct) and DenseNet-121's 128 -> 32-channel 28x28 ones to F(2,3) (was F(4,3)).
    ``tests/test_heuristic.py`` pins its picks.  The fused schedule's own thresholds are the schedule's
    (:mod:`.schedule.fusion`).
    """

    #: Relative cost of one multiply-add of the (separable, vectorized) input transform vs one of the
    #: register-tiled GEMM: the transform gathers its tiles and stores V, far from the FMA peak.  Measured
    #: per stage (``scripts/profile_stages.py``, Zen 5, 2026-12-07): 1.4-3.1 on the F(4,3) layers of VGG-16
    #: and ResNet-18, 2.0 at the median.  (One weight of 3.0 for both transforms, the 2026-12-05 fit, kept
    #: direct on ESPCN's 32 -> 16-channel 224x224 layer, where F(4,3) runs 1.66x faster in the model.)
    data_weight: float = 2.0
    #: The same for the inverse transform, which also writes the output through the epilogue: 0.75-10.7 per
    #: stage, ~0 on one layer (differences of small times; 3.5 at the median), kept at the fit's 3.0.
    inverse_weight: float = 3.0
    #: Cost of one float of the weights read from DRAM: U for Winograd (alpha^2 / r^2 times the weights),
    #: the weights for direct.  A model's weights do not stay in the cache between its calls; one float
    #: at ~9.5 G floats/s (38 GB/s) costs what ~23 multiply-adds of the GEMM do at ~80 % of the FMA peak
    #: (~216 G/s on 2 threads; half that on a Zen 4).  Any value from 20 to 40 gives the fit's picks.
    dram_weight: float = 24.0
    #: Cost of one float of the V and M buffers written and read (unless the fused schedule keeps
    #: them in cache).
    memory_weight: float = 8.0
    #: Cost of one float of U re-read from the last-level cache (the fused schedule reads U once per step).
    cache_weight: float = 0.8
    #: Winograd must be estimated at least this much cheaper than direct.  On the cold Zen 4 sweep the
    #: estimated direct / Winograd ratio was 16 % under to 6 % over the measured one (12 layers); 1.2
    #: kept direct on ResNet 512@7, where F(2,3) measured 1.19x faster (Zen 4) and 1.07x (Zen 5, in a model).
    min_gain: float = 1.1
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
        memory = self.dram_weight * u  # U from DRAM once
        if step is None:  # V and M written and read once each
            memory += self.memory_weight * 2 * tiles * alpha * alpha * (c + k)
        else:  # U from the last-level cache once per further step
            memory += self.cache_weight * (tiles / step - 1) * u
        if target_kind == "llvm":
            rows = step or max(d for d in range(1, self.full_rows + 1) if tiles % d == 0)
            gemm /= min(1.0, rows / self.full_rows)
        return gemm + self.data_weight * data + self.inverse_weight * inverse + memory

    def direct_cost(self, spec: Conv2dSpec) -> float:
        """Estimated cost of the direct convolution: its multiply-adds and one read of the weights from DRAM."""
        kh, kw = spec.kernel
        weights = spec.out_channels * (spec.in_channels // spec.groups) * kh * kw
        return spec.flops / 2 + self.dram_weight * weights


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


#: The CPU model's fitted constants (Zen 5: two 512-bit FMAs per cycle per core); :func:`cpu_cost_model`
#: derives the one for a CPU of half that FMA rate.
CPU_COST_MODEL = CpuCostModel()
#: LLVM ``mcpu`` names of the CPUs that issue two 512-bit FMAs per cycle per core, as the one the CPU model
#: was fitted on (Zen 5: ~270 GFLOP/s fp32 per thread at ~4.2 GHz); Zen 4 (``znver4``: ~117 per thread,
#: measured by the machine probe), client AVX-512 parts with one 512-bit FMA and AVX2-only CPUs run half.
FULL_RATE_AVX512 = frozenset({"znver5", "skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
                              "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d"})
#: The CUDA heuristic's constants (datasheet balance, not measured).
CUDA_HEURISTIC = CudaHeuristic()


#: What the heuristic's functions take for the target: a kind name (``"llvm"``: the fit's CPU, ``"cuda"``)
#: or a :class:`tvm.target.Target`, whose ``mcpu`` selects the CPU model's balance (:func:`cpu_cost_model`).
TargetLike = Union[str, Target]


def cpu_cost_model(mcpu: str | None = None) -> CpuCostModel:
    """The CPU model for LLVM's ``mcpu``: the fit's constants (:data:`CPU_COST_MODEL`) where ``mcpu`` is
    unknown or issues two 512-bit FMAs per cycle per core (:data:`FULL_RATE_AVX512`); elsewhere half the
    FMA rate per core (Zen 4's AVX-512 runs as two 256-bit halves, AVX2-only CPUs have 256-bit FMAs)
    makes a float read from DRAM worth half as many multiply-adds."""
    if mcpu is None or mcpu in FULL_RATE_AVX512:
        return CPU_COST_MODEL
    return replace(CPU_COST_MODEL, dram_weight=CPU_COST_MODEL.dram_weight / 2)


def _kind(target: TargetLike) -> str:
    return target if isinstance(target, str) else str(target.kind.name)


def _cpu_model(target: TargetLike) -> CpuCostModel:
    mcpu = None if isinstance(target, str) else target.attrs.get("mcpu")
    return cpu_cost_model(None if mcpu is None else str(mcpu))


def winograd_cost(spec: Conv2dSpec, m: int, target_kind: TargetLike = "llvm") -> float:
    """Estimated cost of F(m, r) on ``spec`` for ``target_kind`` (the units of that kind's model)."""
    if _kind(target_kind) == "cuda":
        return CUDA_HEURISTIC.winograd_cost(spec, m)
    return _cpu_model(target_kind).winograd_cost(spec, m, _kind(target_kind))


def direct_cost(spec: Conv2dSpec, target_kind: TargetLike = "llvm") -> float:
    """Estimated cost of the direct convolution on ``spec`` for ``target_kind``."""
    if _kind(target_kind) == "cuda":
        return CUDA_HEURISTIC.direct_cost(spec)
    return _cpu_model(target_kind).direct_cost(spec)


def _min_gain(target_kind: TargetLike) -> float:
    return CUDA_HEURISTIC.min_gain if _kind(target_kind) == "cuda" else _cpu_model(target_kind).min_gain


def cheapest_tile(spec: Conv2dSpec, target_kind: TargetLike = "llvm") -> int:
    """The candidate tile of least estimated cost (the smaller m on a tie), eligibility not checked."""
    return min(candidate_tiles(spec), key=lambda m: (winograd_cost(spec, m, target_kind), m))


def choose_algorithm(spec: Conv2dSpec, target_kind: TargetLike = "llvm") -> tuple[str, int | None, str]:
    """``("winograd", m, reason)`` or ``("direct", None, reason)`` for ``spec`` without measurements."""
    why = winograd_ineligibility(spec)
    if why is not None:
        return "direct", None, why[1]
    best = cheapest_tile(spec, target_kind)
    gain = direct_cost(spec, target_kind) / winograd_cost(spec, best, target_kind)
    if gain < _min_gain(target_kind):
        return "direct", None, f"heuristic: best Winograd F({best},{spec.r}) is estimated only {gain:.2f}x cheaper"
    return "winograd", best, f"heuristic: F({best},{spec.r}) estimated {gain:.2f}x cheaper than direct"
