"""What whole-model tuning tunes besides the Winograd candidates: the model's other PrimFuncs, exactly as
compilation meets them (:class:`~tvm_winograd.tune.functions.FunctionTask`).

Two kinds:

- ``direct``: our direct-conv PrimFuncs of the layers Winograd cannot run (1x1, stride 2, grouped,
  depthwise, dilated: the others are the layer tuning's candidates) as :func:`~tvm_winograd.export.rewrite_model` leaves them, which
  :func:`~tvm_winograd.module_schedules.apply_database` queries the database with; their default is
  the register-tiled schedule with packed weights.
- ``function``: every PrimFunc the fusion passes (:func:`~tvm_winograd.pipeline.fusion_passes`) leave
  unscheduled (pooling, matmul, elementwise chains, layout transforms, ...), with fast math applied as
  the rules see them (:class:`~tvm_winograd.schedule.llvm.rules.Tuned` queries with that); their
  default is the first llvm rule that applies.

Structurally equal functions are one task, weighted by how often the model calls them.
"""

from __future__ import annotations

import os
from collections import Counter

import tvm
import tvm_ffi
from tvm import relax, tirx

from .contract import is_scheduled, kind_of, our_prim_funcs
from .export import rewrite_model, schedule_model
from .pipeline import fusion_passes
from .schedule.direct import schedule_direct_llvm
from .schedule.llvm import ApplyLlvmRules
from .schedule.llvm.base import num_cores
from .schedule.llvm.fastmath import approximate_math
from .targets import resolve_target
from .tune.functions import FunctionTask
from .tune.records import as_module

__all__ = ["function_tasks"]


def _calls(mod: tvm.IRModule) -> Counter:
    """How many times each GlobalVar is referenced from the Relax functions of ``mod``."""
    counts: Counter = Counter()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func.body, lambda e: counts.update([e.name_hint]) if isinstance(e, tvm.ir.GlobalVar) else None)
    return counts


def _distinct(tasks: list[FunctionTask]) -> list[FunctionTask]:
    """One task per structurally distinct function, its weight the sum of theirs."""
    out: dict[int, list] = {}
    for task in tasks:
        key = tvm_ffi.structural_hash(as_module(task.func))
        for entry in out.setdefault(key, []):
            if tvm_ffi.structural_equal(as_module(entry[0].func), as_module(task.func)):
                entry[1] += task.weight
                break
        else:
            out[key].append([task, task.weight])
    return [FunctionTask(t.name, t.func, t.default, w, t.kind) for entries in out.values() for t, w in entries]


def function_tasks(mod: tvm.IRModule, target: object = "llvm", schedules_dir: str | os.PathLike | None = None,
                   layout: str = "auto") -> list[FunctionTask]:
    """The model's tasks besides the Winograd candidates (see the module docstring), CPU targets only."""
    tgt = resolve_target(target)
    if tgt.kind.name != "llvm":
        raise NotImplementedError(f"whole-model tuning of the other functions on {tgt.kind.name!r}: llvm only")
    rewritten, reports = rewrite_model(mod, tgt, schedules_dir, layout=layout)
    candidates = {r.func for r in reports if r.source != "ineligible"}  # the layer tuning's
    calls = _calls(rewritten)
    tasks = [FunctionTask(name, func, schedule_direct_llvm(func, pack_weight=True, cores=num_cores(tgt)), calls[name],
                          "direct")
             for name, func in our_prim_funcs(rewritten).items()
             if kind_of(func) == "direct" and not is_scheduled(func) and name not in candidates]
    with tgt:
        fused = tvm.transform.Sequential(fusion_passes(tgt))(schedule_model(rewritten, tgt, schedules_dir))
    rules = ApplyLlvmRules(fast_math=False)  # fast math is already in the task's function
    calls = _calls(fused)
    for gv, func in fused.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        seen = approximate_math(func)  # what the rules (and Tuned) see
        default = rules.schedule(gv.name_hint, seen, tgt)
        tasks.append(FunctionTask(gv.name_hint, seen, default if default is not None else seen,
                                  max(calls[gv.name_hint], 1), "function"))
    return _distinct(tasks)
