"""The timing protocol every benchmark of this project uses, and its self-checks.

Competitors are zero-argument callables (one inference on fixed inputs).  They are timed in
**alternating blocks**: after a warm-up, each round runs every competitor once as a block of calls
lasting about ``block_s``; each block is preceded by an idle gap and one untimed call.  A competitor's
figure is the median over rounds of its per-call block time; a ratio between two competitors is the
median over rounds of their per-round ratios (:func:`paired_ratio`).  The gap matters on a small machine:
thread pools keep spinning after a call (PyTorch's OpenMP workers, onnxruntime's and TVM's pools), and
on 2 cores the spinning threads of one competitor steal the cores of the next.

Some competitors have several configurations of which the faster one is reported (onnxruntime with
its thread pool spinning and not): they share a ``group`` and :func:`best_of_groups` keeps the faster.

What made this project's earlier tables wrong (measured 2026-12-01, VGG conv3_2, 2 threads): once
TVM's default thread pool exists (``TVM_NUM_THREADS`` unset, one worker on this 1-thread-per-core
machine), the calling thread is pinned to CPU 0 and every thread created afterwards inherits that
mask: onnxruntime then ran conv3_2 in 24.0 ms instead of 9.4 ms and PyTorch in 32.0 instead of 11.1,
while our single-threaded TVM code did not notice.  A second process busy on one core does the same
to every 2-thread peer (their barriers wait for the descheduled thread) and almost nothing to a
1-thread competitor.  Both are what :class:`LoadMonitor` and the affinity check now catch.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

__all__ = [
    "BLOCK_GAP_S", "Competitor", "Timing", "time_alternating", "best_of_groups", "paired_ratio", "LoadMonitor",
    "Reliability", "PEER_PEAK_FRACTION", "CLI_AGREEMENT", "OTHER_LOAD_LIMIT", "configurations_markdown",
    "report_head",
]

#: Idle time before every timed block (thread pools stop spinning; see the module docstring).
BLOCK_GAP_S = 0.25

#: Calls shorter than this get one untimed call after the gap (a longer call's own start-up cost is noise).
WAKE_UP_BELOW_S = 1.0

#: A run is unreliable when the best peer runs VGG conv3_2 below this fraction of the probed FMA peak
#: (onnxruntime's MLAS runs large 3x3 convolutions at ~100 % of it on an idle machine).
PEER_PEAK_FRACTION = 0.6
#: ... and when it runs above this fraction of it: the probe itself under-measured the peak (seen once:
#: 117 GFLOP/s probed on 2 threads of a Zen 4 whose 2-thread peak is 234, onnxruntime at 208).
PEER_PEAK_MAX = 1.1

#: A run is unreliable when our in-harness time and ``tvm-winograd run``'s differ by more than this factor.
CLI_AGREEMENT = 1.3

#: A run is unreliable when other processes (and the hypervisor's steal) used more than this many
#: cores on average while the blocks were timed.
OTHER_LOAD_LIMIT = 0.15


@dataclass
class Competitor:
    """One contestant: ``run()`` does one inference on fixed inputs.

    ``group`` names the competitor it is a configuration of (``"onnxruntime"`` for its spinning and
    non-spinning sessions); ``config`` says how it was set up, for the report.
    """

    name: str
    run: Callable[[], object]
    config: str = ""
    group: str | None = None
    output: Callable[[], object] | None = None  # its (first) output as numpy, for correctness checks


@dataclass
class Timing:
    """What was measured for one competitor: per-call ms of each round's block, and their median."""

    name: str
    samples_ms: list[float]
    calls_per_block: int
    config: str = ""
    group: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)


def time_alternating(competitors: list[Competitor], rounds: int, *, warmup: int = 2, block_s: float = 0.05,
                     gap_s: float = BLOCK_GAP_S, clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, Timing]:
    """Time ``competitors`` in alternating blocks (A B C A B C ...): ``rounds`` blocks each.

    Parameters
    ----------
    competitors
        Distinct names; each ``run`` must be repeatable.
    rounds
        Blocks per competitor; the reported figure is the median of their per-call times.
    warmup
        Untimed calls per competitor before the first round (the first of them also sizes the block).
    block_s
        Target length of a block: ``ceil(block_s / t_call)`` calls, at least one.
    gap_s
        Idle time before each block.
    clock, sleep
        Injected in tests (a fake clock asserts exactly what is measured).
    """
    if rounds < 1:
        raise ValueError(f"rounds {rounds} must be at least 1")
    names = [c.name for c in competitors]
    if len(set(names)) != len(names):
        raise ValueError(f"competitor names {names} are not distinct")
    calls: dict[str, int] = {}
    wake: dict[str, bool] = {}
    for comp in competitors:
        for _ in range(max(warmup - 1, 0)):
            comp.run()
        start = clock()
        comp.run()
        once = max(clock() - start, 1e-9)
        calls[comp.name] = max(1, math.ceil(block_s / once))
        wake[comp.name] = once < WAKE_UP_BELOW_S
    samples: dict[str, list[float]] = {c.name: [] for c in competitors}
    for _ in range(rounds):
        for comp in competitors:
            sleep(gap_s)
            if wake[comp.name]:
                comp.run()  # wakes the thread pool after the gap (untimed)
            n = calls[comp.name]
            start = clock()
            for _ in range(n):
                comp.run()
            samples[comp.name].append((clock() - start) / n * 1e3)
    return {c.name: Timing(c.name, samples[c.name], calls[c.name], c.config, c.group) for c in competitors}


def best_of_groups(timings: Mapping[str, Timing]) -> dict[str, Timing]:
    """One entry per group (the faster configuration, its ``config`` saying which) and per ungrouped name."""
    out: dict[str, Timing] = {}
    for t in timings.values():
        key = t.group or t.name
        if key not in out or t.median_ms < out[key].median_ms:
            out[key] = t
    return out


