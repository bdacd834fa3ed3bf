"""Per-layer tuning: MetaSchedule search for every candidate algorithm, then choice by measurement.

For one convolution (:class:`~tvm_winograd.workload.Conv2dSpec`) the candidates are the direct
convolution (tuned with MetaSchedule's default llvm rules: it has no custom rule) and Winograd F(m, r)
for every ``m`` of :data:`~tvm_winograd.heuristic.CANDIDATE_TILES` that fits the output (our design
spaces, :mod:`tvm_winograd.schedule.cpu`).  Each candidate is one MetaSchedule task searched with
evolutionary search and the XGBoost cost model; every measurement goes to the full tuning log
(``tuning_logs/<target-dir>/``, via :func:`~tvm_winograd.tune.database.open_database`).

Then, per candidate, the best records are re-applied, compiled and checked against the float64
reference (:mod:`tvm_winograd.verify`: the worst-case bound and the random-rounding model); the first one
that passes is the candidate's schedule and its median measured time is the candidate's time.  The
fastest candidate wins (:func:`~.candidates.choose_by_times`, a pure function); the decision and all times go to
``schedules/<target-dir>/choices.json`` and each candidate's verified best record to the JSON database
in ``schedules/<target-dir>/`` — what compilation applies (:func:`~.records.apply_best`).

Resuming: a candidate whose workload already has ``>= trials`` records in the tuning log (failures
included, :func:`~tvm_winograd.tune.database.measured_count`), or whose search with a budget of
``>= trials`` already finished (``search_state.json`` in the log directory: a search can stop early when
its space is exhausted), is not searched again: nothing is re-measured.  A candidate with fewer records
gets the remaining ``trials - records`` trials; its search starts from the best database records
(MetaSchedule's evolutionary search seeds its population from them), but the cost model starts fresh.

Budget realism (2 cores): MetaSchedule's default evolutionary search evolves 512 candidates per round;
here the population, initial sample and genetic iterations are scaled to the trial budget
(:func:`~.search.make_strategy`), so a round costs seconds, not minutes.

This module is the orchestration only; the jobs it strings together live beside it: ``candidates``
(what is tuned, the choice), ``search`` (strategy, spaces, progress callback), ``verification`` (the
shared numerical check applied to records), ``records`` (counting, storing and applying records),
``state`` (``search_state.json``), ``results`` and ``display``.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..compute import Epilogue
from ..targets import resolve_target
from ..workload import Conv2dSpec
from .candidates import (
    candidate_func,
    choose_by_times,
    layer_candidates,
    parse_candidate,
)
from .choices import AlgorithmChoice, save_choices
from .database import open_database
from .display import Display, format_results
from .measure import default_runner, make_builder
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir
from .records import as_module, record_count, store_best
from .results import CandidateResult, LayerTuneResult
from .search import (
    SearchProgress,
    make_strategy,
    skip_measured,
    space_for,
    trials_to_90,
)
from .state import load_state, save_state, state_key
from .verification import pick_verified

__all__ = ["tune_layer"]

logger = logging.getLogger(__name__)


def tune_layer(
    spec: Conv2dSpec,
    target: object = "llvm",
    *,
    epilogue: Epilogue = Epilogue(),
    trials: int = 64,
    candidates: Iterable[str] | None = None,
    work_dir: str | os.PathLike | None = None,
    schedules_dir: str | os.PathLike | None = None,
    builder: ms.builder.Builder | None = None,
    runner: ms.runner.Runner | None = None,
    progress: bool = True,
    seed: int = 0,
    trials_per_iter: int | None = None,
    verify: bool = True,
) -> LayerTuneResult:
    """Tune every candidate algorithm of ``spec`` for ``target`` and keep the fastest, by measurement.

    Parameters
    ----------
    spec, epilogue
        The layer and its fused epilogue (part of the tuned PrimFunc).
    target
        Anything :func:`~tvm_winograd.targets.resolve_target` takes (default: this CPU).
    trials
        Measured candidates per algorithm (the same budget for direct and each Winograd m).
    candidates
        Subset of :func:`layer_candidates` (``"direct"``, ``"winograd_m4"``, ...); default: all.
    work_dir, schedules_dir
        Full tuning log and applied-schedules directories; default ``./tuning_logs/<target-dir>`` and
        ``./schedules/<target-dir>``.
    builder, runner
        Injected measurement (tests); default :func:`make_builder` / :func:`~.measure.default_runner` (local).
    progress
        Show a live progress display (trials, best time) and log the final per-layer table.
    trials_per_iter
        Candidates measured per search round (default ``min(16, trials)``).
    verify
        Check the chosen records against the float64 reference before storing them (llvm only).
    """
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    tgt = resolve_target(target)
    names = _checked_candidates(spec, candidates)
    work_dir = Path(work_dir) if work_dir is not None else tuning_logs_dir(tgt)  # a given one: exactly there
    schedules_dir = Path(schedules_dir) if schedules_dir is not None else schedules_dir_for(tgt)
    start = time.perf_counter()

    builder = builder if builder is not None else make_builder(tgt)
    runner = runner if runner is not None else default_runner(tgt)
    display = Display(spec, names, trials) if progress else None
    results: dict[str, CandidateResult] = {}
    db = open_database(work_dir)
    try:
        state, state_unusable = load_state(work_dir)
        run = _LayerRun(spec, epilogue, tgt, trials, int(trials_per_iter or min(16, trials)), seed, work_dir,
                        builder, runner, display, verify and tgt.kind.name == "llvm", db, state, state_unusable)
        for index, name in enumerate(names):
            results[name] = _tune_candidate(run, index, name)
    finally:
        if display:
            display.close()
        db.close()

    choice = _choose_and_store(spec, epilogue, results, work_dir, schedules_dir, tgt)
    out = LayerTuneResult(spec, epilogue, str(tgt), results, choice, str(work_dir), str(schedules_dir),
                          trials, time.perf_counter() - start)
    if progress:
        logger.info("\n%s", format_results([out]))
    return out


def _checked_candidates(spec: Conv2dSpec, candidates: Iterable[str] | None) -> list[str]:
    """``candidates`` (default: every :func:`layer_candidates` entry) after checking each is one of them."""
    allowed = layer_candidates(spec)
    names = list(allowed if candidates is None else candidates)
    for name in names:
        if name not in allowed:
            raise ValueError(f"candidate {name!r} is not available for {spec.key()}: choose from {allowed}")
    if not names:
        raise ValueError("candidates is empty")
    return names


@dataclass
class _LayerRun:
    """What every candidate of one :func:`tune_layer` call shares."""

    spec: Conv2dSpec
    epilogue: Epilogue
    target: Target
    trials: int
    per_iter: int
    seed: int
    work_dir: Path
    builder: ms.builder.Builder
    runner: ms.runner.Runner
    display: Display | None
    can_verify: bool
    db: ms.database.Database
    state: dict
    state_unusable: bool  # search_state.json held something unusable: keep it aside when first replaced


def _tune_candidate(run: _LayerRun, index: int, name: str) -> CandidateResult:
    """One candidate: seed and search it unless its budget is already spent, then pick its verified best."""
    algorithm, m = parse_candidate(name)
    func = candidate_func(run.spec, name, run.epilogue, run.target.kind.name)
    mod = as_module(func)
    res = CandidateResult(name, algorithm, m)
    t0 = time.perf_counter()
    done = record_count(run.db, mod, run.target)
    key = state_key(run.spec, run.epilogue, name, mod)
    finished_budget = int(run.state.get(key, 0))
    seeded, seed_ms = 0, None
    if done == 0 and finished_budget < run.trials:
        seed_ms = _seed_default(run.db, mod, func, run.target, run.builder, run.runner, algorithm)
        seeded = int(seed_ms is not None)
        done += seeded
    remaining = run.trials - done
    if seeded or (remaining > 0 and finished_budget < run.trials):
        callback = SearchProgress(run.display.updater(name) if run.display else None, seed_ms)
        if remaining > 0:
            if run.display:
                run.display.start(name, done)
            _search(run, mod, algorithm, name, index, remaining, callback)
        res.new_trials = seeded + callback.trials
        res.history_ms = list(callback.history_ms)
        res.trials_to_90 = trials_to_90(res.history_ms)
        run.state[key] = run.trials
        save_state(run.work_dir, run.state, keep_original=run.state_unusable)
        run.state_unusable = False
    else:
        logger.info("%s %s: %d records already measured (budget %d): not searched again",
                    run.spec.key(), name, done, run.trials)
    res.records = record_count(run.db, mod, run.target)
    pick_verified(run.db, mod, run.spec, run.epilogue, res, run.target, run.can_verify, run.seed)
    res.wall_s = time.perf_counter() - t0
    if run.display:
        run.display.finish(name, res)
    return res


def _search(run: _LayerRun, mod: tvm.IRModule, algorithm: str, name: str, index: int, remaining: int,
            callback: SearchProgress) -> None:
    """MetaSchedule's evolutionary search over the candidate's space for ``remaining`` more trials."""
    ctx = ms.TuneContext(
        mod=mod, target=run.target, space_generator=space_for(algorithm, run.target.kind.name),
        search_strategy=skip_measured(make_strategy(run.trials, run.per_iter)), task_name=name,
        rand_state=run.seed + 7919 * index, num_threads="physical",
        logger=ms.logging.get_loggers_from_work_dir(str(run.work_dir), [name])[0],
    ).clone()
    ms.tune.tune_tasks(
        tasks=[ctx], task_weights=[1.0], work_dir=str(run.work_dir),
        max_trials_global=remaining, max_trials_per_task=remaining,
        num_trials_per_iter=min(run.per_iter, remaining), builder=run.builder, runner=run.runner,
        database=run.db, cost_model="xgb",
        measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [callback],
        task_scheduler="round-robin",
    )


def _choose_and_store(spec: Conv2dSpec, epilogue: Epilogue, results: dict[str, CandidateResult], work_dir: Path,
                      schedules_dir: Path, target: Target) -> AlgorithmChoice | None:
    """The fastest verified candidate, stored with every candidate's best record (``None``: none has one)."""
    times = {name: r.median_ms for name, r in results.items()}
    if not any(t is not None for t in times.values()):
        logger.warning("%s: no candidate has a verified, measured schedule; nothing stored", spec.key())
        return None
    choice = choose_by_times(times)
    store_best(schedules_dir, spec, epilogue, results, db_dir=work_dir, target=target)
    save_choices(schedules_dir, {spec.key(): choice})
    return choice


