"""Builders and runners for MetaSchedule measurement.

``make_builder(target)`` and ``make_runner(target, rpc_tracker=None, rpc_key=None)`` are the only places
that decide how candidates are compiled and timed.  Building is always local; running is local or on
the servers of a TVM RPC tracker (one measurement per free server at a time).

What MetaSchedule does with a failed measurement (TVM 0.27): the runner returns a ``RunnerResult`` with
``run_secs=None`` and an ``error_msg`` (``RPCRunner: An exception occurred ...`` or ``... Timeout``); the
task scheduler logs the message to ``<work_dir>/logs`` and the ``AddToDatabase`` callback stores the
candidate with ``run_secs=[1e10]``.  Nothing is silently dropped, but the message itself is not in the
database, and a failure caused by a dying server would mark a good candidate as bad.  The RPC runner
made here therefore retries a candidate whose run raised in the RPC session (server gone, connection
reset, ``code=kShutdown``) on another server, up to ``retries`` times (default 1), before reporting the
failure; timeouts are not retried.
"""

from __future__ import annotations

import logging

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner import PyRunnerFuture, RunnerFuture, RunnerInput, RunnerResult
from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunner
from tvm.support.popen_pool import PopenPoolExecutor
from tvm.target import Target

from ..lowering import build_tir

__all__ = ["make_builder", "make_runner", "default_runner", "build_candidate", "parse_tracker", "BUILD_TIMEOUT_SEC", "RUN_TIMEOUT_SEC"]

logger = logging.getLogger(__name__)

#: Seconds per candidate build.  MetaSchedule's 30 s default is too short on a loaded 2-core machine,
#: where starting a worker process alone (importing TVM) takes 10-20 s.
BUILD_TIMEOUT_SEC = 120.0
#: Seconds an RPC session may live (server side) and a measurement may take (client side, plus slack).
RUN_TIMEOUT_SEC = 60

# RPCRunner reports a timeout with this prefix; every other failure is an exception in the session.
_TIMEOUT_PREFIX = "RPCRunner: Timeout"


def build_candidate(mod, target: Target, _params=None):
    """Build one candidate in a builder worker: MetaSchedule's ``default_build`` minus its import of
    ``tvm.s_tir.tensor_intrin``, and inside ``with target:`` (nvcc needs the current target).

    ``LocalBuilder`` starts fresh worker processes for every batch, and that import parses ~500
    TVMScript functions through ``inspect.stack()``: 40 s to several minutes per batch on a loaded 2-core
    machine, against 0.3 s for the build itself.  Tensor intrinsics are needed while *scheduling*
    (``tensorize`` runs in the tuning process, which has them); a scheduled module builds without them.
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    with target:
        return build_tir(mod, target).mod


def make_builder(target: Target, max_workers: int | None = None,
                 timeout_sec: float = BUILD_TIMEOUT_SEC) -> ms.builder.Builder:
    """A local parallel builder for ``target`` (``max_workers`` processes, default: one per core)."""
    if target.kind.name == "cuda":  # nvcc mode + CUDA runtime (driver stand-in without a GPU): tvm_winograd.cuda
        from tvm_winograd.cuda.build import cuda_builder; return cuda_builder(target, max_workers, timeout_sec)  # noqa: E702
    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec, f_build=build_candidate)


def parse_tracker(rpc_tracker: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ``ValueError`` naming the text otherwise."""
    host, _, port = str(rpc_tracker).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rpc tracker {rpc_tracker!r} is not of the form HOST:PORT")
    return host, int(port)


def _is_retryable(message: str | None) -> bool:
    """A failure worth a second server: any exception in the RPC session, not a timeout.

    A server that dies shows up as an exception somewhere in the session (``code=kShutdown``,
    connection reset, ``Cannot request ... after 5 retry``); the traceback does not reliably tell it from
    a kernel that fails on every server, so both are retried (``retries`` bounds the cost), while a
    timeout, which a slow kernel would repeat, is not.
    """
    return bool(message) and not message.startswith(_TIMEOUT_PREFIX)


@derived_object
class _RetryingFuture(PyRunnerFuture):
    """A runner future that resubmits its candidate when the run raised (see ``_is_retryable``)."""

    def __init__(self, runner: "_FarmRunner", runner_input: RunnerInput, future: RunnerFuture,
                 retries: int) -> None:
        super().__init__()
        self.runner = runner
        self.runner_input = runner_input
        self.future = future
        self.retries = retries

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        result = self.future.result()
        attempt = 0
        while result.run_secs is None and attempt < self.retries and _is_retryable(result.error_msg):
            attempt += 1
            last_line = (result.error_msg or "").strip().splitlines()[-1:] or [""]
            logger.warning("RPC measurement of %s failed (%s); retry %d of %d on another server",
                           self.runner_input.artifact_path, last_line[0][:200], attempt, self.retries)
            self.future = self.runner.submit(self.runner_input)
            result = self.future.result()
        return result


