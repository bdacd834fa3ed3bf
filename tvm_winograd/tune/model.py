"""Tune a whole model: every distinct eligible conv layer (with its fused epilogue), one at a time.

The layers are the ones the Relax pass would rewrite (same eligibility, same epilogue fusion), so the
tuned PrimFuncs are structurally the ones compilation later looks up in the database.
"""

from __future__ import annotations

import logging
import os

import tvm

from ..compute import Epilogue
from ..targets import resolve_target
from ..workload import Conv2dSpec
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir

__all__ = ["model_workloads", "tune_model"]

logger = logging.getLogger(__name__)

def model_workloads(mod: tvm.IRModule, target: object = "llvm",
                    layout: str = "auto") -> list[tuple[Conv2dSpec, Epilogue, list[str]]]:
    """Distinct ``(spec, epilogue, layer names)`` of the Winograd-eligible convolutions of ``mod``,
    in the conv layout compilation uses (``layout``: see ``relax_pass.convert_conv_layout``)."""
    from ..relax_pass import conv_workloads, convert_conv_layout

    found: dict[tuple, tuple[Conv2dSpec, Epilogue, list[str]]] = {}
    for work in conv_workloads(convert_conv_layout(mod, target, layout), target, algo="winograd"):
        entry = found.setdefault((work.spec, work.epilogue), (work.spec, work.epilogue, []))
        entry[2].append(work.report.name)
    return list(found.values())


def tune_model(
    mod: tvm.IRModule,
    target,
    *,
    trials: int = 64,
    log_dir: str | os.PathLike | None = None,
    schedules_dir: str | os.PathLike | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
    layout: str = "auto",
) -> list[dict]:
    """Tune direct and Winograd candidates for every distinct eligible layer; keep the fastest.

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
    workloads = model_workloads(mod, tgt, layout)
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
