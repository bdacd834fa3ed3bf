"""``gpu-import``: a GPU pack's report (``run.py`` on a GPU host) into tuning records and algorithm choices.

An offline tuning round: ``gpu-pack`` builds here, ``run.py`` measures there, this brings the times back.
For every layer of the report:

* each Winograd kernel whose output passed the pack's check on the GPU and that was timed becomes a
  MetaSchedule tuning record of the function ``compile`` builds for that layer (the trace replayed on
  :func:`~tvm_winograd.tune.candidates.candidate_func` for the pack's target, the GPU's run times): all of
  them go to the tuning log (``tuning_logs/<target>``), the fastest per function to the schedules
  directory (``schedules/<target>``), which ``compile`` applies;
* the fastest checked time of each candidate (``direct`` -- our direct PrimFunc under DLight, which
  has no trace -- and ``winograd_m<m>``) decides the layer's algorithm in ``choices.json``; where a
  layer appears with several epilogues (ResNet's conv + bias + ReLU and conv + bias + residual + ReLU)
  their times are added.

Kernels whose check failed, was not run, or that have no time are skipped and counted.  What was
imported from which GPU is appended to ``gpu_imports.json`` in the schedules directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..compute import Epilogue
from ..workload import spec_from_dict
from .candidates import candidate_func, choose_by_times
from .choices import save_choices
from .database import open_database, trace_from_json
from .jsonfile import locked, read_object, write_atomic
from .paths import schedules_dir as schedules_dir_for
from .paths import tuning_logs_dir
from .records import as_module

__all__ = ["ImportResult", "import_report", "format_import", "REPORT_FORMAT", "IMPORTS_FILE"]

logger = logging.getLogger(__name__)

REPORT_FORMAT = "tvm-winograd-gpu-report"
IMPORTS_FILE = "gpu_imports.json"


@dataclass
class ImportResult:
    """What one import wrote."""

    gpu: str
    target: str
    schedules_dir: str
    log_dir: str
    records: int = 0  # tuning records written to the log
    best: int = 0  # records written to the schedules directory
    skipped: dict = field(default_factory=dict)  # reason -> kernels
    choices: dict = field(default_factory=dict)  # layer key -> AlgorithmChoice


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"report {str(path)!r} cannot be read: {err}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ValueError(f"report {str(path)!r} is not a GPU pack report ({REPORT_FORMAT})")
    return report


def _usable(kernel: dict) -> str | None:
    """Why ``kernel`` cannot be imported, or ``None``."""
    if kernel.get("numerics", {}).get("ok") is not True:
        return "check failed or not run"
    if kernel.get("median_ms") is None or not kernel.get("times_ms"):
        return "no time"
    return None


def import_report(report_path: str | os.PathLike, schedules_dir: str | os.PathLike | None = None,
                  log_dir: str | os.PathLike | None = None) -> ImportResult:
    """Import ``report_path`` (see the module docstring); raises ``ValueError`` for a file that is not a report."""
    report = _read_report(Path(report_path))
    target = Target(report["pack"]["target"])
    sdir, ldir = schedules_dir_for(target, schedules_dir), tuning_logs_dir(target, log_dir)
    gpu = str(report.get("gpu", {}).get("name", "unknown GPU"))
    result = ImportResult(gpu, str(target), str(sdir), str(ldir))
    times: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    log, best_db = open_database(ldir), open_database(sdir)
    try:
        for layer in report["layers"]:
            spec, epilogue = spec_from_dict(layer["spec"]), Epilogue(**layer["epilogue"])
            best: dict[str, tuple[float, ms.database.TuningRecord | None]] = {}
            for kernel in layer["kernels"]:
                why = _usable(kernel)
                if why is not None:
                    result.skipped[why] = result.skipped.get(why, 0) + 1
                    continue
                name = "direct" if kernel["algorithm"] == "direct" else f"winograd_m{kernel['m']}"
                record = None
                if kernel.get("trace") is not None:
                    func = candidate_func(spec, name, epilogue, "cuda")
                    mod = as_module(func)
                    record = ms.database.TuningRecord(
                        trace_from_json(kernel["trace"], mod), log.commit_workload(mod),
                        [t / 1e3 for t in kernel["times_ms"]], target, ms.arg_info.ArgInfo.from_prim_func(func))
                    log.commit_tuning_record(record)
                    result.records += 1
                if name not in best or kernel["median_ms"] < best[name][0]:
                    best[name] = (kernel["median_ms"], record)
            for name, (ms_, record) in best.items():
                times[spec.key()][name] += ms_
                counted[spec.key()][name] += 1
                if record is not None:
                    best_db.commit_tuning_record(ms.database.TuningRecord(
                        record.trace, best_db.commit_workload(record.workload.mod), record.run_secs, target,
                        record.args_info))
                    result.best += 1
    finally:
        log.close()
        best_db.close()
    layers_seen = defaultdict(int)
    for layer in report["layers"]:
        layers_seen[spec_from_dict(layer["spec"]).key()] += 1
    for key, by_name in times.items():
        # a candidate timed for only some of the key's epilogues cannot be compared on the sum
        complete = {n: t for n, t in by_name.items() if counted[key][n] == layers_seen[key]}
        if complete:
            result.choices[key] = choose_by_times(complete)
    if result.choices:
        save_choices(sdir, result.choices)
    _note_import(sdir, report, result)
    return result


def _note_import(sdir: Path, report: dict, result: ImportResult) -> None:
    """Append what was imported, from which GPU, to ``gpu_imports.json`` (provenance of the records)."""
    path = Path(sdir) / IMPORTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        existing, _problem = read_object(path)
        entries = list((existing or {}).get("imports", []))
        entries.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": report.get("gpu", {}),
                        "pack": report.get("pack", {}).get("arch"), "records": result.records, "best": result.best,
                        "choices": {k: c.algorithm if c.m is None else f"{c.algorithm} m={c.m}"
                                    for k, c in result.choices.items()},
                        "skipped": result.skipped})
        write_atomic(path, {"imports": entries})


def format_import(result: ImportResult) -> str:
    lines = [f"imported from {result.gpu} for {result.target}: {result.records} tuning records "
             f"({result.best} best per function) into {result.log_dir} and {result.schedules_dir}"]
    for key, choice in sorted(result.choices.items()):
        shown = ", ".join(f"{n}={t:.3f}" for n, t in sorted(choice.times_ms.items()) if t is not None)
        lines.append(f"  {key}: {choice.algorithm}{'' if choice.m is None else f' m={choice.m}'} ({shown} ms)")
    if result.skipped:
        lines.append("skipped: " + ", ".join(f"{n} kernels ({why})" for why, n in sorted(result.skipped.items())))
    return "\n".join(lines)

