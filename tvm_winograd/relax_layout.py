"""Graph-level layout: convert a model's convolutions to NHWC with transposes only where they must be.

TVM's ``relax.transform.ConvertLayout`` converts each ``conv2d`` to the desired layout and lets the
ops after it follow, through the layout rule (``FRelaxInferLayout``) each op registers; an op without
a rule is run in the model's layout, so it is wrapped in a transpose pair.  On the models of this
project three things defeat it (TVM 0.27):

1. Ops without a rule: ``clip`` (ReLU6, hard-sigmoid, hard-swish), ``nn.leakyrelu``,
   ``nn.softplus`` (Mish) and ``nn.pad``.  :func:`register_layout_rules` registers rules for them
   from Python (``tvm.ir.register_op_attr``, only where TVM has none).
2. Ops the ONNX frontend emits as ``call_tir`` of a TE function, which no rule can see into: ``Clip``
   becomes ``call_tir(maximum)`` + ``call_tir(minimum)`` and ``Pad`` ``call_tir(pad)``.
   :func:`prepare_for_layout` raises them back to ``relax.maximum`` / ``relax.minimum`` /
   ``relax.nn.pad``, each only after checking that the PrimFunc is *exactly* what the frontend's
   ``emit_te`` makes of that op (structural equality with a freshly emitted one), and also
   rewrites broadcasts TVM's binary rule resolves to the model's layout (a constant first operand
   of a commutative op, a constant of lower rank such as a (C, 1, 1) scale) and decomposes
   ``nn.pixel_shuffle`` into the reshape/permute/reshape that step 3 handles; inference batch
   norms become elementwise ops (TVM's ``DecomposeOpsForInference``).
3. Reshape/transpose chains: ``reshape`` has no rule (it cannot have one in general), so a
   depth-to-space (``reshape -> permute_dims -> reshape``) between NHWC convolutions is wrapped in
   a transpose pair, and a model's own ``permute_dims`` (ConvNeXt's NCHW -> NHWC around its layer
   norm) meets the converter's.  :func:`collapse_permutes` rewrites every chain of
   ``permute_dims`` / ``reshape`` into at most ``reshape -> permute_dims -> reshape`` of its source
   (:func:`compose_view`), so inverse pairs vanish and a depth-to-space keeps its one permute.
4. Layout-agnostic regions: ``ConvertLayout`` is a forward pass that only *desires* layouts for
   convolutions, so what follows a model's own ``permute_dims`` back to NCHW stays NCHW (ConvNeXt-T:
   the layer scale and the whole residual stream, 41 transposes, one before every depthwise conv).
   :func:`collapse_permutes` also finds each region of values linked by layout-agnostic ops
   (elementwise, broadcasting binary ops with constants, layer norm, softmax, keepdims reductions,
   concat) and ``permute_dims``, and runs the whole region in the one layout that needs the fewest
   transposes at its edge (where the choice ties, on the model's inputs and outputs rather than
   inside); ``permute_dims`` inside a region cost nothing, so inverse pairs cancel and a transpose
   followed by a permute composes into one, whatever reads the values between them.
   Inference batch norms are decomposed into elementwise ops first (step 2), so they join regions.

``conv2d_transpose`` stays NCHW (TVM legalizes it in NCHW/IOHW only), with a transpose on each side;
on CPUs every ungrouped, undilated one was already rewritten into a stride-1 conv and a depth-to-space
(:mod:`tvm_winograd.relax_conv_forms`), which convert like any other.
:func:`count_layout_transforms` counts what remains: a one-input one-output CNN has 2 (1 if its output
has no spatial axes), and :func:`layout_transform_sites` says where they sit (input, output, inside).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx, topi

__all__ = [
    "CONV_TRANSPOSE_LAYOUT",
    "View",
    "collapse_permutes",
    "compose_view",
    "convert_layout",
    "count_layout_transforms",
    "layout_transform_sites",
    "prepare_for_layout",
    "register_layout_rules",
    "remove_dead_code",
    "static_shape",
]

logger = logging.getLogger(__name__)

#: The only layout TVM 0.27 legalizes ``relax.nn.conv2d_transpose`` in (data, kernel).
CONV_TRANSPOSE_LAYOUT = ("NCHW", "IOHW")

_Constant = tvm.ir.expr.Constant
_PERMUTE = "relax.permute_dims"
_RESHAPE = "relax.reshape"
_LAYOUT_TRANSFORM = "relax.layout_transform"
#: Elementwise binary ops whose two operands may be swapped.
_COMMUTATIVE = frozenset({"relax.add", "relax.multiply", "relax.maximum", "relax.minimum"})
#: Elementwise binary ops with NumPy broadcasting (TVM's ``InferLayoutBinaryEwise``).
_BINARY = _COMMUTATIVE | {"relax.subtract", "relax.divide", "relax.power", "relax.floor_divide"}


# ------------------------------------------------------------------------------------------------
# Layout rules for the ops TVM has none for
# ------------------------------------------------------------------------------------------------

@functools.cache
def _layout_types() -> tuple[type, type]:
    """Python classes of TVM's ``LayoutDecision`` and ``InferLayoutOutput`` (a rule returns the
    latter); their C++ constructors are not exposed, their reflected fields are."""
    from tvm_ffi import Object
    from tvm_ffi.dataclasses import c_class

    @c_class("relax.transform.LayoutDecision")
    class LayoutDecision(Object):
        """The layout of one tensor: ``layout`` names the original axes in their new order."""

        layout: s_tir.SLayout
        is_unknown_dim: bool

    @c_class("relax.transform.InferLayoutOutput")
    class InferLayoutOutput(Object):
        """What a rule returns: the layouts the inputs must have, the output's, the new attributes."""

        input_layouts: list
        output_layouts: list
        new_attrs: object
        new_args: dict

    return LayoutDecision, InferLayoutOutput


