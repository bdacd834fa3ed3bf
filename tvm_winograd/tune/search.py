"""How one candidate is searched: the evolutionary search sized for small budgets, the design space of
each algorithm, and the measure callback counting trials and the best time so far."""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

__all__ = ["make_strategy", "space_for", "SearchProgress", "trials_to_90"]


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


def space_for(algorithm: str) -> ms.space_generator.SpaceGenerator:
    if algorithm == "winograd":
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
