"""Schedules for the Winograd PrimFuncs: a fixed default, and search spaces per target."""

from . import cpu  # noqa: F401 - registers the MetaSchedule rules s_tir.meta_schedule.cpu.winograd_*
from .default import schedule_llvm_default

__all__ = ["schedule_llvm_default"]
