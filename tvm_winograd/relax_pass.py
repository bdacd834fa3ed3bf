"""The Relax rewrite: every eligible ``relax.nn.conv2d`` of a model becomes a Winograd ``call_tir``.

For each ``conv2d`` binding (in dataflow blocks, after the frontend):

1. Its :class:`~tvm_winograd.workload.Conv2dSpec` is made from the static shapes and attributes;
   a dynamic shape, a non-constant weight or an unsupported layout leaves it as it is, with the
   reason in the report.
2. The epilogue is fused when the intermediate value has no other user: ``conv (+ bias) (+ residual)
   (+ activation)``, where bias is an ``add`` of a constant of shape (K,), (K,1,1) or (1,K,1,1) (NCHW) /
   (K,), (1,1,1,K) (NHWC), residual is an ``add`` of another tensor of the output's shape, and the
   activation is ``relu`` or one of :data:`tvm_winograd.activations.ACTIVATIONS` (ReLU6 as
   ``minimum(maximum(y, 0), 6)``, SiLU as ``y * sigmoid(y)``, ``sigmoid``, ``tanh``).
3. The algorithm: ``algo="winograd"`` / ``"direct"`` force it (ineligible layers stay direct);
   ``"auto"`` takes the measured choice from ``choices.json`` (keyed by :meth:`Conv2dSpec.key`) when
   there is one, else :func:`~tvm_winograd.heuristic.choose_algorithm` (the one heuristic).
4. Winograd layers become ``call_tir(winograd_func)`` on the pre-transformed weight
   ``call_tir(weight_transform_func, [constant weight])``: ``relax.transform.FoldConstant``
   evaluates the latter at compile time, so the deployed module carries ``kernel_pack`` constants
   and does no weight transform at run time.

Layers chosen *direct* (eligible shape, but the heuristic or a measurement prefers direct, or
``algo="direct"``) become ``call_tir(direct_func)`` with the same fused epilogue: that is the very
PrimFunc the tuner measures for the direct candidate, so its tuning records apply.  Layers that cannot
run Winograd at all (stride, groups, dilation, 1x1, dynamic shapes...) stay ``relax.nn.conv2d`` and
are lowered by TVM's own legalization and fusion.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace

import numpy as np
import tvm
from tvm import relax, tirx

from .compute import (Epilogue, check_kernel_dtype, kernel_dtype_for, kernel_pack_shape, target_config,
                      weight_transform_func, winograd_func)
from .relax_layout import convert_layout, static_shape
from .targets import resolve_target
from .tune.candidates import candidate_func
from .tune.choices import AlgorithmChoice, load_choices
from .tune.paths import schedules_dir as schedules_dir_for
from .heuristic import TargetLike, cheapest_tile, choose_algorithm
from .workload import Conv2dSpec, make_spec, winograd_ineligibility

__all__ = [
    "Bindings",
    "LayerReport",
    "ConvWorkload",
    "conv_workloads",
    "model_workloads",
    "rewrite_winograd",
    "winograd_pass",
    "format_report",
    "ALGOS",
]

logger = logging.getLogger(__name__)

ALGOS = ("auto", "winograd", "direct")
#: ``layout`` choices of :func:`convert_conv_layout`.
CONV_LAYOUTS = ("auto", "NCHW", "NHWC", "keep")
INELIGIBLE_LOWERINGS = ("relax", "tir")


@dataclass(frozen=True)
class LayerReport:
    """What the pass did with one ``conv2d`` (in program order).

    ``source`` says where the decision came from: ``tuned`` (choices.json), ``heuristic``
    (:func:`choose_algorithm`), ``override`` (the ``algo`` argument) or ``ineligible``.
    ``lowering`` is ``winograd`` / ``direct_tir`` (our direct PrimFunc) / ``relax`` (left as
    ``relax.nn.conv2d``).
    """

    index: int
    name: str
    input_shape: tuple
    weight_shape: tuple
    kernel: str
    stride: tuple
    groups: int
    algorithm: str  # winograd | direct
    m: int | None
    reason: str
    source: str  # tuned | heuristic | override | ineligible
    lowering: str  # winograd | direct_tir | relax
    epilogue: str = "none"
    key: str | None = None
    func: str | None = None  # name of the PrimFunc called, if any
    kernel_dtype: str | None = None  # a Winograd layer's storage of U (kernel_pack)

    def as_dict(self) -> dict:
        return asdict(self)


def format_report(reports: list[LayerReport]) -> str:
    """The per-layer report as a markdown table."""
    lines = ["| # | layer | input | weight | stride | groups | algorithm | m | epilogue | source | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        shape = lambda s: "x".join(str(v) for v in s)  # noqa: E731
        lines.append(
            f"| {r.index} | {r.name} | {shape(r.input_shape)} | {shape(r.weight_shape)} | "
            f"{r.stride[0]}x{r.stride[1]} | {r.groups} | {r.algorithm} | {r.m if r.m is not None else '-'} | "
            f"{r.epilogue} | {r.source} | {r.reason} |"
        )
    n_wino = sum(r.algorithm == "winograd" for r in reports)
    lines.append(f"\n{n_wino} of {len(reports)} convolutions use Winograd.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Matching conv2d and its epilogue
# ------------------------------------------------------------------------------------------------

_CONV = tvm.ir.Op.get("relax.nn.conv2d")
_ADD = tvm.ir.Op.get("relax.add")
_RELU = tvm.ir.Op.get("relax.nn.relu")


_MAXIMUM = tvm.ir.Op.get("relax.maximum")
_MINIMUM = tvm.ir.Op.get("relax.minimum")
_MULTIPLY = tvm.ir.Op.get("relax.multiply")
_SIGMOID = tvm.ir.Op.get("relax.sigmoid")
_TANH = tvm.ir.Op.get("relax.tanh")


def _scalar(expr: relax.Expr) -> float | None:
    """The value of a constant with one element, else None."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return float(value.reshape(())) if value.size == 1 else None