def paired_ratio(peer: Timing, ours: Timing) -> float:
    """How many times faster ``ours`` ran than ``peer``: the median over rounds of the peer's block time
    over ours in the same round (the blocks of one round run within a second or two of each other).

    The shared VM's speed drifts by up to 30 % within a minute, so the two medians can come from
    different phases of the drift; the per-round ratios cancel it. Measured on an Intel Ice Lake
    (ResNeXt50, 15 rounds): our blocks took 40-63 ms; against OpenVINO the ratio of the medians was
    0.82x and the paired one 0.99x, the latter what one process alternating the two libraries gives
    (0.97-1.02x). Timings of unequal length (not from one alternating run) fall back to the medians.
    """
    if len(peer.samples_ms) != len(ours.samples_ms) or not ours.samples_ms:
        return peer.median_ms / ours.median_ms
    return statistics.median(p / o for p, o in zip(peer.samples_ms, ours.samples_ms))


class LoadMonitor:
    """CPU used by everything but this process (other processes, the hypervisor's steal) while it runs.

    ``with LoadMonitor() as load: ...`` then ``load.other_cores``: the average number of cores others
    used.  Reads ``/proc/stat`` and this process's CPU times through psutil.
    """

    def __init__(self) -> None:
        self.other_cores = 0.0
        self.seconds = 0.0

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _own() -> float:
        import psutil

        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> "LoadMonitor":
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        others = (self._busy() - self._busy0) - (self._own() - self._own0)
        self.other_cores = max(others, 0.0) / max(self.seconds, 1e-9)


@dataclass
class Reliability:
    """The self-checks of one report; ``reliable`` is False when any of them failed."""

    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        return not self.problems

    def check_affinity(self) -> None:
        """Every CPU the process was started with is still allowed (TVM's default pool narrows it)."""
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        online = os.cpu_count() or len(allowed)
        self.facts.append(f"CPUs allowed {allowed} of {online}")
        if allowed and len(allowed) < min(online, _STARTED_WITH):
            self.problems.append(f"the process's CPU affinity shrank to {allowed} (was {_STARTED_WITH} CPUs): "
                                 "threads created now share fewer cores")

    def check_peer(self, peer_gflops: float, peak_gflops: float, what: str) -> None:
        frac = peer_gflops / peak_gflops
        self.facts.append(f"{what}: {peer_gflops:.0f} GFLOP/s = {frac:.0%} of the probed FMA peak {peak_gflops:.0f}")
        if frac < PEER_PEAK_FRACTION:
            self.problems.append(f"{what} at {frac:.0%} of the FMA peak (< {PEER_PEAK_FRACTION:.0%}): "
                                 "the peers are not running at their real speed")
        elif frac > PEER_PEAK_MAX:
            self.problems.append(f"{what} at {frac:.0%} of the probed FMA peak (> {PEER_PEAK_MAX:.0%}): "
                                 "the probe under-measured the peak, so every % of peak or limit is wrong")

    def check_load(self, load: LoadMonitor) -> None:
        self.facts.append(f"other load while timing: {load.other_cores:.2f} cores over {load.seconds:.0f} s")
        if load.other_cores > OTHER_LOAD_LIMIT:
            self.problems.append(f"other processes or steal used {load.other_cores:.2f} cores while timing "
                                 f"(> {OTHER_LOAD_LIMIT})")

    def check_cli(self, name: str, harness_ms: float, cli_ms: float) -> None:
        ratio = max(harness_ms, cli_ms) / min(harness_ms, cli_ms)
        self.facts.append(f"{name}: in-harness {harness_ms:.2f} ms, `tvm-winograd run` {cli_ms:.2f} ms")
        if ratio > CLI_AGREEMENT:
            self.problems.append(f"{name}: in-harness {harness_ms:.2f} ms and `tvm-winograd run` {cli_ms:.2f} ms "
                                 f"differ by {ratio:.2f}x (> {CLI_AGREEMENT})")

    def markdown(self) -> str:
        head = "**Reliable run**" if self.reliable else "**UNRELIABLE RUN**: " + "; ".join(self.problems)
        return head + "\n\n" + "\n".join(f"- {f}" for f in self.facts)


def report_head(meta: dict, settings: str) -> list[str]:
    """The lines every report starts with: the machine probe, the self-checks, then ``settings`` (what
    was compared, one sentence), the timing protocol and the command."""
    isolated = " (each in its own process)" if meta["isolate"] else ""
    return [meta["probe_md"], "", meta["reliability_md"], "",
            f"Threads {meta['threads']} for every competitor; {settings}; medians of {meta['rounds']} alternating "
            f"blocks{isolated}; ratios are the medians of the per-round ratios. Command: `{meta['command']}`", ""]


def configurations_markdown(rows: list[dict]) -> str:
    """One line naming each competitor's configuration(s) over the report's rows (a row's ``configs``
    maps competitor -> the configuration that was reported, e.g. onnxruntime's faster spinning mode)."""
    seen: dict[str, dict[str, int]] = {}
    for row in rows:
        for comp, config in row["configs"].items():
            seen.setdefault(comp, {}).setdefault(config, 0)
            seen[comp][config] += 1
    parts = []
    for comp, configs in sorted(seen.items()):
        if len(configs) == 1:
            parts.append(f"{comp}: {next(iter(configs))}")
        else:
            parts.append(f"{comp}: " + " / ".join(f"{c} ({n} rows)" for c, n in configs.items()))
    return "Configurations (the faster one where several were measured): " + "; ".join(parts)


#: The affinity this process started with (before anything could narrow it).
_STARTED_WITH = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