def _initial(ndim: int):
    decision, _ = _layout_types()
    return decision(s_tir.slayout("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:ndim]), False)


def _decision(var_layout_map, arg: relax.Expr):
    """The layout ConvertLayout has given ``arg`` (a constant or an unseen var has the initial one)."""
    found = var_layout_map.get(arg) if isinstance(arg, relax.Var) else None
    ndim = int(arg.ty.ndim)
    if found is None or not hasattr(found, "layout") or len(str(found.layout.name)) != ndim:
        return _initial(ndim)  # also packed layouts (NCHW4c): these rules only permute axes
    return found


def _infer_unary(call: relax.Call, _desired, var_layout_map):
    """Rule of an elementwise op of one tensor (``clip``'s bounds are PrimValues, not tensors)."""
    _, output = _layout_types()
    layout = _decision(var_layout_map, call.args[0])
    return output([layout], [layout], call.attrs, {})


def _infer_pad(call: relax.Call, _desired, var_layout_map):
    """Rule of ``nn.pad``: pad in the input's layout, the (before, after) pairs permuted alike."""
    _, output = _layout_types()
    layout = _decision(var_layout_map, call.args[0])
    old = [int(v) for v in call.attrs.pad_width]
    new: list[int] = []
    for letter in str(layout.layout.name):
        axis = ord(letter) - ord("A")
        new += old[2 * axis: 2 * axis + 2]
    attrs = relax.op.nn.pad(call.args[0], new, str(call.attrs.pad_mode), float(call.attrs.pad_value)).attrs
    return output([layout], [layout], attrs, {})


_RULES: dict[str, Callable] = {
    "relax.clip": _infer_unary,
    "relax.nn.leakyrelu": _infer_unary,
    "relax.nn.softplus": _infer_unary,
    "relax.nn.pad": _infer_pad,
}


def register_layout_rules() -> list[str]:
    """Register the layout rules of :data:`_RULES` with TVM's layout conversion, each only where TVM
    has none (a rule of TVM's own wins); idempotent.  Returns the ops registered by this call."""
    registered = []
    for name, rule in _RULES.items():
        if tvm.ir.Op.get(name).get_attr("FRelaxInferLayout") is None:
            tvm.ir.register_op_attr(name, "FRelaxInferLayout", rule)
            registered.append(name)
    if registered:
        logger.debug("registered layout rules for %s", ", ".join(registered))
    return registered


# ------------------------------------------------------------------------------------------------
# Before the conversion: raise the frontend's TE calls, canonicalize broadcasts
# ------------------------------------------------------------------------------------------------

def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a Relax tensor expression, or None (not a tensor, unknown or symbolic)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(v, tirx.IntImm) for v in ty.shape.values):
        return None
    return tuple(int(v) for v in ty.shape.values)


def _emitted_te(te_op: Callable, args: Sequence[relax.Expr], *params) -> tirx.PrimFunc:
    """The PrimFunc ``BlockBuilder.emit_te(te_op, *args, *params)`` makes: what a frontend emits."""
    bb = relax.BlockBuilder()
    inputs = [relax.Var(f"arg{i}", a.ty) for i, a in enumerate(args)]
    with bb.function("f", inputs):
        bb.emit_func_output(bb.emit_te(te_op, *inputs, *params))
    (func,) = [f for f in bb.get().functions.values() if isinstance(f, tirx.PrimFunc)]
    return func


def _pad_params(func: tirx.PrimFunc, in_shape: tuple, out_shape: tuple) -> tuple[list, list, float] | None:
    """``(pad_before, pad_after, value)`` read off a one-block constant-pad PrimFunc, else None (the
    caller verifies them by rebuilding the PrimFunc)."""
    if len(in_shape) != len(out_shape) or any(o < i for i, o in zip(in_shape, out_shape)):
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1:
        return None
    block = sch.get(blocks[0])
    value = getattr(block.body, "value", None)
    if len(block.reads) != 1 or not isinstance(value, tvm.ir.expr.Call) or len(value.args) != 3:
        return None
    if not isinstance(value.args[2], tirx.FloatImm):
        return None
    before = []
    for iv, rng in zip(block.iter_vars, block.reads[0].region):
        start = rng.min
        if start.same_as(iv.var):
            before.append(0)
        elif isinstance(start, tirx.Sub) and start.a.same_as(iv.var) and isinstance(start.b, tirx.IntImm):
            before.append(int(start.b.value))
        else:
            return None
    after = [o - i - b for i, o, b in zip(in_shape, out_shape, before)]
    return before, after, float(value.args[2].value)


def _raise_te_call(call: relax.Call, mod: tvm.IRModule) -> relax.Expr | None:
    """The Relax op for a ``call_tir`` of the frontend's TE ``maximum`` / ``minimum`` (ONNX Clip) or
    constant ``pad`` (ONNX Pad), if the called PrimFunc is exactly that; else None."""
    if len(call.args) != 2 or not isinstance(call.args[1], relax.Tuple) or not call.ty_args:
        return None
    func = mod[call.args[0]] if call.args[0] in mod.functions else None
    args = list(call.args[1].fields)
    out_shape = static_shape(call)
    if not isinstance(func, tirx.PrimFunc) or out_shape is None or any(static_shape(a) is None for a in args):
        return None
    if len(args) == 2 and static_shape(args[1]) == () and static_shape(args[0]) == out_shape:
        for te_op, relax_op in ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum)):
            if tvm_ffi.structural_equal(func, _emitted_te(te_op, args)):
                return relax_op(args[0], args[1])
    if len(args) == 1:
        params = _pad_params(func, static_shape(args[0]), out_shape)
        if params is not None and tvm_ffi.structural_equal(func, _emitted_te(topi.nn.pad, args, *params)):
            before, after, value = params
            widths = [w for pair in zip(before, after) for w in pair]
            return relax.op.nn.pad(args[0], widths, "constant", value)
    return None