def _activation_after(var: relax.Var, graph: Bindings):
    """``(name, bindings)`` of an activation of :mod:`tvm_winograd.activations` applied to ``var``
    and to nothing else: ``tanh``, ``sigmoid``, ``max(min(y, 6), 0)`` in either order (ONNX Clip(0, 6),
    as :func:`~tvm_winograd.relax_layout.prepare_for_layout` raises it), ``y * sigmoid(y)`` (SiLU);
    None if there is none. Every intermediate must have no other user."""
    only_users, call = graph.only_users, graph.call
    one = only_users(var, 1)
    first = call(one[0]) if one else None
    if first is not None and first.op in (_TANH, _SIGMOID):
        return ("tanh" if first.op == _TANH else "sigmoid"), [one[0]]
    if first is not None and first.op in (_MAXIMUM, _MINIMUM) and first.args[0].same_as(var):
        second_var = only_users(one[0], 1)
        second = call(second_var[0]) if second_var else None
        if second is not None and {first.op, second.op} == {_MAXIMUM, _MINIMUM} and second.args[0].same_as(one[0]):
            bounds = {first.op: _scalar(first.args[1]), second.op: _scalar(second.args[1])}
            if bounds[_MAXIMUM] == 0.0 and bounds[_MINIMUM] == 6.0:
                return "relu6", [one[0], second_var[0]]
    two = only_users(var, 2)
    if two:
        gate = next((u for u in two if call(u) is not None and call(u).op == _SIGMOID), None)
        product = next((u for u in two if gate is None or not u.same_as(gate)), None)
        value = call(product)
        if gate is not None and value is not None and value.op == _MULTIPLY and only_users(gate, 1):
            a, b = value.args
            if (a.same_as(var) and b.same_as(gate)) or (a.same_as(gate) and b.same_as(var)):
                return "silu", [gate, product]
    return None


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _ints(arr) -> tuple[int, ...]:
    return tuple(int(v) for v in arr)


