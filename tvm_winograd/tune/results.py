"""What tuning a layer returns: per candidate and per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compute import Epilogue
from ..workload import Conv2dSpec
from .candidates import candidate_name
from .choices import AlgorithmChoice

__all__ = ["CandidateResult", "LayerTuneResult"]


@dataclass
class CandidateResult:
    """What tuning found for one candidate of one layer."""

    name: str
    algorithm: str
    m: int | None
    median_ms: float | None = None  # of the verified best record; None: none verified
    records: int = 0  # measured candidates in the tuning log (failures included)
    new_trials: int = 0  # measured by this call
    verified: bool = False
    max_error: float | None = None  # |ours - float64 reference| of the verified record
    trials_to_90: int | None = None  # trials (this call, the seed included) until within 90% of this call's best
    history_ms: list = field(default_factory=list)  # best-so-far after each measured trial (this call, seed first)
    wall_s: float = 0.0
    record: object | None = field(default=None, repr=False, compare=False)  # the verified best TuningRecord


@dataclass
class LayerTuneResult:
    """The per-layer outcome: every candidate, the choice, where things were written."""

    spec: Conv2dSpec
    epilogue: Epilogue
    target: str
    candidates: dict[str, CandidateResult]
    choice: AlgorithmChoice | None
    work_dir: str
    schedules_dir: str
    trials: int
    wall_s: float

    @property
    def best_ms(self) -> float | None:
        if self.choice is None:
            return None
        return self.candidates[candidate_name(self.choice.algorithm, self.choice.m)].median_ms
