"""Per-layer tuning: MetaSchedule search for every candidate algorithm, then choice by measurement.

For one convolution (:class:`~tvm_winograd.workload.Conv2dSpec`) the candidates are the direct
convolution (tuned with MetaSchedule's default llvm rules: it has no custom rule) and Winograd F(m, r)
for every ``m`` of :data:`~tvm_winograd.workload.CANDIDATE_TILES` that fits the output (our design
spaces, :mod:`tvm_winograd.schedule.cpu`).  Each candidate is one MetaSchedule task searched with
evolutionary search and the XGBoost cost model; every measurement goes to the full tuning log
(``tuning_logs/<target-dir>/``, via :func:`~tvm_winograd.tune.database.open_database`).

Then, per candidate, the best records are re-applied, compiled and checked against the float64
reference (:mod:`tvm_winograd.verify`: the worst-case bound and the random-rounding model); the first one
that passes is the candidate's schedule and its median measured time is the candidate's time.  The
fastest candidate wins (:func:`choose_by_times`, a pure function); the decision and all times go to
``schedules/<target-dir>/choices.json`` and each candidate's verified best record to the JSON database
in ``schedules/<target-dir>/`` — what compilation applies (:func:`apply_best`).

Resuming: a candidate whose workload already has ``>= trials`` records in the tuning log (failures
included, :func:`~tvm_winograd.tune.database.measured_count`), or whose search with a budget of
``>= trials`` already finished (``search_state.json`` in the log directory: a search can stop early when
its space is exhausted), is not searched again: nothing is re-measured.  A candidate with fewer records
gets the remaining ``trials - records`` trials; its search starts from the best database records
(MetaSchedule's evolutionary search seeds its population from them), but the cost model starts fresh.

Budget realism (2 cores): MetaSchedule's default evolutionary search evolves 512 candidates per round;
here the population, initial sample and genetic iterations are scaled to the trial budget
(:func:`make_strategy`), so a round costs seconds, not minutes.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .. import schedule as _schedule  # noqa: F401 - registers the custom CPU rules
from ..compute import Epilogue, direct_func, kernel_block_of, target_config, winograd_func
from ..targets import resolve_target
from ..verify import Case, prepare, run_cpu
from ..workload import CANDIDATE_TILES, Conv2dSpec, winograd_ineligibility
from .choices import AlgorithmChoice, save_choices
from .database import open_database, skip_measured
from .jsonfile import keep_aside, read_object, write_atomic
from .measure import make_builder, make_runner
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir

__all__ = [
    "CandidateResult",
    "LayerTuneResult",
    "layer_candidates",
    "candidate_func",
    "choose_by_times",
    "make_strategy",
    "tune_layer",
    "apply_best",
    "verify_func",
    "verification_case",
    "format_results",
]

logger = logging.getLogger(__name__)

SEARCH_STATE_FILE = "search_state.json"
#: How many of a candidate's best records are tried (verified) before giving up on it.
VERIFY_TOP_K = 5


# --------------------------------------------------------------------------------------------------
# Candidates and the choice
# --------------------------------------------------------------------------------------------------

def layer_candidates(spec: Conv2dSpec) -> list[str]:
    """``["direct", "winograd_m2", ...]``: direct always; Winograd for each candidate tile that fits.

    A tile fits when Winograd can run the layer and ``m`` is at most the output's height and width
    (a larger tile computes mostly padding).
    """
    names = ["direct"]
    if winograd_ineligibility(spec) is None:
        for m in CANDIDATE_TILES.get(spec.dtype, (2, 4)):
            if m <= min(spec.out_height, spec.out_width):
                names.append(f"winograd_m{m}")
    return names


def _parse_candidate(name: str) -> tuple[str, int | None]:
    if name == "direct":
        return "direct", None
    if name.startswith("winograd_m") and name[len("winograd_m"):].isdigit():
        return "winograd", int(name[len("winograd_m"):])
    raise ValueError(f"candidate {name!r} is not 'direct' or 'winograd_m<m>'")


def candidate_func(spec: Conv2dSpec, name: str, epilogue: Epilogue = Epilogue(),
                   target_kind: str = "llvm") -> tirx.PrimFunc:
    """The PrimFunc a candidate tunes: :func:`direct_func` or :func:`winograd_func` (pre-transformed
    weights, in the kernel_pack layout of ``target_kind``: the one compilation uses)."""
    algorithm, m = _parse_candidate(name)
    if algorithm == "direct":
        return direct_func(spec, epilogue)
    return winograd_func(spec, target_config(spec, m, target_kind), epilogue)


def choose_by_times(times_ms: dict[str, float | None]) -> AlgorithmChoice:
    """The fastest candidate (``None`` = no verified schedule); ties go to direct, then the smaller m.

    Raises ``ValueError`` when no candidate has a time.
    """
    timed = {name: t for name, t in times_ms.items() if t is not None and math.isfinite(t)}
    if not timed:
        raise ValueError(f"no candidate has a measured time: {times_ms}")

    def order(name: str) -> tuple:
        algorithm, m = _parse_candidate(name)
        return (timed[name], algorithm != "direct", m or 0)

    best = min(timed, key=order)
    algorithm, m = _parse_candidate(best)
    return AlgorithmChoice(algorithm, m, {k: (None if v is None else float(v)) for k, v in times_ms.items()})


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------

@dataclass
class CandidateResult:
    """What tuning found for one candidate of one layer."""

    name: str
    algorithm: str
    m: int | None
    median_ms: float | None = None  # of the verified best record; None: none verified
    records: int = 0  # measured candidates in the tuning log (failures included)
    new_trials: int = 0  # measured by this call
    verified: bool = False
    max_error: float | None = None  # |ours - float64 reference| of the verified record
    trials_to_90: int | None = None  # trials (this call, the seed included) until within 90% of this call's best
    history_ms: list = field(default_factory=list)  # best-so-far after each measured trial (this call, seed first)
    wall_s: float = 0.0


@dataclass
class LayerTuneResult:
    """The per-layer outcome: every candidate, the choice, where things were written."""

    spec: Conv2dSpec
    epilogue: Epilogue
    target: str
    candidates: dict[str, CandidateResult]
    choice: AlgorithmChoice | None
    work_dir: str
    schedules_dir: str
    trials: int
    wall_s: float

    @property
    def best_ms(self) -> float | None:
        if self.choice is None:
            return None
        name = "direct" if self.choice.algorithm == "direct" else f"winograd_m{self.choice.m}"
        return self.candidates[name].median_ms


# --------------------------------------------------------------------------------------------------
# Search configuration
# --------------------------------------------------------------------------------------------------

def make_strategy(trials: int, trials_per_iter: int) -> ms.search_strategy.SearchStrategy:
    """Evolutionary search sized for small budgets (MetaSchedule's defaults evolve 512 per round)."""
    population = int(min(256, max(32, 4 * trials_per_iter)))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population,
        init_measured_ratio=0.2,
        init_min_unmeasured=int(min(population, max(16, 2 * trials_per_iter))),
        max_fail_count=5,
        genetic_num_iters=2 if trials < 200 else 4,
        genetic_mutate_prob=0.85,
        genetic_max_fail_count=10,
        eps_greedy=0.05,
    )


