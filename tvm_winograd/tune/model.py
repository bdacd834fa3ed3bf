"""Tune a whole model: every distinct eligible conv layer (with its fused epilogue), one at a time.

The layers come from the caller: :func:`tvm_winograd.relax_pass.model_workloads` gives the ones the Relax
pass would rewrite (same eligibility, same epilogue fusion), so the tuned PrimFuncs are structurally the
ones compilation later looks up in the database.  (The tuner sits below the graph pass: it does not
import it.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from ..compute import Epilogue
from ..targets import resolve_target
from ..workload import Conv2dSpec
from .functions import FunctionTask
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir

__all__ = ["tune_model", "tune_whole_model"]

logger = logging.getLogger(__name__)


def tune_model(
    workloads: Sequence[tuple[Conv2dSpec, Epilogue, list[str]]],
    target,
    *,
    trials: int = 64,
    log_dir: str | os.PathLike | None = None,
    schedules_dir: str | os.PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Tune direct and Winograd candidates for every workload; keep the fastest.

    ``workloads`` are distinct ``(spec, epilogue, layer names)``, as
    :func:`tvm_winograd.relax_pass.model_workloads` returns them for a model (in the conv layout
    compilation uses).

    Returns one dict per workload: ``key``, ``layers``, ``algorithm``, ``m``, ``times_ms`` (median per
    candidate) and ``speedup_vs_direct``.  Records go to ``<log_dir>/<target>/``, best records and
    ``choices.json`` to ``<schedules_dir>/<target>/`` (:mod:`.paths`: ``./tuning_logs`` and
    ``./schedules`` by default, where ``compile`` looks); re-running resumes.
    """
    from .measure import make_runner
    from .tuner import tune_layer

    tgt = resolve_target(target)
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("--rpc-tracker and --rpc-key go together")
    runner = make_runner(tgt, rpc_tracker, rpc_key)
    logs, sched = tuning_logs_dir(tgt, log_dir), schedules_dir_for(tgt, schedules_dir)
    workloads = list(workloads)
    if not workloads:
        logger.warning("the model has no Winograd-eligible convolution: nothing to tune")
    results = []
    for i, (spec, epilogue, names) in enumerate(workloads):
        logger.info("[%d/%d] tuning %s (%s) for layers %s", i + 1, len(workloads), spec.key(), epilogue.tag(), names)
        res = tune_layer(spec, tgt, epilogue=epilogue, trials=trials, work_dir=logs, schedules_dir=sched,
                         runner=runner, progress=progress)
        times = {name: c.median_ms for name, c in res.candidates.items() if c.median_ms is not None}
        direct = times.get("direct")
        choice = res.choice
        best = res.best_ms
        results.append({
            "key": spec.key(), "epilogue": epilogue.tag(), "layers": names,
            "algorithm": choice.algorithm if choice else None, "m": choice.m if choice else None,
            "times_ms": times,
            "speedup_vs_direct": (direct / best) if direct and best else None,
            "wall_s": round(res.wall_s, 1),
        })
    return results


def tune_whole_model(
    workloads: Sequence[tuple[Conv2dSpec, Epilogue, list[str]]],
    functions: Sequence[FunctionTask],
    target,
    *,
    trials: int | None = None,
    trials_per_task: int | None = None,
    log_dir: str | os.PathLike | None = None,
    schedules_dir: str | os.PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
) -> dict:
    """Every task of a model: the conv layers' candidates (:func:`tune_model`, ``trials_per_task`` per
    candidate), then the other functions (:func:`~.functions.tune_functions`, the rest of ``trials``
    shared by TVM's gradient task scheduler).  ``functions`` come from
    :func:`tvm_winograd.model_tasks.function_tasks`.  :func:`~.functions.budget_split` turns ``trials`` / ``trials_per_task`` into
    the total and the per-task budget (counting each candidate as a task).

    Returns ``{"trials", "trials_per_task", "layers": tune_model's rows, "functions": tune_functions'
    rows, "wall_s"}``.
    """
    import time

    from .candidates import layer_candidates
    from .functions import budget_split, tune_functions
    from .measure import default_runner, make_runner

    start = time.perf_counter()
    tgt = resolve_target(target)
    workloads = list(workloads)
    candidates = sum(len(layer_candidates(spec)) for spec, _, _ in workloads)
    total, per_task = budget_split(trials, trials_per_task, candidates + len(functions))
    logger.info("%d tasks (%d conv candidates of %d layers, %d other functions): %d trials, at most %d each",
                candidates + len(functions), candidates, len(workloads), len(functions), total, per_task)
    layers = tune_model(workloads, tgt, trials=per_task, log_dir=log_dir, schedules_dir=schedules_dir,
                        rpc_tracker=rpc_tracker, rpc_key=rpc_key, progress=progress) if workloads else []
    runner = make_runner(tgt, rpc_tracker, rpc_key) if rpc_tracker else default_runner(tgt)
    rows = tune_functions(functions, tgt, trials=max(0, total - per_task * candidates), trials_per_task=per_task,
                          log_dir=log_dir, schedules_dir=schedules_dir, runner=runner) if functions else []
    return {"trials": total, "trials_per_task": per_task, "layers": layers, "functions": rows,
            "wall_s": round(time.perf_counter() - start, 1)}
