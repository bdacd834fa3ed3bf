"""Verification of GPU schedules without a GPU.

* :func:`gpu_limits` / :func:`verify_gpu` -- TVM's GPU verification (``VerifyGPUCode``: threads per
  block, shared memory, vector width) for the target's limits.
* :func:`occupancy` -- a static occupancy estimate from ptxas's registers / shared memory and the
  kernel's threads per block, with the per-SM limits of the architecture.
* :func:`serial_cpu_func` / :func:`check_numerics` -- the scheduled TIR with thread-bound loops made
  serial and GPU storage scopes made global, built for llvm and judged against float64 by the shared
  check of :mod:`tvm_winograd.verify` (the one the CPU tuner uses).
  TIR's semantics are sequential, so this checks every index and tiling decision of the schedule
  (not races, and not nvcc's code generation).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from ..compute import Epilogue, WinogradConfig, kernel_block_of
from ..lowering import build_tir
from ..targets import host_target
from ..verify import prepare, run_cpu
from ..workload import Conv2dSpec
from .build import KernelResources

logger = logging.getLogger(__name__)

__all__ = [
    "SM_LIMITS",
    "gpu_limits",
    "verify_gpu",
    "occupancy",
    "serial_cpu_func",
    "NumericsResult",
    "check_numerics",
    "CPUExecutionCrashed",
]


@dataclass(frozen=True)
class SMLimits:
    """Per-SM resources of one architecture (CUDA C Programming Guide, compute capability table)."""

    max_threads: int
    max_blocks: int
    registers: int
    shared_bytes: int  # usable shared memory per SM
    reserved_shared_per_block: int = 1024
    register_granularity: int = 256  # registers are allocated per warp in units of 256
    max_registers_per_thread: int = 255
    warp_size: int = 32


SM_LIMITS = {
    80: SMLimits(max_threads=2048, max_blocks=32, registers=65536, shared_bytes=164 * 1024),
    86: SMLimits(max_threads=1536, max_blocks=16, registers=65536, shared_bytes=100 * 1024),
    89: SMLimits(max_threads=1536, max_blocks=24, registers=65536, shared_bytes=100 * 1024),
    90: SMLimits(max_threads=2048, max_blocks=32, registers=65536, shared_bytes=228 * 1024),
}


def gpu_limits(target: Target) -> dict[str, int]:
    """The constraints :func:`tvm.s_tir.analysis.verify_gpu_code` takes, from the target's attributes."""
    attrs = target.attrs
    return {
        "max_shared_memory_per_block": int(attrs.get("max_shared_memory_per_block", 49152)),
        "max_threads_per_block": int(attrs.get("max_threads_per_block", 1024)),
        "max_thread_x": 1024,
        "max_thread_y": 1024,
        "max_thread_z": 64,
        "max_vector_bytes": 16,
    }


def verify_gpu(sch: s_tir.Schedule, target: Target) -> bool:
    """TVM's GPU verification of a scheduled module (lowered as MetaSchedule's ``VerifyGPUCode`` does)."""
    from tvm.s_tir import meta_schedule as ms

    from ..schedule.cuda.context import light_tune_context

    postproc = ms.postproc.VerifyGPUCode()
    postproc._initialize_with_tune_context(light_tune_context(sch.mod, target))
    return bool(postproc.apply(sch))


def occupancy(kernel: KernelResources, sm: int) -> float | None:
    """Estimated fraction of the SM's warp slots a kernel can fill (registers, shared memory, threads).

    ``None`` if the kernel's threads per block are unknown.
    """
    limits = SM_LIMITS.get(sm)
    threads = kernel.threads
    if limits is None or not threads:
        return None
    warps = math.ceil(threads / limits.warp_size)
    max_warps = limits.max_threads // limits.warp_size
    by_threads = limits.max_threads // (warps * limits.warp_size)
    regs_per_warp = math.ceil(max(kernel.registers, 1) * limits.warp_size / limits.register_granularity) \
        * limits.register_granularity
    by_registers = limits.registers // (regs_per_warp * warps)
    smem = kernel.total_shared_bytes + limits.reserved_shared_per_block
    by_shared = limits.shared_bytes // smem if kernel.total_shared_bytes else limits.max_blocks
    blocks = min(limits.max_blocks, by_threads, by_registers, by_shared)
    return min(1.0, blocks * warps / max_warps)


# --------------------------------------------------------------------------------------------------
# Serial execution on the CPU
# --------------------------------------------------------------------------------------------------