def _space(algorithm: str) -> ms.space_generator.SpaceGenerator:
    if algorithm == "winograd":
        # Our rules schedule every block (and inline the constant matrices): no generic rule on top.
        return ms.space_generator.PostOrderApply(sch_rules=[ms.schedule_rule.ApplyCustomRule()])
    # MetaSchedule's default llvm rules and postprocs, without RewriteLayout: it pre-transforms the
    # weight (topi marks it layout-free), which a PrimFunc taking plain weights cannot use, and its
    # IndexMap in the trace is not serializable by our database.
    postprocs = [p for p in ms.Postproc.create("llvm") if "RewriteLayout" not in type(p).__name__]
    return ms.space_generator.PostOrderApply(postprocs=postprocs)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Counts measured trials and tracks the best time; drives the optional progress display."""

    def __init__(self, on_update: Callable[[int, float | None], None] | None = None,
                 seed_ms: float | None = None) -> None:
        super().__init__()
        self.trials = 0  # search trials (the seed, measured before the search, is not one of them)
        self.best_ms: float | None = seed_ms
        self.history_ms: list[float | None] = [] if seed_ms is None else [seed_ms]
        self.on_update = on_update

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for result in runner_results:
            self.trials += 1
            secs = result.run_secs
            if secs is not None and len(secs) > 0:
                vals = [float(s) for s in secs]
                if all(v < 1e9 for v in vals):
                    t = statistics.median(vals) * 1e3
                    if self.best_ms is None or t < self.best_ms:
                        self.best_ms = t
            self.history_ms.append(self.best_ms)
        if self.on_update is not None:
            self.on_update(self.trials, self.best_ms)


def _trials_to_90(history: Sequence[float | None]) -> int | None:
    final = next((h for h in reversed(history) if h is not None), None)
    if final is None:
        return None
    for i, h in enumerate(history):
        if h is not None and h <= final / 0.9:
            return i + 1
    return None


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------

def verification_case(func: tirx.PrimFunc, spec: Conv2dSpec, epilogue: Epilogue, algorithm: str, m: int | None,
                      target: Target, seed: int = 0) -> Case:
    """The inputs and error model a candidate's schedules are checked with (:mod:`tvm_winograd.verify`):
    the model follows the config compilation uses for the target (:func:`target_config`), the kernel
    pack argument follows ``func``'s parameter (layout and dtype)."""
    if algorithm != "winograd":
        return prepare(spec, epilogue, algorithm, seed=seed)
    return prepare(spec, epilogue, algorithm, target_config(spec, m, target.kind.name), seed=seed,
                   kernel_block=kernel_block_of(func), pack_arg_dtype=str(func.params[1].dtype))


