"""What :func:`tvm_winograd.export.compile_model` reports: the per-convolution decisions of the
Winograd pass and, per PrimFunc that reaches the build, what scheduled it.

``compile_model`` returns ``(executable, CompileReport)``.  A :class:`CompileReport` is a sequence of
the :class:`~tvm_winograd.relax_pass.LayerReport` s (so ``for r in report``, ``len(report)`` and
``report[0]`` work as with the list it replaces) and carries the function table in ``functions``.

``scheduled_by`` of a function is one of: ``winograd`` / ``weight_transform`` / ``direct`` (our
PrimFuncs' fixed schedules), ``tuned`` (a tuning record), the name of the llvm rule that scheduled it
(``matmul``, ``dlight-gemv``, ``injective``, ``reduction``, ``row-reduction``, ``dlight-reduction``, ``fallback``; see
:func:`tvm_winograd.schedule.llvm.default_rules`), ``scheduled`` (scheduled by something that records
no name, e.g. the CUDA pipeline's DLight rules) or ``unscheduled`` (it runs as TVM's plain loop nest:
scalar and on one thread).  Further facts about a function (e.g. that one of our schedules fell back
to a simpler one) go into its ``notes``; facts about the whole model into ``CompileReport.notes``.

``layout_transforms`` counts the transposes (``permute_dims`` / ``layout_transform`` of data) left in the
model's Relax ``main`` after the layout conversion, by where they sit: ``input`` (on a parameter),
``output`` (into the result), ``inside`` (between two ops of the model: the conversion's target is 0;
see :func:`tvm_winograd.relax_layout.layout_transform_sites`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .relax_pass import LayerReport
from .contract import UNSCHEDULED

__all__ = ["FunctionReport", "CompileReport", "UNSCHEDULED"]


@dataclass
class FunctionReport:
    """One PrimFunc of the compiled model and what scheduled it."""

    name: str
    scheduled_by: str
    kind: str | None = None  # tvm_winograd.kind of our PrimFuncs (winograd, direct, ...), else None
    rule_errors: str | None = None  # rules that matched but failed ("rule: message; ..."), if any
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompileReport(Sequence):
    """The layer decisions (the sequence) and the function table (``functions``) of one compile."""

    layers: list[LayerReport] = field(default_factory=list)
    functions: list[FunctionReport] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    layout_transforms: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0, "inside": 0})

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def counts(self) -> dict[str, int]:
        """``{scheduled_by: number of functions}``, most frequent first."""
        return dict(Counter(f.scheduled_by for f in self.functions).most_common())

    def unscheduled(self) -> list[str]:
        """Names of the functions that reach the build unscheduled."""
        return [f.name for f in self.functions if f.scheduled_by == UNSCHEDULED]

    def fallbacks(self) -> list[str]:
        """Names of our Winograd functions whose default schedule fell back to the simple one."""
        return [f.name for f in self.functions if f.notes.get("default_schedule") == "fallback"]

    def layout_transforms_total(self) -> int:
        """All the layout transforms left in the model (input, output and inside)."""
        return sum(self.layout_transforms.values())

    def function(self, name: str) -> FunctionReport:
        """The entry of function ``name`` (KeyError naming it if there is none)."""
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(f"no function {name!r} in the compile report")

    def as_dict(self) -> dict:
        """JSON-ready: ``layers``, ``functions``, ``function_counts``, ``unscheduled``, ``fallbacks``,
        ``layout_transforms`` (by site), ``notes``."""
        return {"layers": [r.as_dict() for r in self.layers], "functions": [f.as_dict() for f in self.functions],
                "function_counts": self.counts(), "unscheduled": self.unscheduled(), "fallbacks": self.fallbacks(),
                "layout_transforms": dict(self.layout_transforms), "notes": dict(self.notes)}