def _conv_spec(call: relax.Call) -> tuple[Conv2dSpec | None, str, tuple, tuple]:
    """``(spec, reason)``: the spec of a conv2d call, or None and why it cannot have one."""
    data, weight = call.args
    attrs = call.attrs
    in_shape, w_shape = static_shape(data), static_shape(weight)
    shown_in = in_shape if in_shape is not None else tuple(str(v) for v in getattr(data.ty.shape, "values", []))
    shown_w = w_shape if w_shape is not None else tuple(str(v) for v in getattr(weight.ty.shape, "values", []))
    if in_shape is None or w_shape is None:
        return None, "dynamic shape: Winograd needs static shapes", shown_in, shown_w
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts not in (("NCHW", "OIHW", "NCHW"), ("NHWC", "HWIO", "NHWC")):
        return None, f"layouts {layouts} (data, kernel, out): supported are NCHW/OIHW and NHWC/HWIO", in_shape, w_shape
    if not isinstance(weight, tvm.ir.expr.Constant):
        return None, "weight is not a compile-time constant (bind the parameters first)", in_shape, w_shape
    out_dtype = str(attrs.out_dtype) if str(attrs.out_dtype) not in ("", "void", "None") else None
    try:
        spec = make_spec(in_shape, w_shape, padding=_ints(attrs.padding), stride=_ints(attrs.strides),
                         dilation=_ints(attrs.dilation), groups=int(attrs.groups), layout=layouts[0],
                         dtype=_dtype(data), out_dtype=out_dtype)
    except (ValueError, NotImplementedError) as err:
        return None, str(err), in_shape, w_shape
    if _dtype(weight) != spec.dtype:
        return None, f"weight dtype {_dtype(weight)} differs from data dtype {spec.dtype}", in_shape, w_shape
    return spec, "", in_shape, w_shape


def _bias_vector(expr: relax.Expr, spec: Conv2dSpec) -> np.ndarray | None:
    """The (K,) bias if ``expr`` is a constant broadcasting along the output channels only."""
    if not isinstance(expr, tvm.ir.expr.Constant) or _dtype(expr) != spec.out_dtype:
        return None
    value = expr.value.numpy()
    k = spec.out_channels
    if value.size != k or k == 1:
        return None
    nchw = spec.layout == "NCHW"
    ok_shapes = {(k,), (1, k, 1, 1), (k, 1, 1)} if nchw else {(k,), (1, 1, 1, k), (1, 1, k)}
    if value.shape not in ok_shapes:
        return None
    return np.ascontiguousarray(value.reshape(k))


# ------------------------------------------------------------------------------------------------
# Decisions
# ------------------------------------------------------------------------------------------------

def _decide(spec: Conv2dSpec, algo: str, choices: dict[str, AlgorithmChoice],
            target: TargetLike) -> tuple[str, int | None, str, str]:
    """``(algorithm, m, reason, source)`` for an eligible spec (the heuristic's costs depend on the
    target: only llvm has the fused schedule, and the CPU's FMA rate weighs the weights' DRAM reads)."""
    if algo == "direct":
        return "direct", None, "algo='direct' requested", "override"
    if algo == "winograd":
        m = cheapest_tile(spec, target)  # the heuristic's m where it picks Winograd
        return "winograd", m, f"algo='winograd' requested: F({m},{spec.r})", "override"
    choice = choices.get(spec.key())
    if choice is not None:
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(choice.times_ms.items()))
        what = f"F({choice.m},{spec.r})" if choice.algorithm == "winograd" else "direct"
        return choice.algorithm, choice.m, f"measured: {what} fastest" + (f" ({times})" if times else ""), "tuned"
    algorithm, m, reason = choose_algorithm(spec, target)
    return algorithm, m, reason, "heuristic"


# ------------------------------------------------------------------------------------------------
# The rewrite
# ------------------------------------------------------------------------------------------------

def _func_name(prefix: str, spec: Conv2dSpec, m: int | None, epilogue: Epilogue | None) -> str:
    name = f"{prefix}_{spec.key()}"
    if m is not None:
        name += f"_m{m}"
    if epilogue is not None:
        name += f"_{epilogue.tag()}"
    return name.replace(".", "_")


def _strip_symbol(func: tirx.PrimFunc) -> tirx.PrimFunc:
    # compute.py names every PrimFunc "main"; inside a Relax module the GlobalVar names it.
    # (MetaSchedule's normalize_mod adds "main" back when it looks a workload up, so tuning records
    # made from the compute functions still match.)
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return func


