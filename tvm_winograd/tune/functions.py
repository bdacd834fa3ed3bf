"""Tune the PrimFuncs of a model that are not Winograd candidates: MetaSchedule's generic llvm space,
TVM's gradient task scheduler sharing one budget, kept only where it beats the default by measurement.

A :class:`FunctionTask` is one distinct PrimFunc exactly as compilation meets it (``func``: what the
database is queried with) and the schedule compilation gives it without a record (``default``: a
rule's schedule, or our register-tiled direct conv).  The tasks come from the graph layer
(:func:`tvm_winograd.model_tasks.function_tasks`); this module does not import it.

For each task, :func:`tune_functions`

1. searches MetaSchedule's default llvm space (:func:`~.search.space_for`, the generic rules) with
   evolutionary search and the XGBoost cost model; all tasks share ``trials`` through TVM's gradient
   task scheduler (``task_weights``: how often the model calls each function), at most
   ``trials_per_task`` each.  Every measurement goes to the tuning log (crash-safe, resumable: a task
   with ``>= trials_per_task`` records is not searched again, and no schedule is measured twice);
2. measures ``default`` with the same builder and runner (the builder drops weight-packing blocks
   from the timing, as compilation hoists them: :func:`~.measure.build_candidate`);
3. checks the best records against ``default`` on the same seeded inputs (:func:`check_same`, the
   spread of float32 reassociation) and stores the first that passes in the schedules database only
   if it is at least :data:`MIN_GAIN` faster than ``default``: a tuned model is never slower than the
   untuned one by the tuner's own measurement.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..targets import resolve_target
from ..lowering import build_tir
from .database import open_database
from .measure import default_runner, make_builder
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir
from .records import apply_trace, as_module, median_ms, record_count
from .search import make_strategy, skip_measured, space_for

__all__ = ["FunctionTask", "MIN_GAIN", "tune_functions", "budget_split", "check_same", "reduction_extent"]

logger = logging.getLogger(__name__)

#: A tuned record replaces the default only when it is at least this much faster (measured): below
#: that, the two are within the runner's noise on this machine and the default is kept.
MIN_GAIN = 0.03
#: Best records of a task tried (checked) before giving up on it.
CHECK_TOP_K = 5
#: float32 unit roundoff.
_U = float(np.finfo(np.float32).eps) / 2


@dataclass(frozen=True)
class FunctionTask:
    """One distinct PrimFunc of a model: ``func`` as compilation queries the database with it,
    ``default`` as compilation schedules it without a record, ``weight`` its calls in the model."""

    name: str
    func: tirx.PrimFunc
    default: tirx.PrimFunc
    weight: int = 1
    kind: str = "function"  # "function" (after fusion) or "direct" (our direct conv)


def reduction_extent(func: tirx.PrimFunc) -> int:
    """The longest reduction of ``func``: the largest product of a block's reduction extents (1 if none)."""
    sch = s_tir.Schedule(as_module(func))
    longest = 1

    def visit(block) -> None:
        nonlocal longest
        stmt = sch.get(block)
        n = 1
        for iv in stmt.iter_vars:
            if iv.iter_type == tirx.IterVar.CommReduce and isinstance(iv.dom.extent, tirx.IntImm):
                n *= int(iv.dom.extent)
        longest = max(longest, n)
        for child in sch.get_child_blocks(block):
            visit(child)

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        visit(block)
    return longest


def _arguments(func: tirx.PrimFunc, rng: np.random.Generator) -> list[np.ndarray]:
    args = []
    for param in func.params:
        shape = [int(s) for s in param.shape]
        dtype = str(param.dtype)
        if dtype.startswith("float"):
            args.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == "bool":
            args.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            args.append(rng.integers(0, 8, shape).astype(dtype))
    return args