def verify_func(func: tirx.PrimFunc, spec: Conv2dSpec, epilogue: Epilogue, algorithm: str,
                m: int | None, target: Target, seed: int = 0, case: Case | None = None) -> float:
    """Build ``func`` (a scheduled candidate) for ``target``, run it on seeded signed inputs and return
    the max error vs the float64 reference; raises ``ArithmeticError`` when the output fails the check
    of :func:`tvm_winograd.accuracy.assess` (worst-case bound, RMS, peak and gain against the
    random-rounding model).  ``case``: a prepared :func:`verification_case` (the same for every record
    of a candidate).  CPU targets only."""
    if target.kind.name != "llvm":
        raise NotImplementedError(f"verifying on target {target.kind.name!r}: only llvm runs on this host")
    if case is None:
        case = verification_case(func, spec, epilogue, algorithm, m, target, seed)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    got = run_cpu(ex["main"], case)
    verdict = case.assess(got)
    if not verdict.ok:
        raise ArithmeticError(f"{algorithm} (m={m}): {verdict.reason}")
    return float(np.max(np.abs(got - case.model.reference)))


def _apply_trace(record: ms.database.TuningRecord) -> tirx.PrimFunc:
    sch = s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"]


def _median_ms(record: ms.database.TuningRecord) -> float | None:
    secs = record.run_secs
    if secs is None or len(secs) == 0:
        return None
    vals = [float(s) for s in secs]
    if any(v >= 1e9 for v in vals):
        return None
    return statistics.median(vals) * 1e3


# --------------------------------------------------------------------------------------------------
# Database helpers
# --------------------------------------------------------------------------------------------------