#: ``T.thread_binding(EXTENT, thread="...")``; EXTENT may hold one level of parentheses (``T.int64(256)``:
#: DLight's GPU rules bind loops of int64 extent)
_RE_THREAD = re.compile(r"T\.thread_binding\(((?:[^()]|\([^()]*\))*?),\s*thread=\"[^\"]+\"")
_RE_SCOPE = re.compile(r",\s*scope=\"(?:shared|shared\.dyn|local|warp|wmma\.(?:matrix_a|matrix_b|accumulator))\"")


def serial_cpu_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every thread-bound loop serial and every shared/local/warp/wmma-fragment buffer global.

    TVM 0.27 has no Python statement mutator for TIR, so this goes through TVMScript: print, rewrite
    ``T.thread_binding(n, thread=...)`` -> ``T.serial(n)`` and drop the ``scope=`` of GPU buffers, parse.
    """
    text = tvm.IRModule({"main": func}).script(show_meta=True)
    text, n_loops = _RE_THREAD.subn(r"T.serial(\1", text)
    text = _RE_SCOPE.sub("", text)
    if "thread_binding" in text or "threadIdx" in text or "blockIdx" in text:
        raise RuntimeError("a thread binding survived the serial rewrite: the TVMScript printer changed")
    parsed = tvm.script.from_source(text)
    out = parsed["main"] if isinstance(parsed, tvm.IRModule) else parsed
    logger.debug("serialized %d thread-bound loops", n_loops)
    return out


@dataclass(frozen=True)
class NumericsResult:
    """The verdict of :func:`tvm_winograd.verify` on one schedule run serially on the CPU."""

    ok: bool
    worst_ratio: float  # the largest statistic over its limit (bound, RMS, peak, gain; <= 1 passes)
    max_relative_error: float  # max |err| / max |reference|
    reason: str = ""  # the first failed statistic, "" when ok


def _host_target() -> Target:
    return host_target()


class CPUExecutionCrashed(RuntimeError):
    """The serial CPU run of a schedule died (e.g. an out-of-bounds write corrupted memory)."""


def _in_child(fn, *args, **kwargs):
    """Run ``fn`` in a forked child (no re-import: copy-on-write) and return its result.

    A schedule with an out-of-bounds access can corrupt the heap of the process that runs it; in a child
    it only kills the child, and the check reports it.
    """
    import os
    import pickle

    if not hasattr(os, "fork"):
        return fn(*args, **kwargs)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException as err:  # report any failure to the parent
                payload = pickle.dumps(("error", f"{type(err).__name__}: {err}"))
            with os.fdopen(write_fd, "wb") as f:
                f.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        raise CPUExecutionCrashed(f"the serial CPU run crashed ({how}): the schedule likely accesses memory out "
                                  "of bounds")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(value)
    return value


def check_numerics(func: tirx.PrimFunc, spec: Conv2dSpec, config: WinogradConfig | None,
                   epilogue: Epilogue = Epilogue(), seed: int = 0,
                   cpu_module: tvm.runtime.Module | None = None, isolate: bool = True) -> NumericsResult:
    """Run the GPU-scheduled ``func`` serially on the CPU and judge it against float64.

    ``func`` is a winograd function compiled from ``config``, or (``config`` None) a direct one
    (:func:`tvm_winograd.compute.direct_func`, any stride, dilation and groups).  The inputs, the
    kernel pack (the float64 weight transform rounded to the pack dtype) and the verdict are those of
    :mod:`tvm_winograd.verify` -- the same check the CPU tuner applies -- with the error model of the
    stage dtypes ``config`` intends.  With ``isolate`` the build and run happen in a forked child, so a
    schedule that writes out of bounds raises :class:`CPUExecutionCrashed` instead of corrupting this
    process.
    """
    if isolate and cpu_module is None:
        return _in_child(check_numerics, func, spec, config, epilogue, seed, None, False)
    if config is None:
        case = prepare(spec, epilogue, "direct", seed=seed)
    else:
        case = prepare(spec, epilogue, "winograd", config, seed=seed, kernel_block=kernel_block_of(func),
                       pack_arg_dtype=str(func.params[1].dtype))
    if cpu_module is None:
        with _host_target():
            cpu_module = build_tir(serial_cpu_func(func), _host_target())
    verdict = case.assess(run_cpu(cpu_module["main"], case))
    return NumericsResult(verdict.ok, verdict.worst, verdict.max_relative_error, verdict.reason)