@derived_object
class _FarmRunner(RPCRunner._cls):  # noqa: SLF001 - derived_object forbids subclassing the decorated class
    """``RPCRunner`` with a bounded client-side wait per measurement and retries on another server."""

    def __init__(self, rpc_config: ms.runner.RPCConfig, evaluator_config: ms.runner.EvaluatorConfig | None,
                 max_workers: int, retries: int, wait_sec: float) -> None:
        super().__init__(rpc_config=rpc_config, evaluator_config=evaluator_config, max_workers=max_workers)
        # RPCRunner's pool has no timeout: a server that hangs without closing its socket would block the
        # tuning loop forever.  Same pool, with a deadline per measurement.
        self.pool.shutdown()
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=wait_sec)
        self.retries = retries
        self.max_workers = max_workers

    def submit(self, runner_input: RunnerInput) -> RunnerFuture:
        return RPCRunner._cls.run(self, [runner_input])[0]  # noqa: SLF001

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        futures = RPCRunner._cls.run(self, runner_inputs)  # noqa: SLF001
        if self.retries <= 0:
            return futures
        return [_RetryingFuture(self, runner_input, future, self.retries)
                for runner_input, future in zip(runner_inputs, futures)]


def default_runner(target: Target) -> ms.runner.Runner:
    """The local runner tuning uses: 3 runs per repeat, 5 repeats of at least 20 ms, no cache flush."""
    config = ms.runner.EvaluatorConfig(number=3, repeat=5, min_repeat_ms=20, enable_cpu_cache_flush=False)
    return make_runner(target, evaluator_config=config)


def make_runner(target: Target, rpc_tracker: str | None = None, rpc_key: str | None = None, *,
                evaluator_config: ms.runner.EvaluatorConfig | None = None,
                session_timeout_sec: int = RUN_TIMEOUT_SEC, retries: int = 1,
                max_workers: int | None = None) -> ms.runner.Runner:
    """Local measurement, or through a TVM RPC tracker ``host:port`` on the servers under ``rpc_key``.

    With a tracker, the returned runner (an ``RPCRunner`` subclass) keeps one measurement in flight per
    server free at the tracker now (or ``max_workers``); the tracker hands each to a free server.  A run
    that raises (e.g. its server went away) is retried up to ``retries`` times on another server; a run
    that still fails, or times out, is reported as failed and recorded with ``run_secs=[1e10]``.  Raises
    ``ValueError`` for a malformed address or a missing key, and ``ConnectionError`` naming the tracker
    and key when no server is registered under the key.
    """
    if not rpc_tracker:
        if rpc_key:
            raise ValueError(f"rpc key {rpc_key!r} given without an rpc tracker")
        if target.kind.name == "cuda":  # never time CUDA without a GPU (tvm_winograd.cuda.measure)
            from tvm_winograd.cuda.measure import require_gpu_measurement; require_gpu_measurement(target)  # noqa: E702
        # The runner's worker processes size TVM's pool like `tvm-winograd run` does (all allowed cores):
        # TVM's default there is half the cores on x86, and candidates would be chosen for one thread.
        from ..threads import export_thread_count

        return ms.runner.LocalRunner(evaluator_config=evaluator_config, initializer=export_thread_count)
    host, port = parse_tracker(rpc_tracker)
    if not rpc_key:
        raise ValueError(f"rpc tracker {rpc_tracker!r} needs an rpc key (--rpc-key)")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    from tvm_winograd.tune.rpc import query_tracker

    free = query_tracker(host, port, timeout=10.0)
    if max_workers is None:
        max_workers = free.get(rpc_key, 0)
        if max_workers <= 0:
            known = ", ".join(f"{k!r}: {n} free" for k, n in sorted(free.items())) or "none"
            raise ConnectionError(f"no free RPC server with key {rpc_key!r} at tracker {host}:{port} "
                                  f"(keys registered: {known})")
    elif max_workers <= 0:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    logger.info("measuring on %d RPC server(s) with key %r via tracker %s:%d", max_workers, rpc_key, host, port)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                 session_timeout_sec=session_timeout_sec)
    # The client waits for the session's full life plus time to get a server and upload the module.
    return _FarmRunner(config, evaluator_config, max_workers, retries, wait_sec=2.0 * session_timeout_sec + 30.0)