def _as_module(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module MetaSchedule tunes for a PrimFunc (``global_symbol`` ``main``)."""
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _record_count(db, mod: tvm.IRModule, target: Target) -> int:
    try:
        from .database import measured_count
    except ImportError:  # older database module: count by workload
        if not db.has_workload(mod):
            return 0
        workload = db.commit_workload(mod)
        return sum(1 for r in db.get_all_tuning_records() if r.workload.same_as(workload)
                   or tvm.ir.structural_equal(r.workload.mod, mod))
    return measured_count(db, mod, target)


def _close(db) -> None:
    close = getattr(db, "close", None)
    if close is not None:
        close()


def _load_state(work_dir: Path) -> tuple[dict, bool]:
    """``search_state.json``: finished search budgets by :func:`_state_key`, and whether the file held
    something unusable.  An unreadable file or entry is skipped with a warning (the measurements
    themselves are in the tuning log, so nothing is re-measured; at worst a search that had stopped
    early is tried again); :func:`_save_state` keeps the file as ``search_state.json.corrupt`` when it
    replaces it (as ``save_choices`` does for ``choices.json``), so a run that saves nothing copies
    nothing."""
    path = work_dir / SEARCH_STATE_FILE
    raw, problem = read_object(path)
    if raw is None:
        logger.warning("%s is unreadable (%s): ignoring it (kept as a .corrupt copy when it is replaced)",
                       path, problem)
        return {}, True
    state, clean = {}, True
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            state[key] = value
        else:
            logger.warning("%s: skipping entry %r (budget %r is not a count)", path, key, value)
            clean = False
    return state, not clean


def _save_state(work_dir: Path, state: dict, keep_original: bool = False) -> None:
    """Write ``search_state.json``; ``keep_original``: first keep the unusable file on disk aside."""
    path = work_dir / SEARCH_STATE_FILE
    if keep_original and path.exists():
        logger.warning("%s: kept the unreadable original as %s", path, keep_aside(path))
    write_atomic(path, state)


def _state_key(spec: Conv2dSpec, epilogue: Epilogue, name: str, mod: tvm.IRModule) -> str:
    # The workload's structural hash: a changed compute (e.g. another kernel_pack layout) of the same
    # layer is a new search, not a finished one.
    return f"{spec.key()}|{epilogue.tag()}|{name}|{tvm_ffi.structural_hash(mod) & 0xFFFFFFFF:08x}"


# --------------------------------------------------------------------------------------------------
# The tuner
# --------------------------------------------------------------------------------------------------

def _make_runner(target: Target) -> ms.runner.Runner:
    config = ms.runner.EvaluatorConfig(number=3, repeat=5, min_repeat_ms=20, enable_cpu_cache_flush=False)
    try:
        return make_runner(target, evaluator_config=config)
    except TypeError:  # make_runner without evaluator_config
        return make_runner(target)


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
        Injected measurement (tests); default :func:`make_builder` / :func:`make_runner` (local).
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

    builder = builder if builder is not None else _fast_builder(tgt)
    runner = runner if runner is not None else _make_runner(tgt)
    display = _Display(spec, names, trials) if progress else None
    results: dict[str, CandidateResult] = {}
    db = open_database(work_dir)
    try:
        state, state_unusable = _load_state(work_dir)
        run = _LayerRun(spec, epilogue, tgt, trials, int(trials_per_iter or min(16, trials)), seed, work_dir,
                        builder, runner, display, verify and tgt.kind.name == "llvm", db, state, state_unusable)
        for index, name in enumerate(names):
            results[name] = _tune_candidate(run, index, name)
    finally:
        if display:
            display.close()
        _close(db)

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
    display: _Display | None
    can_verify: bool
    db: ms.database.Database
    state: dict
    state_unusable: bool  # search_state.json held something unusable: keep it aside when first replaced


def _tune_candidate(run: _LayerRun, index: int, name: str) -> CandidateResult:
    """One candidate: seed and search it unless its budget is already spent, then pick its verified best."""
    algorithm, m = _parse_candidate(name)
    func = candidate_func(run.spec, name, run.epilogue, run.target.kind.name)
    mod = _as_module(func)
    res = CandidateResult(name, algorithm, m)
    t0 = time.perf_counter()
    done = _record_count(run.db, mod, run.target)
    key = _state_key(run.spec, run.epilogue, name, mod)
    finished_budget = int(run.state.get(key, 0))
    seeded, seed_ms = 0, None
    if done == 0 and finished_budget < run.trials:
        seed_ms = _seed_default(run.db, mod, func, run.target, run.builder, run.runner, algorithm)
        seeded = int(seed_ms is not None)
        done += seeded
    remaining = run.trials - done
    if seeded or (remaining > 0 and finished_budget < run.trials):
        callback = _Progress(run.display.updater(name) if run.display else None, seed_ms)
        if remaining > 0:
            if run.display:
                run.display.start(name, done)
            _search(run, mod, algorithm, name, index, remaining, callback)
        res.new_trials = seeded + callback.trials
        res.history_ms = list(callback.history_ms)
        res.trials_to_90 = _trials_to_90(res.history_ms)
        run.state[key] = run.trials
        _save_state(run.work_dir, run.state, keep_original=run.state_unusable)
        run.state_unusable = False
    else:
        logger.info("%s %s: %d records already measured (budget %d): not searched again",
                    run.spec.key(), name, done, run.trials)
    res.records = _record_count(run.db, mod, run.target)
    _pick_verified(run.db, mod, run.spec, run.epilogue, res, run.target, run.can_verify, run.seed)
    res.wall_s = time.perf_counter() - t0
    if run.display:
        run.display.finish(name, res)
    return res


def _search(run: _LayerRun, mod: tvm.IRModule, algorithm: str, name: str, index: int, remaining: int,
            callback: _Progress) -> None:
    """MetaSchedule's evolutionary search over the candidate's space for ``remaining`` more trials."""
    ctx = ms.TuneContext(
        mod=mod, target=run.target, space_generator=_space(algorithm),
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
    _store_best(schedules_dir, spec, epilogue, results, db_dir=work_dir, target=target)
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


def _pick_verified(db, mod: tvm.IRModule, spec: Conv2dSpec, epilogue: Epilogue, res: CandidateResult,
                   target: Target, can_verify: bool, seed: int) -> None:
    """Set ``res`` from the first of the best records that passes the float64 check."""
    if not db.has_workload(mod):
        return
    workload = db.commit_workload(mod)
    case = None  # the inputs and the model are the same for every record of the candidate
    for record in db.get_top_k(workload, VERIFY_TOP_K):
        t = _median_ms(record)
        if t is None:
            continue
        if can_verify:
            try:
                func = _apply_trace(record)
                case = case or verification_case(func, spec, epilogue, res.algorithm, res.m, target, seed)
                res.max_error = verify_func(func, spec, epilogue, res.algorithm, res.m, target, seed, case)
            except ArithmeticError as err:
                logger.error("%s %s: a measured schedule is numerically wrong, skipped: %s",
                             spec.key(), res.name, err)
                continue
        res.verified = can_verify
        res.median_ms = t
        res._record = record  # type: ignore[attr-defined]  # the record to store
        return


def _store_best(schedules_dir: Path, spec: Conv2dSpec, epilogue: Epilogue,
                results: dict[str, CandidateResult], db_dir: Path, target: Target) -> None:
    """Commit each candidate's verified best record to the schedules database (once)."""
    db = open_database(schedules_dir)
    try:
        for res in results.values():
            record = getattr(res, "_record", None)
            if record is None:
                continue
            mod = record.workload.mod
            workload = db.commit_workload(mod)
            top = db.get_top_k(workload, 1)
            if top and str(top[0].trace) == str(record.trace) and _median_ms(top[0]) == _median_ms(record):
                continue
            db.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target or target, record.args_info))
    finally:
        _close(db)


