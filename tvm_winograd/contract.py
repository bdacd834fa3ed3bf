"""The names the compute, the schedules, the graph pass and the pipeline agree on.

One source for each contract string: the PrimFunc attributes that mark a function as ours (its kind,
layout and tile size), the stage (block) names of the Winograd compute, the ``schedule_rule`` block
attribute MetaSchedule dispatches on, and the flag TVM sets on scheduled functions.  Everything else
imports these names; nothing here imports the rest of the package.

Stages of a Winograd PrimFunc (see :mod:`tvm_winograd.compute`)::

    data_pad        zero padding, extended so that the output tiles cover the output exactly
    input_tile      d: the alpha x alpha input tile of every (tile, channel)
    data_pack_rows  B_T d, the first of the two 1-D passes (separable form)
    data_pack       V = B_T d B (``data_pack_acc`` when a cast to the storage dtype follows)
    kernel_pack     U = G g G_T (``kernel_pack_acc`` likewise; its own function)
    bgemm           M = U^T V per (eps, nu)
    inverse_rows    A_T M, the first pass of the separable inverse
    inverse         Y = A_T M A
    conv2d_winograd Y scattered to the output, with the fused epilogue
"""

from __future__ import annotations

from typing import Any

from tvm import tirx

__all__ = [
    "KIND_ATTR", "LAYOUT_ATTR", "M_ATTR", "KINDS", "SCHEDULED_ATTR", "SCHEDULE_RULE_ATTR", "NO_RULE",
    "DATA_PAD", "INPUT_TILE", "DATA_PACK_ROWS", "DATA_PACK", "DATA_PACK_ACC", "KERNEL_PACK", "KERNEL_PACK_ACC",
    "BGEMM", "INVERSE_ROWS", "INVERSE", "OUTPUT", "DIRECT_EPILOGUE", "WEIGHT_PAD", "LAYOUT_REWRITE_PREPROC",
    "MATRIX_A", "MATRIX_G", "MATRIX_B",
    "CONSTANT_MATRICES", "STAGES", "rule_attrs",
    "SCHEDULE_RULES", "tag", "func_attr", "kind_of", "layout_of", "tile_of", "is_ours", "our_prim_funcs", "is_scheduled",
    "mark_scheduled", "SCHEDULED_BY_ATTR", "UNSCHEDULED", "RULE_ERRORS_ATTR", "scheduled_by",
    "DEFAULT_SCHEDULE_ATTR", "FALLBACK_REASON_ATTR",
]

#: PrimFunc attributes of the functions made by tvm_winograd.
KIND_ATTR = "tvm_winograd.kind"
LAYOUT_ATTR = "tvm_winograd.layout"
M_ATTR = "tvm_winograd.m"
KINDS = ("winograd", "weight_transform", "direct")

#: The PrimFunc attribute TVM 0.27 sets on scheduled functions; DLight and MetaSchedule skip them.
SCHEDULED_ATTR = "tirx.is_scheduled"
#: Which schedule a PrimFunc got: a default rule's name, or what the pipeline set on ours (``winograd``,
#: ``direct``, ``tuned``); read by the compile report.
SCHEDULED_BY_ATTR = "tvm_winograd.scheduled_by"
#: ``scheduled_by`` of a function nothing scheduled (it runs as TVM's plain, scalar loop nest).
UNSCHEDULED = "unscheduled"
#: The default rules that were tried on a function and raised (``"rule: message; ..."``), for the report.
RULE_ERRORS_ATTR = "tvm_winograd.rule_errors"

#: Which fixed schedule ``schedule_llvm_default`` gave a PrimFunc (an attribute of the result, so
#: tests and the compile report can read it): ``"design_space"`` (Winograd: the searched CPU space at
#: its default decisions, the fast path), ``"simple"`` (weight transforms, by design) or
#: ``"fallback"`` (Winograd whose design space did not apply: the simple schedule, ~1.8x slower; the
#: reason is in :data:`FALLBACK_REASON_ATTR` and logged as a warning).  A silent fallback once hid
#: an fp16 regression.
DEFAULT_SCHEDULE_ATTR = "tvm_winograd.default_schedule"
FALLBACK_REASON_ATTR = "tvm_winograd.default_schedule_fallback"

#: The block annotation MetaSchedule dispatches custom rules on, and its "leave me alone" value.
SCHEDULE_RULE_ATTR = "schedule_rule"
NO_RULE = "None"

