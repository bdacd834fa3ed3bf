"""Lower bounds on a convolution's time on this machine (the "limit" of the benchmark tables).

For Winograd F(m x m, r x r) on a layer with ``P`` output tiles (``alpha = m + r - 1``):

- **arithmetic**: the batched GEMM's ``alpha^2 K C P`` multiply-adds, plus the transforms as our
  code computes them (separable passes, the constant matrices folded, so one vector operation per
  non-zero entry): input ``2 alpha nnz(B_T)`` per tile and input channel, output
  ``(alpha + m) nnz(A_T)`` per tile and output channel (dense matrices would give ``2 alpha^3`` and
  ``m alpha^2 + m^2 alpha``: for F(4,3) 432 and 240 against 264 and 180); the weight transform is
  folded at compile time.  All at the probed FMA peak (2 FLOPs per multiply-add).
- **bytes that must move**: the transformed weights U (``alpha^2 K C`` floats), the input and the
  output, each once, from the LLC when it fits in half of it, else from DRAM, at the probed read
  bandwidths.  V and M (``alpha^2 C P`` and ``alpha^2 K P``) need not leave the core's cache (the
  fused schedule keeps them there); their size is reported beside the limit.

The limit is ``max(arithmetic time, memory time)`` (perfect overlap): no schedule of that algorithm
can beat it here.  Direct convolution: ``K C r^2`` multiply-adds per output pixel; weights, input,
output once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..transforms import winograd_matrices
from ..workload import Conv2dSpec
from .probe import MachineProbe

__all__ = ["Limit", "op_limit", "winograd_limit", "winograd_stage_limits", "direct_limit", "STAGES"]

#: The stages of a Winograd layer as the per-stage profile splits it (bench/stages.py).
STAGES = ("data_pack", "bgemm", "inverse")


@dataclass(frozen=True)
class Limit:
    """A lower bound (ms) and what it is made of."""

    ms: float
    compute_ms: float
    memory_ms: float
    macs: int
    bytes_moved: int
    stage_bytes: int = 0  # V and M (Winograd), not counted in ``ms``

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "float16" else 4


def _memory_ms(arrays_bytes: list[int], probe: MachineProbe) -> float:
    seconds = 0.0
    for size in arrays_bytes:
        fits = probe.llc_bytes and size <= probe.llc_bytes // 2
        seconds += size / ((probe.llc_gbs if fits else probe.dram_gbs) * 1e9)
    return seconds * 1e3


def op_limit(macs: int, arrays: list[int], probe: MachineProbe, stage_bytes: int = 0) -> Limit:
    """The limit of any operator: ``macs`` multiply-adds at the FMA peak, or the ``arrays`` (bytes each)
    moved once, whichever takes longer."""
    compute_ms = 2 * macs / (probe.fma_gflops * 1e9) * 1e3
    memory_ms = _memory_ms(arrays, probe)
    return Limit(max(compute_ms, memory_ms), compute_ms, memory_ms, macs, sum(arrays), stage_bytes)


def _winograd_parts(spec: Conv2dSpec, m: int) -> dict[str, tuple[int, int]]:
    """(multiply-adds, bytes that must move) of each stage of F(m x m, r x r) on ``spec``: the input
    transform reads the input, the GEMM reads U, the inverse writes the output."""
    r = spec.kernel[0]
    alpha = m + r - 1
    n, c, k = spec.batch, spec.in_channels, spec.out_channels
    tiles = n * math.ceil(spec.out_height / m) * math.ceil(spec.out_width / m)
    size = _itemsize(spec.dtype)
    a_t, _g, b_t = winograd_matrices(m, r)
    return {
        "data_pack": (tiles * c * 2 * alpha * int(np.count_nonzero(b_t)), n * spec.height * spec.width * c * size),
        "bgemm": (alpha * alpha * k * c * tiles, alpha * alpha * k * c * size),
        "inverse": (tiles * k * (alpha + m) * int(np.count_nonzero(a_t)),
                    n * spec.out_height * spec.out_width * k * size),
    }


def _stage_bytes(spec: Conv2dSpec, m: int) -> int:
    """V and M (``alpha^2 C P`` and ``alpha^2 K P``): bytes that need not leave the core's cache."""
    alpha = m + spec.kernel[0] - 1
    tiles = spec.batch * math.ceil(spec.out_height / m) * math.ceil(spec.out_width / m)
    return alpha * alpha * tiles * (spec.in_channels + spec.out_channels) * _itemsize(spec.dtype)


def winograd_limit(spec: Conv2dSpec, m: int, probe: MachineProbe) -> Limit:
    """The limit of F(m x m, r x r) on ``spec`` (stride 1, groups 1) for ``probe``'s machine."""
    parts = _winograd_parts(spec, m).values()
    return op_limit(sum(macs for macs, _ in parts), [size for _, size in parts], probe, _stage_bytes(spec, m))


def winograd_stage_limits(spec: Conv2dSpec, m: int, probe: MachineProbe) -> dict[str, Limit]:
    """:func:`winograd_limit` split by stage (:data:`STAGES`): each stage's arithmetic and the array
    only it must move (data_pack: the input; bgemm: U; inverse: the output)."""
    return {stage: op_limit(macs, [size], probe) for stage, (macs, size) in _winograd_parts(spec, m).items()}


def direct_limit(spec: Conv2dSpec, probe: MachineProbe) -> Limit:
    """The limit of direct convolution on ``spec``."""
    size = _itemsize(spec.dtype)
    weights = math.prod(spec.weight_shape) * size
    io = [math.prod(spec.input_shape) * size, math.prod(spec.output_shape) * size]
    return op_limit(spec.flops // 2, [weights, *io], probe)
