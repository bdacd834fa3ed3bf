"""Where tuning results live: the one resolver used by ``tune``, ``compile``, ``layers``, ``bench`` and the API.

The tune step writes, and the compile step reads, two directories per target (``<target>`` is
:func:`~tvm_winograd.targets.target_dirname`), by default under the **working directory**, as a TVM
user expects of ``tvmc tune --output`` / ``tvmc compile --tuning-records``:

- ``tuning_logs/<target>/``: every measurement (MetaSchedule JSON database, resumable);
- ``schedules/<target>/``: the best record per workload and ``choices.json`` (the per-layer algorithm):
  what ``compile`` applies.

A directory given explicitly (``--schedules DIR``, ``--log-dir DIR``, ``schedules_dir=``) may be the
per-target directory itself or its parent.  Both commands print the directory they use.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..targets import target_dirname

__all__ = ["SCHEDULES", "TUNING_LOGS", "schedules_dir", "tuning_logs_dir"]

#: Default roots, relative to the working directory.
SCHEDULES = "schedules"
TUNING_LOGS = "tuning_logs"

#: Files that mark a per-target directory (so a directory given with another name is taken as is).
_MARKERS = ("choices.json", "database_workload.json", "database_tuning_record.json")


def _per_target(root: Path, name: str) -> Path:
    if root.name == name or any((root / marker).is_file() for marker in _MARKERS):
        return root
    return root / name


def schedules_dir(target, given: str | os.PathLike | None = None) -> Path:
    """The per-target schedules directory for ``target``: under ``given`` or ``./schedules``.

    The directory need not exist (then there are no tuning records: compilation is untuned).
    """
    return _per_target(Path(given) if given is not None else Path.cwd() / SCHEDULES, target_dirname(target))


def tuning_logs_dir(target, given: str | os.PathLike | None = None) -> Path:
    """The per-target tuning-log directory for ``target``: under ``given`` or ``./tuning_logs``."""
    return _per_target(Path(given) if given is not None else Path.cwd() / TUNING_LOGS, target_dirname(target))
