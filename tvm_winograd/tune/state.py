"""``search_state.json``: the search budgets already finished per candidate workload (resuming)."""

from __future__ import annotations

import logging
from pathlib import Path

import tvm
import tvm_ffi

from ..compute import Epilogue
from ..workload import Conv2dSpec
from .jsonfile import keep_aside, read_object, write_atomic

__all__ = ["SEARCH_STATE_FILE", "load_state", "save_state", "state_key"]

logger = logging.getLogger(__name__)

SEARCH_STATE_FILE = "search_state.json"


def load_state(work_dir: Path) -> tuple[dict, bool]:
    """``search_state.json``: finished search budgets by :func:`state_key`, and whether the file held
    something unusable.  An unreadable file or entry is skipped with a warning (the measurements
    themselves are in the tuning log, so nothing is re-measured; at worst a search that had stopped
    early is tried again); :func:`save_state` keeps the file as ``search_state.json.corrupt`` when it
    replaces it (as ``save_choices`` does for ``choices.json``), so a run that saves nothing copies
    nothing."""
    path = work_dir / SEARCH_STATE_FILE
    raw, problem = read_object(path)
    if raw is None:
        logger.warning("%s is unreadable (%s): ignoring it (kept as a .corrupt copy when it is replaced)",
                       path, problem)
        return {}, True
    state, clean = {}, True
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            state[key] = value
        else:
            logger.warning("%s: skipping entry %r (budget %r is not a count)", path, key, value)
            clean = False
    return state, not clean


def save_state(work_dir: Path, state: dict, keep_original: bool = False) -> None:
    """Write ``search_state.json``; ``keep_original``: first keep the unusable file on disk aside."""
    path = work_dir / SEARCH_STATE_FILE
    if keep_original and path.exists():
        logger.warning("%s: kept the unreadable original as %s", path, keep_aside(path))
    write_atomic(path, state)


def state_key(spec: Conv2dSpec, epilogue: Epilogue, name: str, mod: tvm.IRModule) -> str:
    # The workload's structural hash: a changed compute (e.g. another kernel_pack layout) of the same
    # layer is a new search, not a finished one.
    return f"{spec.key()}|{epilogue.tag()}|{name}|{tvm_ffi.structural_hash(mod) & 0xFFFFFFFF:08x}"
