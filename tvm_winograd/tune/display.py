"""Showing tuning: a live progress bar per candidate and the per-layer results table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..workload import Conv2dSpec
from .results import CandidateResult, LayerTuneResult

__all__ = ["Display", "format_results"]


class Display:
    """A rich progress bar per candidate: trials done of the budget and the best time so far."""

    def __init__(self, spec: Conv2dSpec, names: list[str], trials: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

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