def _seed_default(db, mod: tvm.IRModule, func: tirx.PrimFunc, target: Target, builder, runner,
                  algorithm: str) -> float | None:
    """Measure the Winograd design space at its shape-derived default decisions
    (:func:`~tvm_winograd.schedule.default.default_decisions`) and commit it as the first record
    (one trial of the budget): the evolutionary search starts from it (its initial population takes
    the best measured records), so a small budget never ends below the untuned default.  Returns its
    median time in ms, or ``None`` when nothing was seeded."""
    if algorithm != "winograd" or target.kind.name != "llvm":
        return None
    from ..schedule.cpu import fixed_schedule
    from ..schedule.default import default_decisions

    try:
        sch = fixed_schedule(mod, default_decisions(func))
    except Exception as err:  # noqa: BLE001 - a shape the fixed point does not fit: plain search
        logger.info("no default point to seed the search with (%s)", err)
        return None
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg:
        logger.warning("the default schedule failed to build, search not seeded: %s", built.error_msg)
        return None
    # the runner wants a device name ("cpu"), not the target kind ("llvm"); only llvm gets here
    (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])
    result = future.result()
    if result.error_msg or not result.run_secs:
        logger.warning("the default schedule failed to run, search not seeded: %s", result.error_msg)
        return None
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), result.run_secs,
                                                     target, args_info))
    seed_ms = statistics.median(float(s) for s in result.run_secs) * 1e3
    logger.info("seeded the search with the default schedule: %.3f ms", seed_ms)
    return seed_ms
