"""Tune a whole model: every distinct eligible conv layer (with its fused epilogue), one at a time.

The layers are the ones the Relax pass would rewrite (same eligibility, same epilogue fusion), so the
tuned PrimFuncs are structurally the ones compilation later looks up in the database.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tvm

from ..compute import Epilogue
from ..targets import resolve_target, target_dirname
from ..workload import Conv2dSpec

__all__ = ["model_workloads", "tune_model", "default_dirs"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_dirs(target, log_dir: str | os.PathLike | None, schedules_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """``(tuning_logs/<target>, schedules/<target>)``, each under the given root or the working directory."""
    name = target_dirname(target)
    logs = Path(log_dir) if log_dir else Path("tuning_logs")
    sched = Path(schedules_dir) if schedules_dir else Path("schedules")
    return (logs if logs.name == name else logs / name), (sched if sched.name == name else sched / name)


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
    ``choices.json`` to ``<schedules_dir>/<target>/``; re-running resumes.
    """
    from .measure import make_runner
    from .tuner import tune_layer

    tgt = resolve_target(target)
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("--rpc-tracker and --rpc-key go together")
    runner = make_runner(tgt, rpc_tracker, rpc_key)
    logs, sched = default_dirs(tgt, log_dir, schedules_dir)
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