def _canonical_binary(call: relax.Call) -> relax.Expr | None:
    """A broadcasting binary op TVM's rule would run in the model's layout, rewritten so that it
    follows the tensor operand: a constant first operand of a commutative op goes second, a
    constant of lower rank (a (C, 1, 1) scale) gets the leading ones NumPy broadcasting implies."""
    a, b = call.args
    changed = False
    if call.op.name in _COMMUTATIVE and isinstance(a, _Constant) and not isinstance(b, _Constant):
        a, b, changed = b, a, True
    ranks = [int(a.ty.ndim), int(b.ty.ndim)]
    if min(ranks) >= 0:
        operands = [a, b]
        for i in (0, 1):
            other = ranks[1 - i]
            if isinstance(operands[i], _Constant) and 0 < ranks[i] < other:
                value = operands[i].value.numpy()
                operands[i] = relax.const(value.reshape((1,) * (other - ranks[i]) + value.shape), value.dtype)
                changed = True
        a, b = operands
    if not changed:
        return None
    return relax.Call(call.op, [a, b], call.attrs)


def _pixel_shuffle(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """``nn.pixel_shuffle`` (NCHW, CRD order: ``y[n, c, h r + i, w r + j] = x[n, c r^2 + i r + j, h, w]``)
    as reshape -> permute_dims -> reshape, which :func:`collapse_permutes` can move to NHWC."""
    shape = static_shape(call.args[0])
    r = int(call.attrs.upscale_factor)
    if shape is None or len(shape) != 4 or shape[1] % (r * r):
        return None
    n, c, h, w = shape
    x = bb.emit(relax.op.reshape(call.args[0], (n, c // (r * r), r, r, h, w)))
    x = bb.emit(relax.op.permute_dims(x, [0, 1, 4, 2, 5, 3]))
    return relax.op.reshape(x, (n, c // (r * r), h * r, w * r))


@relax.expr_functor.mutator
class _Prepare(relax.PyExprMutator):
    """Applies :func:`_raise_te_call`, :func:`_canonical_binary` and :func:`_pixel_shuffle`."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod = mod
        self.raised = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        new = None
        if name == "relax.call_tir":
            new = _raise_te_call(call, self.mod)
            self.raised += new is not None
        elif name in _BINARY:
            new = _canonical_binary(call)
        elif name == "relax.nn.pixel_shuffle":
            new = _pixel_shuffle(self.builder_, call)
        return call if new is None else new


def prepare_for_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """Step 2 of the module docstring on every Relax function of ``mod`` (constants folded first;
    the raised TE PrimFuncs that lost their last caller are removed).  Inference batch norms are
    decomposed first (TVM's ``DecomposeOpsForInference``: subtract, divide, multiply, add by
    constants), which the layout regions move like any elementwise op; a ``batch_norm``'s tuple
    would end a region (DenseNet's pre-activation BN-ReLU on the input and after a concat)."""
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)  # (y, mean, var)[0] -> y
    mod = relax.transform.FoldConstant()(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mutator = _Prepare(mod)
            new_func = mutator.visit_expr(func)
            mod = mutator.builder_.get()
            mod[gv] = new_func
            if mutator.raised:
                logger.debug("%s: raised %d frontend TE calls to Relax ops", gv.name_hint, mutator.raised)
    return remove_dead_code(mod)


def remove_dead_code(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's ``DeadCodeElimination`` with every Relax function of ``mod`` kept as an entry."""
    entries = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function)]
    return relax.transform.DeadCodeElimination(entries)(mod)


# ------------------------------------------------------------------------------------------------
# After the conversion: collapse permute/reshape chains
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """A pure data movement of a source tensor as ``reshape(split) -> permute_dims(perm) ->
    reshape(shape)``: ``split`` refines the source's shape into factors (size-1 axes dropped),
    ``perm`` orders those factors, ``shape`` is the result's shape."""

    split: tuple[int, ...]
    perm: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def permutes(self) -> int:
        """1 if the data moves (a transpose), 0 if the view is a reshape."""
        return int(self.perm != tuple(range(len(self.perm))))

    def ops(self, src_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
        """The fewest ``("reshape", shape)`` / ``("permute", axes)`` steps that make the view."""
        if not self.permutes:
            return [] if tuple(src_shape) == self.shape else [("reshape", self.shape)]
        steps = [] if tuple(src_shape) == self.split else [("reshape", self.split)]
        steps.append(("permute", self.perm))
        if tuple(self.split[p] for p in self.perm) != self.shape:
            steps.append(("reshape", self.shape))
        return steps


def compose_view(src_shape: Sequence[int], steps: Sequence[tuple[str, Sequence[int]]]) -> View | None:
    """The :class:`View` that a chain of ``("permute", axes)`` / ``("reshape", shape)`` steps
    (row-major reshapes, ``permute_dims`` semantics) applies to a tensor of ``src_shape``; None
    when a reshape regroups elements across a transposed boundary (no single-permute form exists).

    Each axis of size > 1 is an index *factor*; a reshape splits factors where its dimensions
    need it (splitting the same factor of the source), a permute reorders the groups of factors.
    Factors adjacent both in the source and in the result merge, so inverse permutes give the
    identity and depth-to-space gives its 6-D transpose.
    """
    sizes: dict[int, int] = {}
    source: list[int] = []  # factor ids in source order
    groups: list[list[int]] = []  # factor ids of each current axis, row-major
    for dim in src_shape:
        if dim <= 0:
            return None
        groups.append([])
        if dim > 1:
            sizes[len(sizes)] = dim
            source.append(len(sizes) - 1)
            groups[-1].append(len(sizes) - 1)
    shape = tuple(int(d) for d in src_shape)
    for at, (kind, arg) in enumerate(steps):
        arg = tuple(int(a) for a in arg)
        if kind == "permute":
            if sorted(arg) != list(range(len(groups))):
                return None
            groups, shape = [groups[a] for a in arg], tuple(shape[a] for a in arg)
            continue
        if int(np.prod(arg)) != int(np.prod(shape)) or any(d <= 0 for d in arg):
            return None
        regrouped = _regroup(dict(sizes), list(source), groups, arg)
        if regrouped is None:
            if any(k == "permute" for k, _ in steps[at:]):
                return None  # a transpose after a regrouping no factor order can express
            shape = tuple(int(a) for a in steps[-1][1])  # only reshapes follow: the last one counts
            break
        groups, sizes, source = regrouped
        shape = arg
    order = [f for g in groups for f in g]
    where = {f: k for k, f in enumerate(source)}
    runs: list[list[int]] = []  # factors adjacent in the source and in the result merge
    for f in order:
        if runs and where[f] == where[runs[-1][-1]] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    runs_in_source = sorted(range(len(runs)), key=lambda r: where[runs[r][0]])
    split = tuple(int(np.prod([sizes[f] for f in runs[r]])) for r in runs_in_source)
    rank = {r: k for k, r in enumerate(runs_in_source)}
    return View(split=split, perm=tuple(rank[r] for r in range(len(runs))), shape=shape)


def _regroup(sizes: dict, source: list, groups: list, shape: tuple[int, ...]) -> tuple | None:
    """``(groups, sizes, source)`` after a row-major reshape to ``shape`` of the tensor whose axes are
    the factor ``groups``: factors are split where an axis ends inside one (``sizes`` and the
    ``source`` order, both updated in place, say so); None if an axis ends where no factor
    boundary can be made."""
    flat = [f for g in groups for f in g]
    new_groups, i = [], 0
    for dim in shape:
        group, rest = [], dim
        while rest > 1:
            factor = flat[i]
            if rest % sizes[factor] == 0:
                group.append(factor)
                rest //= sizes[factor]
                i += 1
            elif sizes[factor] % rest == 0:  # split: the high part ends this axis
                high, low = len(sizes), len(sizes) + 1
                sizes[high], sizes[low] = rest, sizes[factor] // rest
                at = source.index(factor)
                source[at:at + 1] = [high, low]
                flat[i] = low
                group.append(high)
                rest = 1
            else:
                return None
        new_groups.append(group)
    return new_groups, sizes, source


def _view_step(value: relax.Expr) -> tuple[str, tuple[int, ...]] | None:
    """The step of a static ``permute_dims`` / ``reshape`` call, else None."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    in_shape = static_shape(value.args[0]) if value.args else None
    if in_shape is None:
        return None
    if value.op.name == _PERMUTE:
        axes = value.attrs.axes
        axes = tuple(range(len(in_shape)))[::-1] if axes is None else tuple(int(a) for a in axes)
        return "permute", tuple(a % len(in_shape) for a in axes)
    if value.op.name == _RESHAPE:
        out = static_shape(value)
        return None if out is None else ("reshape", out)
    return None


def _use_counts(func: relax.Function) -> dict:
    """How often each Var is used (in binding values and the function's result)."""
    counts: dict = {}

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    for block in func.body.blocks:
        for binding in block.bindings:
            relax.analysis.post_order_visit(binding.value, visit)
    relax.analysis.post_order_visit(func.body.body, visit)
    return counts


def _plan_collapse(func: relax.Function) -> dict:
    """``{var: (source, View)}`` for each chain end that :func:`compose_view` makes cheaper: fewer
    transposes, or as many in fewer ops.  A chain runs back through permute/reshape bindings used
    only by the next one (so rewriting its end leaves them dead, never duplicated)."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings
              if isinstance(b, relax.VarBinding)}
    uses = _use_counts(func)
    inner = {v.args[0] for v in values.values() if _view_step(v) is not None and isinstance(v.args[0], relax.Var)}
    plan = {}
    for var, value in values.items():
        if _view_step(value) is None:
            continue
        if isinstance(var, relax.DataflowVar) and uses.get(var, 0) == 1 and var in inner:
            continue  # an inner link: its chain's end rewrites it
        steps, source = [], var
        while True:
            steps.insert(0, _view_step(values[source]))
            arg = values[source].args[0]
            if (isinstance(arg, relax.DataflowVar) and arg in values and _view_step(values[arg]) is not None
                    and uses.get(arg, 0) == 1):
                source = arg
                continue
            source = arg
            break
        src_shape = static_shape(source)
        view = compose_view(src_shape, steps)
        if view is None:
            continue
        chain_permutes = sum(kind == "permute" and axes != tuple(range(len(axes))) for kind, axes in steps)
        if (view.permutes, len(view.ops(src_shape))) < (chain_permutes, len(steps)):
            plan[var] = (source, view)
    return plan


def _inverse(axes: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(axes)
    for k, a in enumerate(axes):
        inv[a] = k
    return tuple(inv)


@relax.expr_functor.mutator
class _Collapse(relax.PyExprMutator):
    """Rewrites the chain ends planned by :func:`_plan_collapse` as their :class:`View`."""

    def __init__(self, mod: tvm.IRModule, views: dict) -> None:
        super().__init__(mod)
        self.views = views

    def _view_expr(self, source: relax.Expr, view: View) -> relax.Expr:
        expr = self.visit_expr(source)
        for k, (kind, arg) in enumerate(view.ops(static_shape(source))):
            if k:
                expr = self.builder_.emit(expr)
            expr = relax.op.permute_dims(expr, list(arg)) if kind == "permute" else relax.op.reshape(expr, arg)
        return expr

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.views:
            _bind(self.builder_, self, binding.var, self._view_expr(*self.views[binding.var]))
        else:
            super().visit_var_binding_(binding)


def _bind(builder: relax.BlockBuilder, mutator: relax.PyExprMutator, var: relax.Var, expr: relax.Expr) -> None:
    """Bind ``var``'s new value ``expr``: a block output stays one (its name kept), a Var is an alias."""
    if builder.current_block_is_dataflow() and not isinstance(var, relax.DataflowVar):
        new_var = builder.emit_output(expr, str(var.name))
    elif isinstance(expr, relax.Var):
        new_var = expr  # an identity chain, or a cancelled permute
    else:
        new_var = builder.emit(expr, str(var.name))
    mutator.set_var_remap(var, new_var)


# ------------------------------------------------------------------------------------------------
# Layout regions: move whole groups of layout-agnostic ops to the layout that needs fewest transposes
# ------------------------------------------------------------------------------------------------
#
# A *region* is a connected set of values linked by layout-agnostic ops (elementwise, broadcasting
# binary ops, layer norm, softmax, keepdims reductions, concat: each computes the same thing on
# consistently permuted operands, with its axis attributes remapped) and by ``permute_dims``.  Each
# value v of a region may be *stored* permuted: ``stored = permute_dims(v, sigma_v)`` (stored axis j
# is v's axis sigma_v[j]).  Within a region the sigmas are tied: an agnostic op and its operands share
# one, ``y = permute_dims(x, p)`` has ``sigma_y = p^-1 o sigma_x`` and costs nothing (stored y *is*
# stored x).  So one free permutation g fixes them all (``sigma_v = M_v o g``).  Transposes are needed
# only at the region's edge: a value made by another op (a conv, a matmul, a parameter) whose sigma
# is not the identity, and a value read by another op (or returned) whose sigma is not the identity.
# :func:`_plan_regions` picks g with the fewest such edges (ties: the fewest away from the model's
# inputs and outputs; never one right after a convolution, whose epilogue would no longer fuse) and
# rewrites a region only where that beats the permutes it has now.  This is what TVM's ``ConvertLayout`` cannot do, being a forward
# pass with desired layouts for convolutions only: ConvNeXt's ``permute(0, 3, 1, 2)`` after its MLP
# leaves the layer scale and the residual stream NCHW, with a transpose before every depthwise conv.

#: Elementwise ops of one tensor (any further arguments are PrimValues or attributes).
_UNARY = frozenset(f"relax.{name}" for name in (
    "abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "exp", "floor", "log", "negative", "round",
    "rsqrt", "sigmoid", "sign", "sin", "sinh", "sqrt", "square", "tan", "tanh", "clip", "astype", "logical_not",
    "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "nn.leakyrelu", "nn.softplus"))
#: Reductions that keep their rank with ``keepdims=True`` (their axes are remapped).
_REDUCTIONS = frozenset(f"relax.{name}" for name in ("mean", "sum", "max", "min", "prod", "variance", "std"))
_SOFTMAX = frozenset({"relax.nn.softmax", "relax.nn.log_softmax"})


def _rank(expr: relax.Expr) -> int:
    ty = expr.ty
    return int(ty.ndim) if isinstance(ty, relax.TensorType) else -1


def _moves(operand: relax.Expr, rank: int) -> bool:
    """Whether an operand of a layout-agnostic op of ``rank`` is permuted with it: a tensor of that
    rank, or a constant of lower rank (NumPy broadcasting: it gets leading ones, then is permuted)."""
    return _rank(operand) == rank or isinstance(operand, _Constant) and 0 < _rank(operand) < rank


def _agnostic_operands(call: relax.Expr) -> list | None:
    """The tensor operands of ``call`` that move with its layout (Vars and Constants of the output's
    rank; scalars stay) if ``call`` is a layout-agnostic op (region comment above), else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name, rank = call.op.name, _rank(call)
    if rank <= 0:
        return None
    if name in _UNARY or name in _REDUCTIONS or name in _SOFTMAX:
        if _rank(call.args[0]) != rank:
            return None
        if name in _REDUCTIONS and not bool(call.attrs.keepdims):
            return None
        return [call.args[0]]
    if name in _BINARY:
        if any(not _moves(a, rank) and _rank(a) != 0 for a in call.args):
            return None  # a lower-rank tensor broadcast: the layout would change its meaning
        return [a for a in call.args if _moves(a, rank)]
    if name == "relax.nn.layer_norm":
        axes = list(call.attrs.axes)
        if (_rank(call.args[0]) != rank or len(axes) != 1
                or not all(isinstance(a, _Constant) for a in call.args[1:])):
            return None  # with several axes the (gamma, beta) order could change
        return [call.args[0]]
    if name == "relax.concat" and isinstance(call.args[0], relax.Tuple):
        fields = list(call.args[0].fields)
        return fields if all(_rank(f) == rank for f in fields) else None
    return None


def _relayout(call: relax.Call, operands: list, sigma: Sequence[int]) -> relax.Expr:
    """``call`` computed on ``operands`` (its :func:`_agnostic_operands`, already stored permuted by
    ``sigma``): the same op with its axes remapped (logical axis a is stored axis sigma^-1[a])."""
    name, inv = call.op.name, _inverse(sigma)
    rank = len(sigma)

    def axis(a: int) -> int:
        return inv[int(a) % rank]

    if name in _REDUCTIONS:
        axes = None if call.attrs.axis is None else sorted(axis(a) for a in call.attrs.axis)
        return getattr(relax.op, name.split(".")[-1])(operands[0], axes, keepdims=True)
    if name in _SOFTMAX:
        return getattr(relax.op.nn, name.split(".")[-1])(operands[0], axis(call.attrs.axis))
    if name == "relax.nn.layer_norm":
        a = call.attrs
        return relax.op.nn.layer_norm(operands[0], call.args[1], call.args[2], [axis(a.axes[0])], float(a.epsilon),
                                      bool(a.center), bool(a.scale))
    if name == "relax.concat":
        return relax.op.concat(operands, axis=axis(call.attrs.axis))
    it = iter(operands)
    args = [next(it) if _moves(a, rank) else a for a in call.args]
    return relax.Call(call.op, args, call.attrs, call.ty_args)


@dataclass
class _Region:
    """What :class:`_Relayout` needs of the regions it rewrites."""

    sigma: dict  # key -> its sigma; a key is a Var of the block, or (block, Var) for one made outside it
    ops: dict  # Var -> its binding value: an agnostic op, computed on stored operands
    permutes: dict  # Var -> its source's key: the permute becomes an alias of the source's stored value
    logical: set  # ops and permutes read outside the region: their logical value is materialised
    block_of: dict  # Var -> the index of the dataflow block that binds it


def _block_graph(values: dict, key) -> tuple[dict, dict]:
    """The layout graph of one dataflow block: ``edges`` (key -> [(other key, "same" | ("from", p):
    key = permute(other, p) | ("to", p))]) and ``members`` (Var -> ("op", linked operand Vars) |
    ("permute", source Var, axes)), over its permutes and layout-agnostic ops."""
    edges: dict = {}
    members: dict = {}
    for var, value in values.items():
        step = _view_step(value)
        if step is not None and step[0] == "permute" and isinstance(value.args[0], relax.Var):
            members[var] = ("permute", value.args[0], step[1])
            src = key(value.args[0])
            edges.setdefault(var, []).append((src, ("from", step[1])))
            edges.setdefault(src, []).append((var, ("to", step[1])))
            continue
        operands = _agnostic_operands(value)
        if operands is None or any(not isinstance(a, (relax.Var, _Constant)) for a in operands):
            continue
        linked = [a for a in operands if isinstance(a, relax.Var)]
        members[var] = ("op", linked)
        for a in linked:
            edges.setdefault(var, []).append((key(a), "same"))
            edges.setdefault(key(a), []).append((var, "same"))
    return edges, members


def _plan_regions(func: relax.Function) -> _Region | None:
    """The regions of ``func`` worth rewriting (region comment above), merged; None if there is none."""
    blocks = [b for b in func.body.blocks if isinstance(b, relax.DataflowBlock)]
    params = set(func.params)
    plan = _Region({}, {}, {}, set(), {b.var: i for i, block in enumerate(blocks) for b in block.bindings})
    all_values = {b.var: b.value for block in func.body.blocks for b in block.bindings
                  if isinstance(b, relax.VarBinding)}
    for index, block in enumerate(blocks):
        values = {b.var: b.value for b in block.bindings if isinstance(b, relax.VarBinding)}

        def key(v: relax.Var, index=index, values=values):
            return v if v in values else (index, v)  # a parameter or a value of another block

        edges, members = _block_graph(values, key)
        if not members:
            continue
        outside = _read_outside(func, all_values, values, members)
        uses = _use_counts(func)
        returned = _result_vars(func) | {v for v in members if not isinstance(v, relax.DataflowVar)}
        seen: set = set()
        for root in edges:
            if root in seen or not (isinstance(root, relax.Var) and root in members):
                continue
            rel = _relative_sigmas(root, edges)
            seen.update(rel or ())
            if rel is None:
                continue  # two paths disagree (e.g. add(x, permute(x, p))): left as it is
            is_member = {k: isinstance(k, relax.Var) and k in members for k in rel}
            edge = [k for k in rel if not is_member[k]] + [k for k in rel if is_member[k] and k in outside]
            # A transpose on a parameter or into the result is the model's boundary: among placements
            # with as many transposes, the one with the fewest elsewhere wins (DenseNet's BN-ReLU
            # on the input: before it, not after).
            at_boundary = {k for k in edge if isinstance(k, tuple) and k[1] in params or is_member[k] and k in returned}
            permutes = [k for k in rel if is_member[k] and members[k][0] == "permute"
                        and members[k][2] != tuple(range(len(members[k][2])))]
            now = (len(permutes), sum(1 for k in permutes if k not in returned and members[k][1] not in params))
            ident = tuple(range(len(rel[root])))

            def cost(g, rel=rel, edge=edge, ident=ident, at_boundary=at_boundary):
                sig = {k: tuple(rel[k][i] for i in g) for k in rel}
                moved = [k for k in edge if sig[k] != ident]
                return (len(moved), sum(k not in at_boundary for k in moved),
                        sum(s != ident for s in sig.values())), sig

            # A convolution's output read by one op keeps its layout: that op can fuse into it (the
            # Winograd pass's epilogues: bias, activation), which a transpose between would prevent.
            pinned = [k for k in edge if isinstance(k, relax.Var) and _is_conv(values.get(k)) and uses.get(k) == 1]
            options = [c for c in (cost(g) for g in sorted({_inverse(rel[k]) for k in edge} | {ident}))
                       if all(c[1][k] == ident for k in pinned)]
            if not options:
                continue
            (*best, _), sig = min(options, key=lambda c: c[0])
            if tuple(best) >= now:
                continue
            plan.sigma.update(sig)
            for k in rel:
                if not is_member[k]:
                    continue
                if members[k][0] == "op":
                    plan.ops[k] = values[k]
                else:
                    plan.permutes[k] = key(members[k][1])
                if k in outside:
                    plan.logical.add(k)
    return plan if plan.ops or plan.permutes else None


def _is_conv(value: relax.Expr | None) -> bool:
    """Whether ``value`` is a ``conv2d`` (whose epilogue the Winograd pass fuses; ``conv2d_transpose``
    has none, and runs NCHW)."""
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.nn.conv2d"


def _result_vars(func: relax.Function) -> set:
    """The Vars the function's result reads directly (the returned value, a returned tuple's fields)."""
    found: set = set()
    relax.analysis.post_order_visit(func.body.body, lambda e: found.add(e) if isinstance(e, relax.Var) else None)
    return found


def _read_outside(func: relax.Function, all_values: dict, values: dict, members: dict) -> set:
    """The Vars read other than as a region member's moving operand: by other bindings, in other
    blocks, by the function's result, as a scalar operand; and the block's outputs."""
    outside: set = set()

    def note(expr: relax.Expr) -> None:
        relax.analysis.post_order_visit(expr, lambda e: outside.add(e) if isinstance(e, relax.Var) else None)

    for var, value in all_values.items():
        member = members.get(var) if var in values else None
        if member is None:
            note(value)
        elif member[0] == "op":
            for arg in value.args:
                if not isinstance(arg, relax.Tuple) and not any(arg.same_as(x) for x in member[1]):
                    note(arg)
    note(func.body.body)
    return outside | {v for v in members if not isinstance(v, relax.DataflowVar)}


def _relative_sigmas(root, edges: dict) -> dict | None:
    """``{key: M}`` over the region of ``root``, with each value's sigma ``M o g`` for the region's one
    free permutation g (``M`` of ``root`` the identity); None if two paths give a value two ``M``."""
    rel = {root: tuple(range(_rank(root)))}
    queue, consistent = [root], True
    while queue:
        k = queue.pop()
        for other, how in edges.get(k, []):
            m = rel[k]
            if how == "same":
                new = m
            elif how[0] == "from":  # k = permute(other, p): sigma_other = p o sigma_k
                new = tuple(how[1][i] for i in m)
            else:  # other = permute(k, p): sigma_other = p^-1 o sigma_k
                inv = _inverse(how[1])
                new = tuple(inv[i] for i in m)
            if other not in rel:
                rel[other] = new
                queue.append(other)
            elif rel[other] != new:
                consistent = False
    return rel if consistent else None


@relax.expr_functor.mutator
class _Relayout(relax.PyExprMutator):
    """Rewrites the regions planned by :func:`_plan_regions`: each member op computed on stored
    (permuted) operands, each permute an alias, transposes only on the region's edge."""

    def __init__(self, mod: tvm.IRModule, plan: _Region) -> None:
        super().__init__(mod)
        self.plan = plan
        self.stored: dict = {}  # key -> the stored value (a new Var)
        self.block = -1

    def _key(self, var: relax.Var):
        return var if self.plan.block_of.get(var) == self.block else (self.block, var)

    def _stored(self, operand: relax.Var) -> relax.Expr:
        """The stored form of a moving operand (constants: transposed by the caller, at compile time)."""
        k = self._key(operand)
        if k not in self.stored:  # a value made outside the region: one transpose, shared
            sigma = self.plan.sigma[k]
            expr = self.visit_expr(operand)
            self.stored[k] = expr if sigma == tuple(range(len(sigma))) else self.builder_.emit(
                relax.op.permute_dims(expr, list(sigma)))
        return self.stored[k]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, plan = binding.var, self.plan
        if var not in plan.ops and var not in plan.permutes:
            super().visit_var_binding_(binding)
            return
        self.block = plan.block_of[var]
        sigma = plan.sigma[var]
        if var in plan.ops:
            value = plan.ops[var]
            rank = len(sigma)
            operands = []
            for a in _agnostic_operands(value):
                if isinstance(a, _Constant):
                    data = a.value.numpy()
                    data = data.reshape((1,) * (rank - data.ndim) + data.shape)
                    operands.append(relax.const(np.transpose(data, sigma), str(data.dtype)))
                else:
                    operands.append(self._stored(a))
            # the operands that do not move (scalars, PrimValues, layer norm's gamma and beta) as they are
            value = relax.Call(value.op, [a if isinstance(a, relax.Tuple) or _moves(a, rank) else self.visit_expr(a)
                                          for a in value.args], value.attrs, value.ty_args)
            self.stored[var] = self.builder_.emit(_relayout(value, operands, sigma))
        else:
            self.stored[var] = self._stored(binding.value.args[0])
        if var in plan.logical:
            stored = self.stored[var]
            expr = stored if sigma == tuple(range(len(sigma))) else relax.op.permute_dims(stored, list(_inverse(sigma)))
            _bind(self.builder_, self, var, expr)


def _plan_flatten(func: relax.Function) -> dict:
    """``{var: new value}`` for each flatten of a transpose read only by matmuls with constant weights:
    ``reshape(permute_dims(x, p), (N, K)) @ W`` is ``reshape(x, (N, K)) @ W'`` with W's rows in x's
    order (VGG's and AlexNet's NHWC pool output flattened in NCHW order for the classifier)."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings
              if isinstance(b, relax.VarBinding)}
    uses = _use_counts(func)
    users: dict = {}
    for var, value in values.items():
        relax.analysis.post_order_visit(
            value, lambda e, var=var: users.setdefault(e, []).append(var) if isinstance(e, relax.Var) else None)
    plan = {}
    for var, value in values.items():
        step = _view_step(value)
        source = value.args[0] if step is not None and step[0] == "reshape" else None
        if not isinstance(source, relax.DataflowVar) or uses.get(source) != 1 or source not in values:
            continue
        inner = _view_step(values[source])
        x = values[source].args[0]
        x_shape, out = static_shape(x), step[1]
        if inner is None or inner[0] != "permute" or x_shape is None or len(out) != 2:
            continue
        p = inner[1]
        if p[0] != 0 or out != (x_shape[0], int(np.prod(x_shape[1:]))):
            continue
        readers = [values.get(u) for u in users.get(var, [])]
        if (len(readers) != uses.get(var, 0) or not readers
                or not all(isinstance(r, relax.Call) and isinstance(r.op, tvm.ir.Op) and r.op.name == "relax.matmul"
                           and r.args[0].same_as(var) and not r.args[1].same_as(var)
                           and isinstance(r.args[1], _Constant) and len(r.args[1].value.shape) == 2
                           for r in readers)):
            continue
        # Row k of the flattened transpose is element order[k] of x's own flattening.
        order = np.transpose(np.arange(out[1]).reshape(x_shape[1:]), [a - 1 for a in p[1:]]).ravel()
        plan[var] = relax.op.reshape(x, out)
        for u in users[var]:
            weight = values[u].args[1].value.numpy()
            permuted = np.empty_like(weight)
            permuted[order] = weight
            plan[u] = relax.Call(values[u].op, [var, relax.const(permuted, str(weight.dtype))], values[u].attrs,
                                 values[u].ty_args)
    return plan


@relax.expr_functor.mutator
class _Rebind(relax.PyExprMutator):
    """Gives the planned Vars their new values (free Vars in them remapped)."""

    def __init__(self, mod: tvm.IRModule, plan: dict) -> None:
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.plan:
            _bind(self.builder_, self, binding.var, self.visit_expr(self.plan[binding.var]))
        else:
            super().visit_var_binding_(binding)


def collapse_permutes(mod: tvm.IRModule, rounds: int = 8) -> tvm.IRModule:
    """Step 3 of the module docstring on every Relax function of ``mod``: chains become their
    :class:`View` (:func:`_plan_collapse`); where none is left, a flatten of a transpose into matmuls
    permutes their weights instead (:func:`_plan_flatten`); then regions of layout-agnostic ops move
    to the layout that needs fewest transposes (:func:`_plan_regions`); repeated while any finds
    work (at most ``rounds`` times: a collapsed chain can join a region); dead links are removed."""
    for _ in range(rounds):
        changed = False
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            views = _plan_collapse(func)
            flatten = {} if views else _plan_flatten(func)
            regions = None if views or flatten else _plan_regions(func)
            if not views and not flatten and regions is None:
                continue
            mutator = _Collapse(mod, views) if views else _Rebind(mod, flatten) if flatten else _Relayout(mod, regions)
            new_func = mutator.visit_expr(func)
            mod = mutator.builder_.get()
            mod[gv] = new_func
            changed = True
            if views:
                logger.debug("%s: %d permute/reshape chains collapsed", gv.name_hint, len(views))
            elif flatten:
                logger.debug("%s: %d flattens read their source's layout (weights permuted)", gv.name_hint,
                             len(flatten))
            else:
                logger.debug("%s: %d ops and %d permutes moved to another layout", gv.name_hint,
                             len(regions.ops), len(regions.permutes))
        mod = relax.transform.FoldConstant()(remove_dead_code(mod))
        if not changed:
            break
    return mod


# ------------------------------------------------------------------------------------------------
# The conversion, and what it leaves
# ------------------------------------------------------------------------------------------------

def convert_layout(mod: tvm.IRModule, layout: str) -> tvm.IRModule:
    """Convert every ``conv2d`` of ``mod`` to ``layout`` (``"NHWC"`` with HWIO weights, or
    ``"NCHW"`` with OIHW) and let the ops between convolutions follow it (module docstring):
    :func:`register_layout_rules`, :func:`prepare_for_layout`, TVM's ``ConvertLayout`` (with
    ``conv2d_transpose`` pinned to :data:`CONV_TRANSPOSE_LAYOUT`), ``FoldConstant`` (the weights'
    transposes), :func:`collapse_permutes`."""
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout {layout!r} is not one of NHWC, NCHW")
    register_layout_rules()
    mod = prepare_for_layout(mod)
    desired = {"relax.nn.conv2d": [layout, "HWIO" if layout == "NHWC" else "OIHW"],
               "relax.nn.conv2d_transpose": list(CONV_TRANSPOSE_LAYOUT)}
    mod = relax.transform.ConvertLayout(desired)(mod)
    mod = relax.transform.FoldConstant()(mod)
    return collapse_permutes(mod)


def count_layout_transforms(mod: tvm.IRModule, func_name: str = "main") -> int:
    """The ``permute_dims`` / ``layout_transform`` calls of ``mod[func_name]`` on non-constant data:
    the transposes a compiled model runs (those of constant weights are folded at compile time)."""
    count = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal count
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name in (_PERMUTE, _LAYOUT_TRANSFORM) and not isinstance(expr.args[0], _Constant)):
            count += 1

    relax.analysis.post_order_visit(mod[func_name].body, visit)
    return count


def layout_transform_sites(mod: tvm.IRModule, func_name: str = "main") -> dict[str, int]:
    """Where the layout transforms of :func:`count_layout_transforms` sit: ``{"input": n, "output": n,
    "inside": n}``.  A transform is at the input if its data comes from a parameter of the function
    through data movement only (``permute_dims`` / ``reshape`` / ``layout_transform``), at the output
    if its result reaches the function's result that way, else inside the model (the ones
    :func:`convert_layout` should leave none of)."""
    func = mod[func_name]
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings
              if isinstance(b, relax.VarBinding)}

    def moves(value: relax.Expr) -> bool:
        return (isinstance(value, relax.Var) or isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name in (_PERMUTE, _RESHAPE, _LAYOUT_TRANSFORM))

    def source(value: relax.Expr) -> relax.Expr:
        return value if isinstance(value, relax.Var) else value.args[0]

    from_input = set(func.params)
    for var, value in values.items():  # bindings are in order: one pass follows each chain forwards
        if moves(value) and source(value) in from_input:
            from_input.add(var)
    to_output: set = set()
    pending: list = []
    relax.analysis.post_order_visit(func.body.body, lambda e: pending.append(e) if isinstance(e, relax.Var) else None)
    while pending:
        var = pending.pop()
        if var in to_output:
            continue
        to_output.add(var)
        value = values.get(var)
        if value is not None and moves(value) and isinstance(source(value), relax.Var):
            pending.append(source(value))
    sites = {"input": 0, "output": 0, "inside": 0}
    for var, value in values.items():
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name in (_PERMUTE, _LAYOUT_TRANSFORM) and not isinstance(value.args[0], _Constant)):
            site = "input" if value.args[0] in from_input else "output" if var in to_output else "inside"
            sites[site] += 1
    return sites
