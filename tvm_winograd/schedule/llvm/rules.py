"""The ONE list of llvm default-schedule rules, the pass that applies it, and what each function got.

:func:`default_rules` is the registration: an explicit ordered list, tried in order on every
PrimFunc that is not scheduled yet; the first rule that returns a schedule wins (DLight's
``ApplyDefaultSchedule`` protocol).  :class:`ApplyLlvmRules` is that pass, plus two things DLight's
does not do: it records the winning rule's name on the function (:data:`~tvm_winograd.contract.SCHEDULED_BY_ATTR`,
read by :func:`schedule_table` for the compile report), and it swaps libm exp/tanh/erf/sigmoid for
vectorizable polynomials (:mod:`.fastmath`) in the functions it schedules.

It runs after TVM's ``legalize_passes`` (LegalizeOps, FuseOps, FuseTIR), so the rules see the fused
PrimFuncs, which is also where the CUDA pipeline applies DLight.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from ...contract import RULE_ERRORS_ATTR, is_scheduled, mark_scheduled, scheduled_by
from .base import LlvmRule
from .fastmath import approximate_math
from .fallback import Fallback
from .injective import Injective
from .matmul import Matmul
from .reduction import Reduction, RowReduction

__all__ = ["DLightRule", "Tuned", "default_rules", "ApplyLlvmRules", "schedule_table"]

logger = logging.getLogger(__name__)

class DLightRule(LlvmRule):
    """One of TVM's DLight CPU rules under the name the report shows."""

    def __init__(self, rule, name: str):
        self.rule = rule
        self.name = name

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        return self.rule.apply(func, target, tunable)


class Tuned(LlvmRule):
    """The best record of a MetaSchedule database for exactly this function (whole-model tuning,
    :mod:`tvm_winograd.tune.functions`), put before the default rules; ``None`` without one.  The
    function it is asked about is the one the rules see (fast math applied), as it was tuned."""

    name = "tuned"

    def __init__(self, database):
        self.database = database

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        if not self.database.has_workload(mod):
            return None
        sch = self.database.query_schedule(mod, target, "main")
        if sch is None:
            return None
        new = sch.mod["main"]  # the record was tuned as "main": give the function its own symbol back
        symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
        new = new.with_attr("global_symbol", symbol) if symbol is not None else new.without_attr("global_symbol")
        return s_tir.Schedule(new)


def default_rules() -> list[LlvmRule]:
    """The llvm rules, in the order they are tried (most specific first, the catch-all last)."""
    return [
        Matmul(),  # matrix products of any rank with their fused epilogues (and the batch-1 W[k, n] case)
        DLightRule(dlight.cpu.GEMV(), "dlight-gemv"),  # batch-1 products with a W[n, k] weight
        Injective(),  # elementwise chains, concatenate, transpose, reshape, pad, depth-to-space ...
        Reduction(),  # mean / pooling / sums: parallel over the kept axes, vectorized
        RowReduction(),  # softmax, layer norm, RMS norm: rows in parallel, vector partial reductions
        DLightRule(dlight.cpu.Reduction(), "dlight-reduction"),  # softmax, layer norm
        Fallback(),  # anything else: inline what can be, parallel outer loop, vectorized inner loop
    ]


def _target_of(func: tirx.PrimFunc) -> Target:
    target = func.attrs.get("target") if func.attrs is not None else None
    return target if target is not None else Target.current(allow_none=False)


@tvm.transform.module_pass(opt_level=0, name="TvmWinogradApplyLlvmRules")
class ApplyLlvmRules:
    """Schedule every unscheduled PrimFunc with the first of ``rules`` that applies.

    Parameters
    ----------
    rules
        The rules in order; ``None``: :func:`default_rules`.
    fast_math
        Replace float32 exp/tanh/erf/sigmoid by polynomials (:mod:`.fastmath`) in the functions a
        rule schedules (they vectorize; libm calls do not).
    """

    def __init__(self, rules: list[LlvmRule] | None = None, fast_math: bool = True):
        self.rules = list(default_rules() if rules is None else rules)
        self.fast_math = fast_math

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc) and not is_scheduled(func):
                new = self.schedule(gv.name_hint, func, _target_of(func))
                if new is not None:
                    updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    def schedule(self, name: str, func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc | None:
        """``func`` scheduled by the first rule that applies (marked, named), or None."""
        candidate = approximate_math(func) if self.fast_math else func
        errors = []
        for rule in self.rules:
            if not rule.is_target_available(target):
                continue
            try:
                sch = rule.apply(candidate, target, False)
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as err:  # TVM errors
                # a rule that matched but could not finish: the next rule gets the function and the
                # report says which rule failed (no silent slow path)
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                logger.warning("%s: rule %s failed (%s); trying the next rule", name, rule.name, message)
                errors.append(f"{rule.name}: {message}")
                continue
            if sch is None:
                continue
            if isinstance(sch, list):
                sch = sch[0]
            new = mark_scheduled(sch.mod["main"], by=rule.name)
            if errors:
                new = new.with_attr(RULE_ERRORS_ATTR, "; ".join(errors))
            return new
        logger.warning("%s: no llvm rule applies; it stays unscheduled", name)
        return func.with_attr(RULE_ERRORS_ATTR, "; ".join(errors)) if errors else None


def schedule_table(mod: tvm.IRModule) -> dict[str, dict]:
    """``{name: {"scheduled_by": ..., "rule_errors": ...}}`` for every PrimFunc of ``mod``.

    ``scheduled_by`` is the name a rule or the pipeline recorded (:data:`~tvm_winograd.contract.SCHEDULED_BY_ATTR`),
    ``"scheduled"`` for a function scheduled by something that records no name (e.g. the CUDA
    pipeline's DLight), or ``unscheduled``.
    """
    table = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs if func.attrs is not None else {}
        entry = {"scheduled_by": scheduled_by(func)}
        if RULE_ERRORS_ATTR in attrs:
            entry["rule_errors"] = str(attrs[RULE_ERRORS_ATTR])
        table[gv.name_hint] = entry
    return table
