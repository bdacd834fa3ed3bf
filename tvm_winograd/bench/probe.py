"""Machine probe: the FMA peak and the read bandwidths every benchmark report starts with.

Each figure is measured by a small TIR kernel compiled with TVM for this CPU (so it is what TVM's own
code generation can reach, on this machine, now):

- **FMA peak**: ``ACCUMULATORS`` independent vector accumulators (16 fp32 lanes each: one zmm register
  on AVX-512), each updated by a fused multiply-add per step: enough independent chains to cover the
  FMA latency, no memory traffic.  One thread, and one per worker of the pool.
- **DRAM read**: a vectorized sum over ``DRAM_BYTES`` (8x this machine's 32 MiB L3).
- **LLC read**: the same over ``LLC_BYTES`` (fits the L3, not the L2), read ``LLC_REPEATS`` times per call.

Figures are the best of a few calls (the least disturbed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["MachineProbe", "probe_machine", "ACCUMULATORS"]

#: Independent fp32 vector accumulators of the FMA kernel (12 cover Zen's FMA latency x throughput).
ACCUMULATORS = 12
_LANES = 16
DRAM_BYTES = 256 << 20
LLC_BYTES = 8 << 20
LLC_REPEATS = 16
_BEST_OF = 5


@dataclass(frozen=True)
class MachineProbe:
    """Measured peaks: GFLOP/s (2 per FMA lane) and GB/s, on 1 thread and on ``threads``."""

    cpu: str
    threads: int
    fma_gflops_1: float
    fma_gflops: float
    dram_gbs_1: float
    dram_gbs: float
    llc_gbs_1: float
    llc_gbs: float
    llc_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        return (f"Machine probe ({self.cpu}, TVM-compiled kernels): fp32 FMA peak **{self.fma_gflops:.0f} GFLOP/s** "
                f"on {self.threads} threads, {self.fma_gflops_1:.0f} on 1; DRAM read **{self.dram_gbs:.1f} GB/s** "
                f"({self.dram_gbs_1:.1f} on 1); last-level-cache read {self.llc_gbs:.0f} GB/s "
                f"({self.llc_gbs_1:.0f} on 1; LLC {self.llc_bytes >> 20} MiB).")


def _fma_kernel(tasks: int):
    from tvm.script import tirx as T

    width = ACCUMULATORS * _LANES

    @T.prim_func
    def fma(out: T.Buffer((tasks, width), "float32"), steps: T.int32):
        for t in T.parallel(tasks):
            acc = T.alloc_buffer((width,), "float32", scope="local")
            for j in T.unroll(ACCUMULATORS):
                for v in T.vectorized(_LANES):
                    acc[j * _LANES + v] = T.Cast("float32", j + v)
            for _i in range(steps):
                for j in T.unroll(ACCUMULATORS):
                    for v in T.vectorized(_LANES):
                        acc[j * _LANES + v] = acc[j * _LANES + v] * T.float32(0.9999999) + T.float32(1e-7)
            for j in T.unroll(ACCUMULATORS):
                for v in T.vectorized(_LANES):
                    out[t, j * _LANES + v] = acc[j * _LANES + v]

    return fma


def _read_kernel(tasks: int, floats_per_task: int):
    from tvm.script import tirx as T

    chunk = 8 * _LANES  # 8 independent vector sums per thread
    steps = floats_per_task // chunk

    @T.prim_func
    def read(a: T.Buffer((tasks, steps * chunk), "float32"), out: T.Buffer((tasks, chunk), "float32"),
             repeats: T.int32):
        for t in T.parallel(tasks):
            acc = T.alloc_buffer((chunk,), "float32", scope="local")
            for v in T.vectorized(chunk):
                acc[v] = T.float32(0)
            for _r in range(repeats):
                for i in range(steps):
                    for j in T.unroll(8):
                        for v in T.vectorized(_LANES):
                            acc[j * _LANES + v] = acc[j * _LANES + v] + a[t, i * chunk + j * _LANES + v]
            for v in T.vectorized(chunk):
                out[t, v] = acc[v]

    return read


def _build(func):
    from ..lowering import build_tir
    from ..targets import host_target

    return build_tir(func, host_target())["main"]


def _best_seconds(call, n: int = _BEST_OF) -> float:
    call()
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _fma_gflops(tasks: int, steps: int = 4_000_000) -> float:
    import tvm

    fn = _build(_fma_kernel(tasks))
    out = tvm.runtime.empty((tasks, ACCUMULATORS * _LANES), "float32", tvm.cpu())
    seconds = _best_seconds(lambda: fn(out, steps))
    return 2 * ACCUMULATORS * _LANES * steps * tasks / seconds / 1e9


def _read_gbs(tasks: int, total_bytes: int, repeats: int) -> float:
    import tvm

    per_task = total_bytes // 4 // tasks
    fn = _build(_read_kernel(tasks, per_task))
    per_task = (per_task // (8 * _LANES)) * 8 * _LANES
    a = tvm.runtime.tensor(np.ones((tasks, per_task), "float32"), tvm.cpu())
    out = tvm.runtime.empty((tasks, 8 * _LANES), "float32", tvm.cpu())
    seconds = _best_seconds(lambda: fn(a, out, repeats))
    return tasks * per_task * 4 * repeats / seconds / 1e9


def _llc_bytes() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                text = (index / "size").read_text().strip().upper()
                return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
        except (OSError, ValueError):
            continue
    return 0


@lru_cache(maxsize=None)
def probe_machine(threads: int) -> MachineProbe:
    """Measure this machine (a few seconds); TVM's pool must already have ``threads`` workers
    (:func:`tvm_winograd.threads.configure_threads`)."""
    import tvm

    llc = _llc_bytes()
    llc_test = min(LLC_BYTES, llc // 2) if llc else LLC_BYTES
    return MachineProbe(
        cpu=str(tvm.target.codegen.llvm_get_system_cpu()), threads=threads,
        fma_gflops_1=_fma_gflops(1), fma_gflops=_fma_gflops(threads),
        dram_gbs_1=_read_gbs(1, DRAM_BYTES, 1), dram_gbs=_read_gbs(threads, DRAM_BYTES, 1),
        llc_gbs_1=_read_gbs(1, llc_test, LLC_REPEATS), llc_gbs=_read_gbs(threads, llc_test, LLC_REPEATS),
        llc_bytes=llc,
    )
