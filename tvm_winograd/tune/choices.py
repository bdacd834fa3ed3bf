"""Per-layer algorithm choices: which algorithm (direct or Winograd F(m, r)) won, by measurement.

``schedules/<target-dir>/choices.json`` maps a workload key (:meth:`Conv2dSpec.key`) to its choice.
The tuner writes it; the Relax pass and ``compile`` read it (a missing file means: no measurements,
use the heuristic).  One JSON object per file, merged and written atomically under a lock (two tuning
runs sharing a schedules directory keep each other's entries); an unreadable file or entry is skipped
with a warning, and kept as ``choices.json.corrupt`` before a save replaces it (:mod:`.jsonfile`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .jsonfile import keep_aside, locked, read_object, write_atomic

__all__ = ["AlgorithmChoice", "load_choices", "save_choices", "CHOICES_FILE"]

logger = logging.getLogger(__name__)
CHOICES_FILE = "choices.json"


@dataclass(frozen=True)
class AlgorithmChoice:
    """The measured winner for one workload and the median times (ms) of every candidate."""

    algorithm: str  # "winograd" | "direct"
    m: int | None = None
    times_ms: dict = field(default_factory=dict)  # e.g. {"direct": 1.2, "winograd_m4": 0.7}

    def __post_init__(self) -> None:
        if self.algorithm not in ("winograd", "direct"):
            raise ValueError(f"algorithm {self.algorithm!r} must be 'winograd' or 'direct'")
        if self.algorithm == "winograd" and not isinstance(self.m, int):
            raise ValueError(f"a winograd choice needs an integer tile size m, got {self.m!r}")


def _read(path: Path) -> tuple[dict[str, AlgorithmChoice], bool]:
    """The valid choices in ``path`` and whether everything in it was usable (warnings for the rest)."""
    raw, problem = read_object(path)
    if raw is None:
        logger.warning("%s is unreadable (%s): ignoring it, the heuristic decides", path, problem)
        return {}, False
    out, clean = {}, True
    for key, entry in raw.items():
        try:
            out[key] = AlgorithmChoice(entry["algorithm"], entry.get("m"), dict(entry.get("times_ms", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            logger.warning("%s: skipping entry %r (%s)", path, key, err)
            clean = False
    return out, clean


def load_choices(directory: str | os.PathLike) -> dict[str, AlgorithmChoice]:
    """Choices in ``directory/choices.json``; {} if absent.  An unreadable file or bad entries are
    skipped with a warning naming the file."""
    return _read(Path(directory) / CHOICES_FILE)[0]


def save_choices(directory: str | os.PathLike, choices: dict[str, AlgorithmChoice]) -> Path:
    """Merge ``choices`` over ``directory/choices.json`` and write it atomically, under the file's lock.

    If the file on disk is unreadable or has bad entries, a copy is kept as ``choices.json.corrupt``
    (named in a warning) before it is replaced.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHOICES_FILE
    with locked(path):
        existing, clean = _read(path)
        if not clean:
            logger.warning("%s: kept the unreadable original as %s", path, keep_aside(path))
        merged = {**existing, **choices}
        write_atomic(path, {k: asdict(v) for k, v in sorted(merged.items())})
    return path