@relax.expr_functor.mutator
class _WinogradMutator(relax.PyExprMutator):
    """Rewrites the conv2d chains planned by :func:`_plan` (one Relax function at a time)."""

    def __init__(self, mod: tvm.IRModule, plan: dict, skip: set, funcs: dict, target_kind: str = "llvm",
                 kernel_dtype: str | None = None) -> None:
        super().__init__(mod)
        self.target_kind = target_kind  # selects the kernel_pack layout (compute.kernel_block_for)
        self.kernel_dtype = kernel_dtype  # the requested storage of U (compute.kernel_dtype_for)
        self.plan = plan  # chain-end Var -> layer plan
        self.skip = skip  # Vars whose bindings disappear into a fused call
        self.funcs = funcs  # PrimFunc name -> GlobalVar (shared over the module)

    def _gv(self, name: str, make) -> relax.GlobalVar:
        if name not in self.funcs:
            self.funcs[name] = self.builder_.add_func(_strip_symbol(make()), name)
        return self.funcs[name]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var = binding.var
        if var in self.skip:
            return
        layer = self.plan.get(var)
        if layer is None:
            super().visit_var_binding_(binding)
            return
        spec: Conv2dSpec = layer["spec"]
        epi: Epilogue = layer["epilogue"]
        data = self.visit_expr(layer["data"])
        args: list[relax.Expr] = [data]
        if layer["algorithm"] == "winograd":
            config = target_config(spec, layer["m"], self.target_kind,
                                   kernel_dtype=kernel_dtype_for(spec, layer["m"], self.kernel_dtype))
            wt = self._gv(_func_name("weight_transform", spec, config.m, None),
                          lambda: weight_transform_func(spec, config))
            layer["kernel_dtype"] = config.resolved_kernel_dtype(spec)
            pack_type = relax.TensorType(kernel_pack_shape(spec, config.m, config.kernel_block), layer["kernel_dtype"])
            kernel_pack = self.builder_.emit(relax.call_tir(wt, [layer["weight"]], pack_type), "kernel_pack")
            args.append(kernel_pack)
            gv = self._gv(_func_name("winograd", spec, config.m, epi), lambda: winograd_func(spec, config, epi))
        else:
            args.append(layer["weight"])
            gv = self._gv(_func_name("direct", spec, None, epi),
                          lambda: candidate_func(spec, "direct", epi, self.target_kind))
        if epi.bias:
            args.append(relax.const(layer["bias"], spec.dtype))
        if epi.residual:
            args.append(self.visit_expr(layer["residual"]))
        layer["func"] = gv.name_hint
        call = relax.call_tir(gv, args, relax.TensorType(spec.output_shape, spec.out_dtype))
        name = str(var.name)
        if self.builder_.current_block_is_dataflow() and not isinstance(var, relax.DataflowVar):
            new_var = self.builder_.emit_output(call, name)
        else:
            new_var = self.builder_.emit(call, name)
        self.set_var_remap(var, new_var)


def _use_counts(func: relax.Function) -> dict:
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


class Bindings:
    """The variable bindings of one Relax function: values, users and use counts, in program order."""

    def __init__(self, func: relax.Function) -> None:
        self.values: dict = {}
        self.users: dict = {}
        self.order: list = []
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.values[binding.var] = binding.value
                self.order.append(binding.var)
                if isinstance(binding.value, relax.Call):
                    for arg in binding.value.args:
                        if isinstance(arg, relax.Var):
                            self.users.setdefault(arg, []).append(binding.var)
        # Vars read by the function's result (outside bindings) count as extra users.
        self.counts = _use_counts(func)
        self.claimed: set = set()  # bindings already fused into a chain

    def only_users(self, var, n: int) -> list | None:
        """The ``n`` bindings using ``var``, if it is used exactly ``n`` times (the function's result
        counts) and no chain has taken any of them; else None."""
        us = self.users.get(var, [])
        if len(us) == n and self.counts.get(var, 0) == n and not any(u in self.claimed for u in us):
            return us
        return None

    def sole_user(self, var):
        """The one binding using ``var``, if it is used once and no chain has taken that binding."""
        us = self.only_users(var, 1)
        return us[0] if us else None

    def call(self, var) -> relax.Call | None:
        """The call ``var`` is bound to, else None."""
        value = self.values.get(var) if var is not None else None
        return value if isinstance(value, relax.Call) else None

    def is_call(self, var, op) -> bool:
        call = self.call(var)
        return call is not None and call.op == op