def _run(func: tirx.PrimFunc, target: Target, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    ex = build_tir(func.with_attr("global_symbol", "main"), target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    ex["main"](*tensors)
    return [t.numpy() for t in tensors]


def check_same(scheduled: tirx.PrimFunc, default: tirx.PrimFunc, target: Target, seed: int = 0) -> float:
    """Run ``scheduled`` and ``default`` on the same seeded signed inputs; raise ``ArithmeticError``
    naming the worst element when a buffer differs by more than float32 reassociation explains.

    The rounding errors of a sum of n terms, in either order, are a random walk: their difference
    stays within ``8 sqrt(n+1) u ||terms||_2`` (u = 2^-24; eight standard deviations, both orders), plus
    ``4 u`` of the value for the final roundings.  ``||terms||_2`` is ``sqrt(default(x*x))``: exact for
    sums, matrix products and convolutions (multilinear in the inputs), larger than it for means,
    a stand-in for softmax-like functions (the check is a guard there, not a proof).  n is the
    longest reduction (:func:`reduction_extent`).  Integer buffers must match exactly.  Returns the
    largest error relative to its bound (< 1 passes).  A sum of 257 terms scaled by 1 + 1e-4 fails."""
    rng = np.random.default_rng(seed)
    args = _arguments(default, rng)
    ref = _run(default, target, args)
    squares = _run(default, target, [a * a if a.dtype.kind == "f" else a for a in args])
    got = _run(scheduled, target, args)
    n = reduction_extent(default)
    worst = 0.0
    for i, (r, sq, g) in enumerate(zip(ref, squares, got)):
        if r.dtype.kind != "f":
            if not np.array_equal(r, g):
                raise ArithmeticError(f"buffer {i} ({default.params[i].name}): integer results differ")
            continue
        r64, g64 = r.astype("float64"), g.astype("float64")
        norm = np.sqrt(np.abs(sq.astype("float64")))
        bound = 8 * np.sqrt(n + 1) * _U * norm + 4 * _U * np.abs(r64) + np.finfo(np.float32).tiny
        bound = np.where(np.isfinite(bound), bound, np.inf)
        ratio = np.abs(g64 - r64) / bound
        if not np.array_equal(np.isfinite(g64), np.isfinite(r64)) or np.nanmax(ratio, initial=0.0) > 1:
            k = int(np.nanargmax(np.where(np.isfinite(ratio), ratio, np.inf)))
            raise ArithmeticError(
                f"buffer {i} ({default.params[i].name}) element {np.unravel_index(k, r.shape)}: "
                f"{g64.flat[k]!r} vs {r64.flat[k]!r} (bound {bound.flat[k]:.3g})")
        worst = max(worst, float(np.nanmax(ratio, initial=0.0)))
    return worst


def _measure_defaults(tasks: Sequence[FunctionTask], target: Target, builder, runner) -> list[float | None]:
    """The median time (ms) of each ``task.default`` on ``runner`` (None where it failed to build or
    run), in one build batch and one run batch (each batch starts worker processes)."""
    mods = [as_module(t.default) for t in tasks]
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods]) if mods else []
    inputs, where = [], []
    for i, (task, mod, b) in enumerate(zip(tasks, mods, built)):
        if b.error_msg:
            logger.warning("%s: the default schedule failed to build: %s", task.name, b.error_msg.splitlines()[0])
            continue
        args_info = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
        inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args_info))
        where.append(i)
    times: list[float | None] = [None] * len(tasks)
    for i, future in zip(where, runner.run(inputs) if inputs else []):
        result = future.result()
        if result.error_msg or not result.run_secs:
            logger.warning("%s: the default schedule failed to run: %s", tasks[i].name, result.error_msg)
            continue
        times[i] = statistics.median(float(s) for s in result.run_secs) * 1e3
    return times


