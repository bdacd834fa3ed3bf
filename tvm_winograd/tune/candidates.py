"""The candidates of one layer (direct, Winograd F(m, r) per tile that fits), the PrimFunc each tunes, and
the choice between them by measured time (a pure function)."""

from __future__ import annotations

import math

from tvm import tirx

from ..compute import Epilogue, direct_channel_multiple, direct_func, target_config, winograd_func
from ..heuristic import CANDIDATE_TILES
from ..workload import Conv2dSpec, winograd_ineligibility
from .choices import AlgorithmChoice

__all__ = ["layer_candidates", "parse_candidate", "candidate_name", "candidate_func", "choose_by_times"]


def layer_candidates(spec: Conv2dSpec) -> list[str]:
    """``["direct", "winograd_m2", ...]``: direct always; Winograd for each candidate tile that fits.

    A tile fits when Winograd can run the layer and ``m`` is at most the output's height and width
    (a larger tile computes mostly padding).
    """
    names = ["direct"]
    if winograd_ineligibility(spec) is None:
        for m in CANDIDATE_TILES.get(spec.dtype, (2, 4)):
            if m <= min(spec.out_height, spec.out_width):
                names.append(f"winograd_m{m}")
    return names


def parse_candidate(name: str) -> tuple[str, int | None]:
    if name == "direct":
        return "direct", None
    if name.startswith("winograd_m") and name[len("winograd_m"):].isdigit():
        return "winograd", int(name[len("winograd_m"):])
    raise ValueError(f"candidate {name!r} is not 'direct' or 'winograd_m<m>'")


def candidate_name(algorithm: str, m: int | None) -> str:
    """Inverse of :func:`parse_candidate`: ``"direct"`` or ``"winograd_m<m>"``."""
    return "direct" if algorithm == "direct" else f"winograd_m{m}"


def candidate_func(spec: Conv2dSpec, name: str, epilogue: Epilogue = Epilogue(),
                   target_kind: str = "llvm") -> tirx.PrimFunc:
    """The PrimFunc a candidate tunes: :func:`direct_func` (its output channels padded as compilation pads
    them for ``target_kind``) or :func:`winograd_func` (pre-transformed weights, in the kernel_pack layout
    of ``target_kind``: the one compilation uses)."""
    algorithm, m = parse_candidate(name)
    if algorithm == "direct":
        return direct_func(spec, epilogue, out_channel_multiple=direct_channel_multiple(spec, target_kind))
    return winograd_func(spec, target_config(spec, m, target_kind), epilogue)


def choose_by_times(times_ms: dict[str, float | None]) -> AlgorithmChoice:
    """The fastest candidate (``None`` = no verified schedule); ties go to direct, then the smaller m.

    Raises ``ValueError`` when no candidate has a time.
    """
    timed = {name: t for name, t in times_ms.items() if t is not None and math.isfinite(t)}
    if not timed:
        raise ValueError(f"no candidate has a measured time: {times_ms}")

    def order(name: str) -> tuple:
        algorithm, m = parse_candidate(name)
        return (timed[name], algorithm != "direct", m or 0)

    best = min(timed, key=order)
    algorithm, m = parse_candidate(best)
    return AlgorithmChoice(algorithm, m, {k: (None if v is None else float(v)) for k, v in times_ms.items()})
