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
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir

__all__ = ["tune_model"]

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