def _grow_chain(graph: Bindings, var, spec: Conv2dSpec, skip: set) -> tuple[list, np.ndarray | None, object, bool,
                                                                             str | None]:
    """``(chain, bias, residual, relu, activation)``: the epilogue chain conv (+bias) (+residual)
    (+relu or an activation of :func:`_activation_after`) from the conv binding ``var``, each step only if the value so far has exactly one user (so nothing else
    needs the intermediate) and no earlier chain took that binding (add(conv_a, conv_b) is fused into
    conv_a's call only).  The chain's last Var is the value the fused call replaces."""
    end, bias, residual, relu = var, None, None, False
    chain = [var]
    nxt = graph.sole_user(end)
    if graph.is_call(nxt, _ADD):
        a, b = graph.values[nxt].args
        other = b if a.same_as(end) else a
        vec = _bias_vector(other, spec)
        if vec is not None:
            bias, end = vec, nxt
            chain.append(nxt)
            nxt = graph.sole_user(end)
    if graph.is_call(nxt, _ADD):
        a, b = graph.values[nxt].args
        other = b if a.same_as(end) else a
        if (not a.same_as(b) and not isinstance(other, tvm.ir.expr.Constant) and other not in skip
                and static_shape(other) == spec.output_shape and _dtype(other) == spec.out_dtype):
            residual, end = other, nxt
            chain.append(nxt)
            nxt = graph.sole_user(end)
    activation = None
    if graph.is_call(nxt, _RELU):
        relu, end = True, nxt
        chain.append(nxt)
    else:
        found = _activation_after(end, graph)
        if found is not None:
            activation, steps = found
            chain.extend(steps)
    return chain, bias, residual, relu, activation


def _report_fields(index: int, var, call: relax.Call, in_shape: tuple, w_shape: tuple) -> dict:
    """The :class:`LayerReport` fields every conv2d has, planned or not."""
    attrs = call.attrs
    kernel = w_shape[2:] if str(attrs.kernel_layout) == "OIHW" else w_shape[:2]
    return dict(index=index, name=str(var.name), input_shape=tuple(in_shape), weight_shape=tuple(w_shape),
                kernel="x".join(str(v) for v in kernel), stride=_ints(attrs.strides), groups=int(attrs.groups))


def _plan(func: relax.Function, algo: str, choices: dict, reports: list[LayerReport],
          ineligible: str = "relax", target: TargetLike = "llvm") -> tuple[dict, set]:
    """Find every conv2d of ``func``; decide; record the chains to rewrite."""
    graph = Bindings(func)
    plan: dict = {}
    skip: set = set()
    for var in graph.order:
        value = graph.values[var]
        if not (isinstance(value, relax.Call) and value.op == _CONV):
            continue
        index = len(reports)
        spec, why_not, in_shape, w_shape = _conv_spec(value)
        common = _report_fields(index, var, value, in_shape, w_shape)
        if spec is None:
            reports.append(LayerReport(**common, algorithm="direct", m=None, reason=why_not, source="ineligible",
                                       lowering="relax"))
            continue
        why = winograd_ineligibility(spec)
        if why is not None and ineligible == "relax":
            reports.append(LayerReport(**common, algorithm="direct", m=None, reason=why[1], source="ineligible",
                                       lowering="relax", key=spec.key()))
            continue
        if why is not None:
            algorithm, m, reason, source = "direct", None, why[1], "ineligible"
        else:
            algorithm, m, reason, source = _decide(spec, algo, choices, target)
        chain, bias, residual, relu, activation = _grow_chain(graph, var, spec, skip)
        graph.claimed.update(chain)
        epi = Epilogue(bias=bias is not None, residual=residual is not None, relu=relu, activation=activation)
        data, weight = value.args
        plan[chain[-1]] = dict(spec=spec, algorithm=algorithm, m=m, epilogue=epi, data=data, weight=weight,
                               bias=bias, residual=residual, report_index=index)
        skip.update(chain[:-1])
        reports.append(LayerReport(**common, algorithm=algorithm, m=m if algorithm == "winograd" else None,
                                   reason=reason, source=source,
                                   lowering="winograd" if algorithm == "winograd" else "direct_tir",
                                   epilogue=epi.tag(), key=spec.key()))
    return plan, skip


