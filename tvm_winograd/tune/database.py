"""Tuning databases (owner: the crash-safety work of issue 7 refines this module).

Everything that reads or writes a MetaSchedule database goes through :func:`open_database`, so the
storage policy (append-only JSON lines, torn-line recovery, locking) lives in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

from tvm.s_tir import meta_schedule as ms

__all__ = ["open_database"]


def open_database(work_dir: str | os.PathLike, module_equality: str = "structural") -> ms.database.Database:
    """The MetaSchedule database stored in ``work_dir`` (created if missing)."""
    path = Path(work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path), module_equality=module_equality)
