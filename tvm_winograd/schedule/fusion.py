"""When the default CPU schedule fuses the Winograd stages (no TVM: the cost model counts it too).

The fused CPU schedule (:mod:`.cpu`, fp32 NHWC on llvm) computes data_pack, bgemm and the inverse per
step of tiles, so V and M stay in the core's cache, but it reads all of U once per step.  The default
schedule (:mod:`.default`) uses it while U fits well inside the last-level cache (32 MB of L3 here) and
the layer has enough tiles; :mod:`tvm_winograd.heuristic` counts the same steps.  Measured (2 threads,
F(4,3), untuned): 128 ch. 112x112 10.9 -> 6.5 ms, 64 ch. 56x56 0.51 -> 0.42 ms; 512 ch. 28x28 (U 38 MB)
6.5 -> 11.8 ms.
"""

from __future__ import annotations

import math

from ..workload import Conv2dSpec

__all__ = ["FUSE_MAX_U_BYTES", "FUSE_MIN_TILES", "FUSE_MAX_STEP", "FUSE_MIN_STEP", "fused_step", "spec_fused_step"]

FUSE_MAX_U_BYTES = 16 << 20
FUSE_MIN_TILES = 64
#: Tiles per step: one tile row's worth, at most 16 (the register tile holds the step's rows);
#: fewer than 4 means reading U per tile (e.g. 19 tiles per row: F(6,3) on 112 pixels, 13.4 ms).
FUSE_MAX_STEP = 16
FUSE_MIN_STEP = 4


def fused_step(alpha: int, tiles_per_row: int, tiles: int, in_channels: int, out_channels: int) -> int | None:
    """Tiles per step of the fused CPU schedule for these shapes (fp32), or ``None`` where the default
    schedule does not fuse: the largest divisor of the tiles per row up to :data:`FUSE_MAX_STEP`."""
    u_bytes = alpha * alpha * in_channels * out_channels * 4
    if u_bytes > FUSE_MAX_U_BYTES or tiles < FUSE_MIN_TILES or out_channels % 4:
        return None
    step = max(d for d in range(1, FUSE_MAX_STEP + 1) if tiles_per_row % d == 0)
    return step if step >= FUSE_MIN_STEP else None


def spec_fused_step(spec: Conv2dSpec, m: int, target_kind: str = "llvm") -> int | None:
    """:func:`fused_step` for F(m, r) on ``spec``: fp32 NHWC on llvm only (the fused space's domain)."""
    if target_kind != "llvm" or spec.layout != "NHWC" or spec.dtype != "float32":
        return None
    nw = math.ceil(spec.out_width / m)
    tiles = spec.batch * math.ceil(spec.out_height / m) * nw
    return fused_step(m + spec.r - 1, nw, tiles, spec.in_channels, spec.out_channels)