@dataclass(frozen=True)
class ConvWorkload:
    """One conv2d chain the pass lowers to a ``call_tir`` (Winograd or our direct PrimFunc).

    ``spec`` and ``epilogue`` are what the called PrimFunc is made from (so what tuning records are
    looked up by); ``report`` is the layer's :class:`LayerReport` (name, algorithm, m, reason...).
    """

    spec: Conv2dSpec
    epilogue: Epilogue
    report: LayerReport


def _check_and_fold(mod: tvm.IRModule, target: object, schedules_dir: str | os.PathLike | None, algo: str,
                    ineligible: str) -> tuple[tvm.IRModule, dict[str, AlgorithmChoice]]:
    """Validate the pass's arguments; the measured choices (for ``algo="auto"``) and the folded module."""
    if algo not in ALGOS:
        raise ValueError(f"algo {algo!r} is not one of {', '.join(ALGOS)}")
    if ineligible not in INELIGIBLE_LOWERINGS:
        raise ValueError(f"ineligible {ineligible!r} is not one of {', '.join(INELIGIBLE_LOWERINGS)}")
    if not isinstance(mod, tvm.IRModule):
        raise ValueError(f"expected a Relax IRModule, got {type(mod).__name__}")
    tgt = resolve_target(target)
    sdir = schedules_dir_for(tgt, schedules_dir)
    choices = load_choices(sdir)
    if choices:
        logger.info("using %d measured algorithm choices from %s", len(choices), sdir)
    return relax.transform.FoldConstant()(mod), choices


def conv_layout_for(target: object, layout: str = "auto") -> str | None:
    """The conv2d layout a model is compiled in: ``"NHWC"`` on CPUs for ``"auto"`` (the CPU
    schedules vectorize channels, contiguous in NHWC: ResNet-18 measured 55 ms NCHW vs 33 ms NHWC
    on this 2-core machine), the model's own on GPUs; ``None`` = leave the model's layout."""
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(CONV_LAYOUTS)}")
    if layout == "auto":
        return "NHWC" if resolve_target(target).kind.name == "llvm" else None
    return None if layout == "keep" else layout


def convert_conv_layout(mod: tvm.IRModule, target: object = "llvm", layout: str = "auto") -> tvm.IRModule:
    """Convert every ``relax.nn.conv2d`` of ``mod`` to the layout :func:`conv_layout_for` picks
    (NHWC data with HWIO weights, or NCHW/OIHW) with :func:`tvm_winograd.relax_layout.convert_layout`:
    the ops between convolutions follow, the weights' transposes are folded, and transposes remain
    at the model's inputs and outputs (and around ``conv2d_transpose``, which TVM lowers in NCHW
    only); :func:`~tvm_winograd.relax_layout.count_layout_transforms` counts them."""
    want = conv_layout_for(target, layout)
    if want is None:
        return mod
    return convert_layout(mod, want)


def conv_workloads(
    mod: tvm.IRModule,
    target: object = "llvm",
    schedules_dir: str | os.PathLike | None = None,
    algo: str = "auto",
    *,
    ineligible: str = "relax",
) -> list[ConvWorkload]:
    """The conv2d chains :func:`rewrite_winograd` would lower to a ``call_tir``, without rewriting.

    The same eligibility checks, epilogue fusion and decisions as :func:`rewrite_winograd` (same
    arguments), in program order over every Relax function of ``mod``.  Layers left
    ``relax.nn.conv2d`` are not listed (``rewrite_winograd``'s report has them).  With
    ``algo="winograd"`` and ``ineligible="relax"`` these are exactly the Winograd-eligible layers.
    """
    mod, choices = _check_and_fold(mod, target, schedules_dir, algo, ineligible)
    reports: list[LayerReport] = []
    planned: list[tuple[int, Conv2dSpec, Epilogue]] = []
    tgt = resolve_target(target)
    for _gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        plan, _skip = _plan(func, algo, choices, reports, ineligible, tgt)
        planned.extend((layer["report_index"], layer["spec"], layer["epilogue"]) for layer in plan.values())
    return [ConvWorkload(spec, epi, reports[index]) for index, spec, epi in sorted(planned, key=lambda t: t[0])]