def _contexts(tasks: Sequence[FunctionTask], remaining: Sequence[int], target: Target, per_iter: int,
              work_dir: Path, seed: int) -> tuple[list, list[float], list[int]]:
    """A TuneContext per task with trials left (a task whose space cannot be generated is skipped)."""
    ctxs, weights, budgets = [], [], []
    for i, (task, left) in enumerate(zip(tasks, remaining)):
        if left <= 0:
            continue
        try:
            ctx = ms.TuneContext(
                mod=as_module(task.func), target=target, space_generator=space_for("direct"),
                search_strategy=skip_measured(make_strategy(left, per_iter)), task_name=task.name,
                rand_state=seed + 7919 * i, num_threads="physical",
                logger=ms.logging.get_loggers_from_work_dir(str(work_dir), [task.name])[0],
            ).clone()
            if not ctx.generate_design_space():
                raise ValueError("empty design space")
        except (RuntimeError, ValueError, TypeError) as err:
            logger.warning("%s: MetaSchedule has no design space for it (%s): keeps its default",
                           task.name, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            continue
        ctxs.append(ctx)
        weights.append(float(task.weight))
        budgets.append(left)
    return ctxs, weights, budgets


def _best_checked(db, task: FunctionTask, target: Target, seed: int) -> tuple[float | None, str | None, object]:
    """(ms, problem, record) of the fastest of the best records that :func:`check_same` passes."""
    mod = as_module(task.func)
    if not db.has_workload(mod):
        return None, "no record", None
    problems = []
    for record in db.get_top_k(db.commit_workload(mod), CHECK_TOP_K):
        t = median_ms(record)
        if t is None:
            continue
        try:
            check_same(apply_trace(record), task.default, target, seed)
        except (ArithmeticError, RuntimeError, ValueError) as err:
            problems.append(str(err).splitlines()[0])
            logger.warning("%s: a tuned record fails the check (%s): skipped", task.name, problems[-1])
            continue
        return t, None, record
    return None, "; ".join(problems) or "no successful measurement", None


def tune_functions(
    tasks: Sequence[FunctionTask],
    target: object = "llvm",
    *,
    trials: int,
    trials_per_task: int,
    log_dir: str | os.PathLike | None = None,
    schedules_dir: str | os.PathLike | None = None,
    builder: ms.builder.Builder | None = None,
    runner: ms.runner.Runner | None = None,
    require_gain: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Tune ``tasks`` with at most ``trials`` measurements in all (``trials_per_task`` each).

    Returns one dict per task: ``name``, ``kind``, ``weight``, ``records`` (measured, all runs),
    ``default_ms``, ``tuned_ms`` (best checked record), ``stored`` (whether compilation will use it),
    ``reason`` (why not) and ``speedup``.  ``require_gain=False`` stores a checked record even when it
    is not faster than the default (tests).
    """
    for value, what in ((trials, "trials"), (trials_per_task, "trials_per_task")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    tgt = resolve_target(target)
    if tgt.kind.name != "llvm":
        raise NotImplementedError(f"tuning the model's other functions on {tgt.kind.name!r}: llvm only for now")
    logs, sched = tuning_logs_dir(tgt, log_dir), schedules_dir_for(tgt, schedules_dir)
    builder = builder if builder is not None else make_builder(tgt)
    runner = runner if runner is not None else default_runner(tgt)
    start = time.perf_counter()
    db = open_database(logs)
    try:
        remaining = [max(0, trials_per_task - record_count(db, as_module(t.func), tgt)) for t in tasks]
        per_iter = max(1, min(16, trials_per_task))
        ctxs, weights, budgets = _contexts(tasks, remaining, tgt, per_iter, logs, seed)
        budget = min(trials, sum(budgets))
        if ctxs and budget > 0:
            logger.info("tuning %d functions, %d trials (at most %d each)", len(ctxs), budget, max(budgets))
            ms.tune.tune_tasks(
                tasks=ctxs, task_weights=weights, work_dir=str(logs), max_trials_global=budget,
                max_trials_per_task=max(budgets), num_trials_per_iter=per_iter, builder=builder, runner=runner,
                database=db, cost_model="xgb", measure_callbacks=ms.measure_callback.MeasureCallback.create("default"),
                task_scheduler="gradient",
            )
        defaults = _measure_defaults(tasks, tgt, builder, runner)
        results = [_conclude(task, db, tgt, default_ms, seed, require_gain) for task, default_ms in zip(tasks, defaults)]
    finally:
        db.close()
    _store([r.pop("_record") for r in results], sched, tgt, [r["stored"] for r in results])
    logger.info("tuned %d functions in %.0f s; %d beat their default", len(tasks), time.perf_counter() - start,
                sum(r["stored"] for r in results))
    return results


def _conclude(task: FunctionTask, db, target: Target, default_ms: float | None, seed: int,
              require_gain: bool) -> dict:
    """The task's result row (its checked best record under ``_record``; ``stored`` says if it is kept)."""
    tuned_ms, problem, record = _best_checked(db, task, target, seed)
    stored, reason = record is not None, problem
    if stored and require_gain and default_ms is not None and tuned_ms > default_ms * (1 - MIN_GAIN):
        stored, reason = False, f"default faster ({default_ms:.4f} ms vs {tuned_ms:.4f} ms)"
    return {"name": task.name, "kind": task.kind, "weight": task.weight,
            "records": record_count(db, as_module(task.func), target),
            "default_ms": default_ms, "tuned_ms": tuned_ms, "stored": stored, "reason": None if stored else reason,
            "speedup": (default_ms / tuned_ms) if stored and default_ms and tuned_ms else None,
            "_record": record}


def _store(records: list, schedules_dir: Path, target: Target, keep: list[bool]) -> None:
    """Commit the kept records to the schedules database (what compilation applies)."""
    kept = [r for r, k in zip(records, keep) if k and r is not None]
    if not kept:
        return
    db = open_database(schedules_dir)
    try:
        for record in kept:
            workload = db.commit_workload(record.workload.mod)
            top = db.get_top_k(workload, 1)
            if top and str(top[0].trace) == str(record.trace):
                continue
            db.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target or target, record.args_info))
    finally:
        db.close()


def budget_split(trials: int | None, trials_per_task: int | None, tasks: int) -> tuple[int, int]:
    """``(total, per task)`` from the CLI's ``--trials`` (total) and ``--trials-per-task``: a missing one
    follows from the other (per task: the total spread evenly, at least 1; total: per task times the
    tasks); neither: 64 per task."""
    tasks = max(tasks, 1)
    if trials_per_task is None:
        trials_per_task = 64 if trials is None else max(1, trials // tasks)
    if trials is None:
        trials = trials_per_task * tasks
    return trials, trials_per_task

