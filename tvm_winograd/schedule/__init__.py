"""Schedules for the Winograd PrimFuncs: a fixed default, and search spaces per target."""

from .default import schedule_llvm_default

__all__ = ["schedule_llvm_default"]
