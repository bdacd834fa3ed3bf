"""Tuning records: the module a PrimFunc is tuned as, counting and timing records, replaying a trace, storing
each candidate's verified best into the schedules database and applying it at compile time."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..compute import Epilogue
from ..targets import resolve_target
from ..workload import Conv2dSpec
from .database import measured_count, open_database
from .paths import schedules_dir as schedules_dir_for
from .results import CandidateResult

__all__ = ["as_module", "record_count", "median_ms", "apply_trace", "store_best", "apply_best"]


def as_module(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module MetaSchedule tunes for a PrimFunc (``global_symbol`` ``main``)."""
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def record_count(db, mod: tvm.IRModule, target: Target) -> int:
    """Measured records of ``mod`` for ``target`` (failures included):
    :func:`~tvm_winograd.tune.database.measured_count`."""
    return measured_count(db, mod, target)


def apply_trace(record: ms.database.TuningRecord) -> tirx.PrimFunc:
    sch = s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"]


def median_ms(record: ms.database.TuningRecord) -> float | None:
    secs = record.run_secs
    if secs is None or len(secs) == 0:
        return None
    vals = [float(s) for s in secs]
    if any(v >= 1e9 for v in vals):
        return None
    return statistics.median(vals) * 1e3


def store_best(schedules_dir: Path, spec: Conv2dSpec, epilogue: Epilogue,
                results: dict[str, CandidateResult], db_dir: Path, target: Target) -> None:
    """Commit each candidate's verified best record to the schedules database (once)."""
    db = open_database(schedules_dir)
    try:
        for res in results.values():
            record = res.record
            if record is None:
                continue
            mod = record.workload.mod
            workload = db.commit_workload(mod)
            top = db.get_top_k(workload, 1)
            if top and str(top[0].trace) == str(record.trace) and median_ms(top[0]) == median_ms(record):
                continue
            db.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target or target, record.args_info))
    finally:
        db.close()


def apply_best(func: tirx.PrimFunc, target: object, schedules_dir: str | os.PathLike | None = None
               ) -> tirx.PrimFunc | None:
    """The tuned schedule of exactly ``func`` from ``schedules_dir`` (its best record), or ``None``."""
    tgt = resolve_target(target)
    schedules_dir = Path(schedules_dir) if schedules_dir is not None else schedules_dir_for(tgt)
    if not (schedules_dir / "database_workload.json").exists():
        return None
    mod = as_module(func)
    db = open_database(schedules_dir, readonly=True)
    try:
        if not db.has_workload(mod):
            return None
        records = db.get_top_k(db.commit_workload(mod), 1)
        if not records:
            return None
        return apply_trace(records[0]).with_attr("global_symbol", func.attrs.get("global_symbol", "main")
                                                 if func.attrs is not None else "main")
    finally:
        db.close()
