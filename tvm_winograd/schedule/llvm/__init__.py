"""Default (untuned) llvm schedules for every PrimFunc TVM's CPU pipeline produces, DLight style.

A rule is a class with ``apply(func, target, tunable)`` (:class:`~.base.LlvmRule`); the ordered list
of rules is :func:`~.rules.default_rules`, the one place they are registered (importing this
package registers nothing anywhere); :class:`~.rules.ApplyLlvmRules` is the pass that applies them
after legalization and fusion; :func:`~.rules.schedule_table` says which rule scheduled each
function (the compile report).

Modules: ``base`` (shared loop shapes, target facts), ``fastmath`` (vectorizable
exp/tanh/erf/sigmoid), ``injective``, ``reduction``, ``matmul``, ``fallback`` (the rules),
``rules`` (the list, the pass, the table).
"""

from .base import LlvmRule
from .rules import ApplyLlvmRules, default_rules, schedule_table

__all__ = ["ApplyLlvmRules", "LlvmRule", "default_rules", "schedule_table"]