def apply_best(func: tirx.PrimFunc, target: object, schedules_dir: str | os.PathLike | None = None
               ) -> tirx.PrimFunc | None:
    """The tuned schedule of exactly ``func`` from ``schedules_dir`` (its best record), or ``None``."""
    tgt = resolve_target(target)
    schedules_dir = Path(schedules_dir) if schedules_dir is not None else schedules_dir_for(tgt)
    if not (schedules_dir / "database_workload.json").exists():
        return None
    mod = _as_module(func)
    db = open_database(schedules_dir, readonly=True) if _accepts_readonly() else open_database(schedules_dir)
    try:
        if not db.has_workload(mod):
            return None
        records = db.get_top_k(db.commit_workload(mod), 1)
        if not records:
            return None
        return _apply_trace(records[0]).with_attr("global_symbol", func.attrs.get("global_symbol", "main")
                                                 if func.attrs is not None else "main")
    finally:
        _close(db)


def _accepts_readonly() -> bool:
    import inspect

    return "readonly" in inspect.signature(open_database).parameters


# --------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------

class _Display:
    """A rich progress bar per candidate: trials done of the budget and the best time so far."""

    def __init__(self, spec: Conv2dSpec, names: list[str], trials: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.trials = trials
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), transient=False)
        self.tasks = {name: self.progress.add_task(f"{spec.key()} {name}", total=trials, best="-", start=False)
                      for name in names}
        self.offset: dict[str, int] = {}
        self.progress.start()

    def start(self, name: str, done: int) -> None:
        self.offset[name] = done
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], completed=min(done, self.trials))

    def updater(self, name: str) -> Callable[[int, float | None], None]:
        def update(trials: int, best_ms: float | None) -> None:
            self.progress.update(self.tasks[name], completed=min(self.offset.get(name, 0) + trials, self.trials),
                                 best="-" if best_ms is None else f"{best_ms:.3f} ms")
        return update

    def finish(self, name: str, res: CandidateResult) -> None:
        self.progress.update(self.tasks[name], completed=min(res.records, self.trials),
                             best="-" if res.median_ms is None else f"{res.median_ms:.3f} ms"
                             + ("" if res.verified else " (unverified)"))

    def close(self) -> None:
        self.progress.stop()