def model_workloads(mod: tvm.IRModule, target: object = "llvm",
                    layout: str = "auto") -> list[tuple[Conv2dSpec, Epilogue, list[str]]]:
    """Distinct ``(spec, epilogue, layer names)`` of the Winograd-eligible convolutions of ``mod``,
    in the conv layout compilation uses (``layout``: see :func:`convert_conv_layout`): what
    :func:`tvm_winograd.tune.model.tune_model` tunes."""
    found: dict[tuple, tuple[Conv2dSpec, Epilogue, list[str]]] = {}
    for work in conv_workloads(convert_conv_layout(mod, target, layout), target, algo="winograd"):
        entry = found.setdefault((work.spec, work.epilogue), (work.spec, work.epilogue, []))
        entry[2].append(work.report.name)
    return list(found.values())


def rewrite_winograd(
    mod: tvm.IRModule,
    target: object = "llvm",
    schedules_dir: str | os.PathLike | None = None,
    algo: str = "auto",
    *,
    ineligible: str = "relax",
    kernel_dtype: str | None = None,
) -> tuple[tvm.IRModule, list[LayerReport]]:
    """Rewrite the conv2d layers of every Relax function of ``mod``; return the module and a report.

    Parameters
    ----------
    mod
        A Relax IRModule with constant (bound) weights, as :func:`tvm_winograd.frontend.load_model`
        returns it.  ``FoldConstant`` is run first so that the frontend's bias reshapes are constants.
    target
        What the choices are for (anything :func:`~tvm_winograd.targets.resolve_target` accepts);
        selects ``schedules/<target_dirname>/choices.json``.
    schedules_dir
        The per-target schedules directory or its parent; ``None``: ``./schedules``
        (:func:`tvm_winograd.tune.paths.schedules_dir`, where ``tune`` writes).
    algo
        ``"auto"`` (measurement, else heuristic), ``"winograd"`` (every eligible layer) or
        ``"direct"``.
    ineligible
        What becomes of a static conv2d with constant weights that Winograd cannot run (stride,
        groups, dilation, 1x1...): ``"relax"`` (default) leaves it ``relax.nn.conv2d`` for TVM's
        own lowering; ``"tir"`` lowers it to our direct PrimFunc (fused epilogue, default or tuned
        schedule).  Dynamic shapes, non-constant weights and other layouts always stay Relax.
    kernel_dtype
        Storage of the transformed weights U: ``None`` / ``"float32"`` (default) or ``"float16"``
        (opt-in, CPU targets: fp32 layers keep fp32 data, transforms and accumulation, and read half the
        bytes of U; :func:`~tvm_winograd.compute.kernel_dtype_for` says which layers take it).

    Returns
    -------
    (IRModule, list[LayerReport])
        The rewritten module still holds the weight-transform ``call_tir`` on constants; run
        ``relax.transform.FoldConstant`` (``compile_model`` does) to evaluate them at compile time.
    """
    tgt = resolve_target(target)
    check_kernel_dtype(kernel_dtype, tgt.kind.name)
    mod, choices = _check_and_fold(mod, target, schedules_dir, algo, ineligible)
    reports: list[LayerReport] = []
    funcs: dict = {}
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        plan, skip = _plan(func, algo, choices, reports, ineligible, tgt)
        if not plan:
            continue
        mutator = _WinogradMutator(mod, plan, skip, funcs, tgt.kind.name, kernel_dtype)
        new_func = mutator.visit_expr(func)
        mod = mutator.builder_.get()
        mod[gv] = new_func
        for layer in plan.values():
            reports[layer["report_index"]] = replace(reports[layer["report_index"]], func=layer.get("func"),
                                                     kernel_dtype=layer.get("kernel_dtype"))
    for r in reports:
        logger.info("conv %d %s %s: %s%s (%s; %s)", r.index, r.name, r.key or r.input_shape, r.algorithm,
                    f" m={r.m}" if r.m else "", r.source, r.reason)
    return mod, reports


def winograd_pass(target: object = "llvm", schedules_dir: str | os.PathLike | None = None, algo: str = "auto",
                  reports: list | None = None, ineligible: str = "relax") -> tvm.transform.Pass:
    """:func:`rewrite_winograd` as a ``tvm.transform`` module pass (the report is appended to ``reports``)."""

    @tvm.transform.module_pass(opt_level=0, name="WinogradRewrite")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        new_mod, rep = rewrite_winograd(mod, target, schedules_dir, algo, ineligible=ineligible)
        if reports is not None:
            reports.extend(rep)
        return new_mod

    return _pass
