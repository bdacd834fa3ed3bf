"""Schedules for the Winograd PrimFuncs: a fixed default, and search spaces per target.

The search spaces are MetaSchedule custom rules: global functions ``s_tir.meta_schedule.<key>.<rule>``
that MetaSchedule's ``ApplyCustomRule`` looks up for every block whose ``schedule_rule`` attribute names
one.  They are registered explicitly, by :func:`register_rules`, where a design space is generated
(tuning, ``cuda-check``); importing a module registers nothing.  The default schedules call the
schedule functions directly and need no registration.
"""

from __future__ import annotations

from .default import schedule_llvm_default

__all__ = ["register_rules", "schedule_llvm_default"]

#: Target kinds with Winograd design spaces.
RULE_TARGET_KINDS = ("llvm", "cuda")


def register_rules(target_kind: str = "llvm") -> None:
    """Register the MetaSchedule rules of ``target_kind`` (idempotent): ``s_tir.meta_schedule.cpu.*`` for
    ``llvm``, ``s_tir.meta_schedule.{cuda,gpu}.*`` for ``cuda``.

    Raises ``ValueError`` naming the kind for any other.
    """
    if target_kind == "llvm":
        from .cpu import register_cpu_rules

        register_cpu_rules()
    elif target_kind == "cuda":
        from .cuda import register_rules as register_cuda_rules

        register_cuda_rules()
    else:
        raise ValueError(f"no Winograd design spaces for target kind {target_kind!r} (one of {RULE_TARGET_KINDS})")