def format_results(results: Sequence[LayerTuneResult]) -> str:
    """A markdown table: one row per layer, median ms per candidate, the choice and GFLOP/s."""
    names: list[str] = []
    for r in results:
        for n in r.candidates:
            if n not in names:
                names.append(n)
    head = ["layer"] + [f"{n} ms" for n in names] + ["choice", "eff. GFLOP/s", "trials", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.spec.key()]
        for n in names:
            c = r.candidates.get(n)
            cells.append("-" if c is None or c.median_ms is None else f"{c.median_ms:.3f}")
        if r.choice is None:
            cells += ["none", "-"]
        else:
            cells.append("direct" if r.choice.algorithm == "direct" else f"winograd F({r.choice.m},{r.spec.r})")
            best = r.best_ms
            cells.append("-" if not best else f"{r.spec.flops / (best * 1e6):.0f}")
        cells += [str(r.trials), f"{r.wall_s:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_candidate(mod: tvm.IRModule, target: Target, _params=None) -> tvm.runtime.Module:
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin``.

    That import parses ~500 TVMScript intrinsics, each walking the call stack with ``inspect``: about a
    minute per builder process on a loaded 2-core machine (MetaSchedule restarts its build pool for every
    batch).  Our llvm candidates use no tensor intrinsics.
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target)


def _fast_builder(target: Target) -> ms.builder.Builder:
    builder = make_builder(target)
    if isinstance(builder, ms.builder.LocalBuilder) and getattr(builder, "f_build", "x") is None:
        builder.f_build = build_candidate
    return builder
