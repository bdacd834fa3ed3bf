"""Lower bounds on a convolution's time on this machine (the "limit" of the benchmark tables).

For Winograd F(m x m, r x r) on a layer with ``P`` output tiles (``alpha = m + r - 1``):

- **arithmetic**: the batched GEMM's ``alpha^2 K C P`` multiply-adds, plus the transforms as our
  code computes them (separable passes): input ``2 alpha^3`` per tile and input channel, output
  ``m alpha^2 + m^2 alpha`` per tile and output channel; the weight transform is folded at compile
  time.  All at the probed FMA peak (2 FLOPs per multiply-add).
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

from ..workload import Conv2dSpec
from .probe import MachineProbe

__all__ = ["Limit", "winograd_limit", "direct_limit"]


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


def _limit(macs: int, arrays: list[int], probe: MachineProbe, stage_bytes: int = 0) -> Limit:
    compute_ms = 2 * macs / (probe.fma_gflops * 1e9) * 1e3
    memory_ms = _memory_ms(arrays, probe)
    return Limit(max(compute_ms, memory_ms), compute_ms, memory_ms, macs, sum(arrays), stage_bytes)


def winograd_limit(spec: Conv2dSpec, m: int, probe: MachineProbe) -> Limit:
    """The limit of F(m x m, r x r) on ``spec`` (stride 1, groups 1) for ``probe``'s machine."""
    r = spec.kernel[0]
    alpha = m + r - 1
    n, c, k = spec.batch, spec.in_channels, spec.out_channels
    tiles = n * math.ceil(spec.out_height / m) * math.ceil(spec.out_width / m)
    gemm = alpha * alpha * k * c * tiles
    transforms = tiles * (c * 2 * alpha ** 3 + k * (m * alpha * alpha + m * m * alpha))
    size = _itemsize(spec.dtype)
    u = alpha * alpha * k * c * size
    io = [n * spec.height * spec.width * c * size, n * spec.out_height * spec.out_width * k * size]
    stages = alpha * alpha * tiles * (c + k) * size
    return _limit(gemm + transforms, [u, *io], probe, stages)


def direct_limit(spec: Conv2dSpec, probe: MachineProbe) -> Limit:
    """The limit of direct convolution on ``spec``."""
    size = _itemsize(spec.dtype)
    weights = math.prod(spec.weight_shape) * size
    io = [math.prod(spec.input_shape) * size, math.prod(spec.output_shape) * size]
    return _limit(spec.flops // 2, [weights, *io], probe)
