"""TVM's CPU thread pool: how many workers, on which cores (standard library, ``tvm.runtime``, ``tvm_ffi``).

TVM's runtime sizes its CPU thread pool when it is first used, from ``TVM_NUM_THREADS`` (or
``OMP_NUM_THREADS``), else ``std::thread::hardware_concurrency() / 2`` on x86: it assumes two hardware
threads per core.  On a machine with one thread per core (this project's 2-vCPU host, most cloud VMs
with SMT hidden) that is half the cores.  Worse, the default pool pins the *calling* thread to CPU 0
when it is created with one worker, and every thread the process starts afterwards (onnxruntime's
pool, PyTorch's OpenMP workers) inherits that mask.  :func:`configure_threads` sizes the pool from
the cores this process may use (``os.sched_getaffinity``) through TVM's own ``runtime.config_threadpool``
before the first call, with every thread free to run on all of them; :func:`export_thread_count` does
the same for threads this process does not create (MetaSchedule's runner workers).

A low-level module: :mod:`tvm_winograd.runtime` (which must load with the TVM runtime alone) and the
tuner's measurement both use it, so it imports nothing of this package and nothing of TVM's compiler.
"""

from __future__ import annotations

import logging
import os

__all__ = ["configure_threads", "export_thread_count", "allowed_cpus", "THREAD_ENV_VARS"]

logger = logging.getLogger(__name__)

#: Environment variables TVM's runtime reads for its pool size (in this order); a user's setting wins.
THREAD_ENV_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")

#: ``ThreadGroup::kSpecifyThreadShareAllCore`` in TVM's threading backend: ``nthreads`` workers, each
#: allowed on every listed CPU (no worker pinned to one core, the calling thread not pinned to CPU 0).
_SHARE_ALL_CORES = -3


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where the OS has no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def configure_threads(threads: int | None = None) -> int:
    """Size TVM's CPU thread pool for the calling thread; returns the worker count TVM reports.

    Parameters
    ----------
    threads
        Workers to use.  ``None``: a ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` the user set is kept
        (TVM reads it itself), else one worker per CPU of :func:`allowed_cpus`.

    Notes
    -----
    Call it before the first parallel TVM call of the thread: TVM's pool is created once per thread and
    keeps its size (a pool created earlier is reconfigured, but never grows beyond its first size, which
    is logged as a warning).  TVM's pool settings are per calling thread.
    """
    import tvm
    import tvm_ffi

    if threads is not None and threads < 1:
        raise ValueError(f"threads {threads} must be at least 1")
    if threads is None and any(os.environ.get(var) for var in THREAD_ENV_VARS):
        return int(tvm.runtime.num_threads())
    cpus = allowed_cpus()
    count = len(cpus) if threads is None else threads
    # TVM creates one worker per listed entry and uses ``count`` of them, each free to run on every
    # listed CPU: list all allowed CPUs (fewer threads must not pin the caller to the first one), and
    # cycle through them when more workers than CPUs are asked for.
    listed = [str(cpus[i % len(cpus)]) for i in range(max(count, len(cpus)))]
    tvm_ffi.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, count, listed)
    got = int(tvm.runtime.num_threads())
    if got != count:
        logger.warning("TVM's thread pool has %d workers, not the %d asked for (it was used before it was "
                       "configured)", got, count)
    return got


def export_thread_count(threads: int | None = None) -> None:
    """Put the pool size in this process's environment (``TVM_NUM_THREADS``; a user's setting wins).

    :func:`configure_threads` sizes the pool of the calling thread only; a process whose TVM calls run
    on threads it does not create (MetaSchedule's runner workers evaluate candidates on their own
    threads) needs the variable, which TVM reads in every thread that has not been configured.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads {threads} must be at least 1")
    if not any(os.environ.get(var) for var in THREAD_ENV_VARS):
        os.environ["TVM_NUM_THREADS"] = str(threads or len(allowed_cpus()))
