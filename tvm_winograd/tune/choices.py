"""Per-layer algorithm choices: which algorithm (direct or Winograd F(m, r)) won, by measurement.

``schedules/<target-dir>/choices.json`` maps a workload key (:meth:`Conv2dSpec.key`) to its choice.
The tuner writes it; the Relax pass and ``compile`` read it (a missing file means: no measurements,
use the heuristic).  One JSON object per file, written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def load_choices(directory: str | os.PathLike) -> dict[str, AlgorithmChoice]:
    """Choices in ``directory/choices.json``; {} if absent.  Bad entries are skipped with a warning."""
    path = Path(directory) / CHOICES_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("%s is unreadable (%s): ignoring it, the heuristic decides", path, err)
        return {}
    if not isinstance(raw, dict):
        logger.warning("%s does not hold a JSON object: ignoring it", path)
        return {}
    out = {}
    for key, entry in raw.items():
        try:
            out[key] = AlgorithmChoice(entry["algorithm"], entry.get("m"), dict(entry.get("times_ms", {})))
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("%s: skipping entry %r (%s)", path, key, err)
    return out


def save_choices(directory: str | os.PathLike, choices: dict[str, AlgorithmChoice]) -> Path:
    """Write (merge over) ``directory/choices.json`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merged = {**load_choices(directory), **choices}
    path = directory / CHOICES_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".choices.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({k: asdict(v) for k, v in sorted(merged.items())}, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    return path
