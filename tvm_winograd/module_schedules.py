"""Steps 3-4 of :func:`tvm_winograd.export.compile_model`: schedule the PrimFuncs of a Relax module.

:func:`apply_database` applies the tuned records of a schedules directory (MetaSchedule database, read
only); :func:`default_schedules` gives every still-unscheduled PrimFunc of ours a fixed schedule
(``schedule_llvm_default`` for Winograd on llvm, ``schedule_direct_llvm`` with packed weights for our
direct PrimFunc on llvm, ``schedule_cuda_default`` on CUDA), swaps the epilogues' exp/tanh for polynomials on llvm
and marks all of ours opaque for FuseOps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tvm
from tvm import relax, tirx

from .contract import is_scheduled, kind_of, mark_scheduled, our_prim_funcs
from .schedule.default import schedule_llvm_default
from .schedule.direct import schedule_direct_llvm
from .schedule.llvm.base import num_cores
from .schedule.llvm.fastmath import approximate_math
from .targets import is_cuda

__all__ = ["apply_database", "default_schedules"]

logger = logging.getLogger(__name__)

#: ``op_pattern`` kOpaque: FuseOps must not merge our (scheduled) PrimFuncs into others.
_OPAQUE = 8


def default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Give each still-unscheduled PrimFunc of ours a fixed schedule; mark all of ours opaque."""
    cuda_default = None
    if is_cuda(target):
        from .schedule.cuda import schedule_cuda_default as cuda_default
    for name, func in our_prim_funcs(mod).items():
        kind = kind_of(func)
        scheduled = is_scheduled(func)
        new = func
        if not scheduled:
            try:
                if cuda_default is not None:
                    new = cuda_default(func, target)
                elif kind in ("winograd", "weight_transform"):
                    new = schedule_llvm_default(func)
                elif kind == "direct":
                    new = schedule_direct_llvm(func, pack_weight=True,  # hoisted in prepare_model
                                               cores=num_cores(target))
            except Exception as err:  # a schedule failure must not break compilation: stay correct
                logger.warning("default schedule of %s failed (%s): left unscheduled", name, err)
                new = func
            if new is not func:
                new = mark_scheduled(new, by=kind)
        if not is_cuda(target):  # an epilogue's sigmoid/tanh: vectorizable polynomials, not libm per lane
            new = approximate_math(new)
        if new.attrs is not None and "global_symbol" in new.attrs:
            new = new.without_attr("global_symbol")
        new = new.with_attr("op_pattern", _OPAQUE)
        mod[name] = new
    return mod


def apply_database(mod: tvm.IRModule, target: tvm.target.Target, sdir: Path) -> tvm.IRModule:
    """``mod`` with the best records of the database in ``sdir`` applied (marked ``tuned``); as is without one."""
    if not (sdir / "database_tuning_record.json").is_file():
        return mod
    from .tune.database import open_database

    database = open_database(sdir, readonly=True)  # a reader must not take the tuning run's lock
    before = {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and is_scheduled(f)}
    with target, database:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    tuned = [gv for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and is_scheduled(f) and gv.name_hint not in before]
    for gv in tuned:  # the compile report says "tuned" for these
        mod[gv] = mark_scheduled(mod[gv], by="tuned")
    logger.info("applied tuned schedules from %s to %d functions", sdir, len(tuned))
    return mod
