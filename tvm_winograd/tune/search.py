"""How one candidate is searched: the evolutionary search sized for small budgets, the design space of
each algorithm, the measure callback counting trials and the best time so far, and
:func:`skip_measured`, the strategy wrapper that never measures a schedule already in the tuning
database (resuming)."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

from ..schedule import register_rules
from .database import workload_records

__all__ = ["make_strategy", "space_for", "SearchProgress", "trials_to_90", "skip_measured"]

logger = logging.getLogger(__name__)


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


def space_for(algorithm: str, target_kind: str = "llvm") -> ms.space_generator.SpaceGenerator:
    """The design space of a candidate: our rules for ``"winograd"`` (registered here, for
    ``target_kind``), MetaSchedule's generic llvm space otherwise."""
    if algorithm == "winograd":
        register_rules(target_kind)
        # Our rules schedule every block (and inline the constant matrices): no generic rule on top.
        return ms.space_generator.PostOrderApply(sch_rules=[ms.schedule_rule.ApplyCustomRule()])
    # MetaSchedule's default llvm rules and postprocs, without RewriteLayout: it pre-transforms the
    # weight (topi marks it layout-free), which a PrimFunc taking plain weights cannot use, and its
    # IndexMap in the trace is not serializable by our database.
    postprocs = [p for p in ms.Postproc.create("llvm") if "RewriteLayout" not in type(p).__name__]
    return ms.space_generator.PostOrderApply(postprocs=postprocs)


@derived_object
class SearchProgress(ms.measure_callback.PyMeasureCallback):
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


def trials_to_90(history: Sequence[float | None]) -> int | None:
    final = next((h for h in reversed(history) if h is not None), None)
    if final is None:
        return None
    for i, h in enumerate(history):
        if h is not None and h <= final / 0.9:
            return i + 1
    return None


def _scheduled_module(record: TuningRecord) -> tvm.IRModule | None:
    try:
        return record.as_measure_candidate().sch.mod
    except Exception:  # noqa: BLE001 - a trace that no longer applies is simply not known as measured
        return None


@derived_object
class _SkipMeasuredSearch(PySearchStrategy):
    """Wraps a search strategy; drops candidates whose scheduled module is already measured in the database.

    MetaSchedule 0.27's evolutionary search remembers only what it measured in the current session (its
    ``measured_workloads_`` is not seeded from the database: a TODO in evolutionary_search.cc), and seeds
    its population with the database's best records, so a resumed search measures some old schedules
    again.  Dropped candidates are not reported to the inner strategy, so its trial count only advances
    with new measurements.

    The wrapper also keeps the budget itself: it never hands out more than ``max_trials`` candidates per
    ``pre_tuning``.  The inner count alone does not: when the evolutionary search's batch reaches past the
    budget it shrinks it to the remainder *and* moves its batch end to the budget (``ed = max_trials`` in
    ``GenerateMeasureCandidates``), so after a shrunken batch that was dropped whole, asking again gets a
    full ``num_trials_per_iter`` batch (measured once in CI: 11 trials for a budget of 8, a batch of 4
    after 7).
    """

    def __init__(self, inner: ms.search_strategy.SearchStrategy, max_empty_rounds: int) -> None:
        super().__init__()
        self.inner = inner
        self.max_empty_rounds = max_empty_rounds
        self.context = None
        self.known: dict[int, list[tvm.IRModule]] = {}
        self.skipped = 0
        self.budget: int | None = None  # max_trials of the current pre_tuning
        self.sent = 0  # candidates handed out since pre_tuning

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)  # noqa: SLF001

    def _is_known(self, mod: tvm.IRModule, add: bool) -> bool:
        key = tvm_ffi.structural_hash(mod)
        bucket = self.known.setdefault(key, [])
        if any(tvm_ffi.structural_equal(mod, other) for other in bucket):
            return True
        if add:
            bucket.append(mod)
        return False

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.known = {}
        if database is not None and self.context is not None and self.context.mod is not None:
            for record in workload_records(database, self.context.mod):
                mod = _scheduled_module(record)
                if mod is not None:
                    self._is_known(mod, add=True)
        self.budget, self.sent = int(max_trials), 0
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        left = None if self.budget is None else self.budget - self.sent
        if left is not None and left <= 0:
            return None
        for _ in range(self.max_empty_rounds):
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = [c for c in candidates if not self._is_known(c.sch.mod, add=True)]
            self.skipped += len(candidates) - len(fresh)
            if len(fresh) < len(candidates):
                logger.info("skipped %d candidate(s) already measured in the database",
                            len(candidates) - len(fresh))
            if fresh or not candidates:
                fresh = fresh if left is None else fresh[:left]
                self.sent += len(fresh)
                return fresh
            self.inner.notify_runner_results([], [])
        logger.info("search stopped: %d rounds in a row proposed only measured candidates", self.max_empty_rounds)
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return _SkipMeasuredSearch(self.inner.clone(), self.max_empty_rounds)


def skip_measured(strategy: ms.search_strategy.SearchStrategy,
                  max_empty_rounds: int = 5) -> ms.search_strategy.SearchStrategy:
    """``strategy`` that never sends a schedule already measured in the tuning database for measurement.

    Use it for resumable tuning: ``ms.tune_tir(..., database=db, strategy=skip_measured(strategy))``
    with ``max_trials_global = trials - measured_count(db, mod, target)``.  Known schedules are those of
    the database's records for the task's workload (failed measurements included), compared as scheduled
    modules (structural equality); a search that proposes only known schedules ``max_empty_rounds``
    times in a row stops.
    """
    if max_empty_rounds < 1:
        raise ValueError(f"max_empty_rounds must be >= 1, got {max_empty_rounds}")
    return _SkipMeasuredSearch(strategy, max_empty_rounds)