DATA_PAD = "data_pad"
INPUT_TILE = "input_tile"
DATA_PACK_ROWS = "data_pack_rows"
DATA_PACK = "data_pack"
DATA_PACK_ACC = "data_pack_acc"
KERNEL_PACK = "kernel_pack"
KERNEL_PACK_ACC = "kernel_pack_acc"
BGEMM = "bgemm"
INVERSE_ROWS = "inverse_rows"
INVERSE = "inverse"
OUTPUT = "conv2d_winograd"
#: The epilogue block of the direct convolution (bias, residual, ReLU after topi's conv).
DIRECT_EPILOGUE = "conv2d_direct_epilogue"
#: The direct convolution's weight with its output channels padded with zeros to a whole number of
#: vectors (``direct_func(out_channel_multiple=)``); the CPU schedule folds it into the weight packing.
WEIGHT_PAD = "weight_pad"
#: The block annotation ``relax.transform.SplitLayoutRewritePreproc`` (and MetaSchedule's
#: ``RemoveWeightLayoutRewriteBlock``) look for: a block that repacks a weight parameter, hoisted out of
#: its function and folded at compile time on constant weights (``schedule.direct.hoist_weight_packing``).
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"
#: The constant transform matrices as blocks: A = A_T^T (alpha x m), G (alpha x r), B = B_T^T (alpha x alpha).
MATRIX_A, MATRIX_G, MATRIX_B = "A", "G", "B"
CONSTANT_MATRICES = (MATRIX_A, MATRIX_B, MATRIX_G)

STAGES = (DATA_PAD, INPUT_TILE, DATA_PACK, KERNEL_PACK, BGEMM, INVERSE, OUTPUT)

#: ``schedule_rule`` per stage.  MetaSchedule calls the global function
#: ``s_tir.meta_schedule.<target key>.<rule>`` for a block carrying it (see schedule/).  Stages with
#: :data:`NO_RULE` are inlined by their consumer's rule and left alone by the generic rules.
SCHEDULE_RULES = {
    DATA_PAD: NO_RULE,
    INPUT_TILE: NO_RULE,
    DATA_PACK_ROWS: NO_RULE,
    DATA_PACK: "winograd_data_pack",
    KERNEL_PACK: "winograd_kernel_pack",
    BGEMM: "winograd_bgemm",
    INVERSE_ROWS: NO_RULE,
    INVERSE: "winograd_inverse",
    OUTPUT: "winograd_output",
}


def rule_attrs(stage: str) -> dict[str, str]:
    """The block attributes of ``stage``: its ``schedule_rule``."""
    return {SCHEDULE_RULE_ATTR: SCHEDULE_RULES[stage]}


def tag(func: tirx.PrimFunc, kind: str, layout: str, m: int | None = None) -> tirx.PrimFunc:
    """Mark ``func`` as ours: its kind (one of :data:`KINDS`), layout and tile size ``m``; the
    default schedules and the pipeline dispatch on these."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    attrs: dict[str, Any] = {KIND_ATTR: kind, LAYOUT_ATTR: layout}
    if m is not None:
        attrs[M_ATTR] = m
    return func.with_attrs(attrs)


def func_attr(func: tirx.PrimFunc, key: str, default: Any = None) -> Any:
    """``func.attrs[key]``, or ``default`` where the function has no such attribute."""
    attrs = func.attrs
    return attrs[key] if attrs is not None and key in attrs else default


def kind_of(func: tirx.PrimFunc) -> str | None:
    """``"winograd"``, ``"weight_transform"``, ``"direct"``, or None for a function not ours."""
    kind = func_attr(func, KIND_ATTR)
    return None if kind is None else str(kind)


def layout_of(func: tirx.PrimFunc, default: str | None = None) -> str | None:
    layout = func_attr(func, LAYOUT_ATTR)
    return default if layout is None else str(layout)


def tile_of(func: tirx.PrimFunc) -> int | None:
    """The Winograd output tile ``m`` of ``func`` (None for direct convolution)."""
    m = func_attr(func, M_ATTR)
    return None if m is None else int(m)


def is_ours(func: object) -> bool:
    """Whether ``func`` is a PrimFunc made by tvm_winograd."""
    return isinstance(func, tirx.PrimFunc) and kind_of(func) is not None


def our_prim_funcs(mod: Any) -> dict[str, tirx.PrimFunc]:
    """``{name: PrimFunc}`` of the PrimFuncs of an IRModule made by tvm_winograd (they carry :data:`KIND_ATTR`)."""
    return {gv.name_hint: func for gv, func in mod.functions.items() if is_ours(func)}


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` was scheduled (by a tuning record, a default schedule or a rule)."""
    return bool(func_attr(func, SCHEDULED_ATTR, False))


def mark_scheduled(func: tirx.PrimFunc, by: str | None = None) -> tirx.PrimFunc:
    """``func`` with the flag DLight and MetaSchedule read, so that they leave it alone, and (``by``)
    the name of what scheduled it."""
    func = func.with_attr(SCHEDULED_ATTR, True)
    return func if by is None else func.with_attr(SCHEDULED_BY_ATTR, by)


def scheduled_by(func: tirx.PrimFunc) -> str:
    """What scheduled ``func``: the recorded name, ``scheduled`` if only TVM's flag is set (DLight in
    TVM's own pipeline), or :data:`UNSCHEDULED`."""
    by = func_attr(func, SCHEDULED_BY_ATTR)
    if by is not None:
        return str(by)
    return "scheduled" if is_scheduled(func) else UNSCHEDULED
