"""Measuring CUDA candidates: only on a real GPU, local or behind a TVM RPC tracker.

Nothing here times anything without a GPU: :func:`require_gpu_measurement` refuses (one line) when there
is neither a local GPU nor an RPC tracker, instead of letting MetaSchedule record failed runs.
"""

from __future__ import annotations

import tvm
from tvm.target import Target

from .build import cuda_builder

__all__ = ["NoGPUError", "gpu_present", "require_gpu_measurement", "cuda_builder"]


class NoGPUError(RuntimeError):
    """Tuning for CUDA was asked for with neither a local GPU nor an RPC tracker to measure on."""


def gpu_present() -> bool:
    """A CUDA device usable by TVM in this process (False with the driver stand-in)."""
    return bool(tvm.runtime.enabled("cuda") and tvm.cuda(0).exist)


def require_gpu_measurement(target: Target, rpc_tracker: str | None = None) -> str:
    """``"local"`` if a GPU is present, ``"rpc"`` if a tracker is given; else raise :class:`NoGPUError`.

    The message says what to do: run on a GPU machine, or pass ``--rpc-tracker HOST:PORT --rpc-key KEY``.
    """
    if target.kind.name != "cuda":
        return "local"
    if rpc_tracker:
        return "rpc"
    if gpu_present():
        return "local"
    arch = target.attrs.get("arch", "sm_80")
    raise NoGPUError(
        f"cannot tune for CUDA ({arch}): no GPU here and no RPC tracker; run on a GPU machine or pass "
        "--rpc-tracker HOST:PORT --rpc-key KEY (tvm-winograd cuda-check verifies schedules without a GPU)")
