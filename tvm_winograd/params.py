"""Weights outside the library (``compile --params separate``): the compile side.

By default :func:`tvm_winograd.export.compile_model` binds every weight as a constant and folds the
weight transforms (Winograd's U = G g G_T, the direct convolutions' packing) at compile time, so the
library carries the *transformed* weights: for F(4,3) 36/9 = 4x the 3x3 weights.  With separate
params:

1. :func:`weights_as_inputs` turns the floating-point tensor constants of ``main`` (weights, biases:
   what the Winograd pass has bound, before its weight transforms are folded) into parameters of
   ``main`` after its inputs (``num_input`` says where the inputs end), and keeps their values in the
   function's ``"params"`` attribute, as TVM's frontends do with ``keep_params_in_input``;
2. the scheduling steps run as usual (our weight-transform PrimFuncs get their default schedule; the
   direct convolutions' weight packing is split off but, on a non-constant weight, not folded);
3. :func:`lift_weight_transforms` detaches the values and runs Relax's ``LiftTransformParams``: every
   computation of ``main`` that depends on the weights alone (the Winograd weight transforms, the
   packing) moves into ``main_transform_params``, which takes the tuple of weights and returns the
   tuple of transformed ones; ``main`` takes its inputs, then the transformed weights.

The runtime (:func:`tvm_winograd.runtime.load_vm`) calls ``main_transform_params`` once at load, on
the target device, and passes its results to every call of ``main``.  The params file
(:func:`write_params`) is TVM's own parameter-dict format (``tvm.runtime.save_param_dict``, which the
runtime library alone loads), holding the weights in the model's dtype and in the layout the library
takes them (on CPUs the convolutions' HWIO, output channels zero-padded where the compile pads them),
named ``param_<i>`` in the order of ``main``'s parameters.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .runtime import TRANSFORM_FUNC

__all__ = ["PARAMS_MODES", "check_params_mode", "TRANSFORM_FUNC", "PARAMS_ATTR", "weights_as_inputs",
           "lift_weight_transforms", "write_params", "params_path_for"]

#: ``embed``: the weights (transformed at compile time) inside the library, the default;
#: ``separate``: the library without weights, plus a params file; transforms run at load.
PARAMS_MODES = ("embed", "separate")
#: The function attribute holding the values of the lifted weights (TVM's frontends' name).
PARAMS_ATTR = "params"


def check_params_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`PARAMS_MODES`, else a one-line ValueError."""
    if mode not in PARAMS_MODES:
        raise ValueError(f"params {mode!r} is not one of {', '.join(PARAMS_MODES)}")
    return mode


def _is_weight(const: tvm.ir.expr.Constant) -> bool:
    """A floating-point constant of rank >= 1 (scalars and integer constants stay in the library)."""
    value = const.value
    return isinstance(value, tvm.runtime.Tensor) and len(value.shape) >= 1 and "float" in str(value.dtype)


@relax.expr_functor.mutator
class _ConstantsToVars(relax.PyExprMutator):
    """Replace each weight constant of a function by a fresh Var (one per distinct constant)."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.vars: list[relax.Var] = []
        self.values: list[tvm.runtime.Tensor] = []
        self._seen: dict = {}  # constant -> var (TVM objects hash and compare by identity)

    def visit_generic_const_(self, const: tvm.ir.expr.Constant) -> relax.Expr:  # noqa: N802 - TVM's name
        if not _is_weight(const):
            return const
        var = self._seen.get(const)
        if var is None:
            var = relax.Var(f"param_{len(self.vars)}", const.ty)
            self._seen[const] = var
            self.vars.append(var)
            self.values.append(const.value)
        return var


def weights_as_inputs(mod: tvm.IRModule, func: str = "main") -> tvm.IRModule:
    """``mod`` with the weight constants of ``func`` made its parameters (after its inputs, in the order
    they are first used), their values in its ``"params"`` attribute and ``num_input`` set."""
    main = mod[func]
    if main.attrs is not None and PARAMS_ATTR in main.attrs:
        raise ValueError(f"function {func!r} already has detached params")
    num_input = len(main.params)
    if main.attrs is not None and "num_input" in main.attrs:
        num_input = int(main.attrs["num_input"])
        if num_input != len(main.params):
            raise ValueError(f"function {func!r} already takes weights as parameters ({len(main.params) - num_input})")
    lifter = _ConstantsToVars(mod)
    body = lifter.visit_expr(main.body)
    new = relax.Function(list(main.params) + lifter.vars, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    new = new.with_attr("num_input", num_input).with_attr(PARAMS_ATTR, lifter.values)
    out = mod.clone()
    out[func] = new
    return out


def lift_weight_transforms(mod: tvm.IRModule, func: str = "main") -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Detach the weights of :func:`weights_as_inputs` and lift what is computed from them alone into
    ``<func>_transform_params`` (Relax's ``LiftTransformParams``).

    Returns the module and the weights by parameter name, in ``func``'s parameter order."""
    main = mod[func]
    values = list(main.attrs[PARAMS_ATTR])
    num_input = int(main.attrs["num_input"])
    names = [str(p.name) for p in list(main.params)[num_input:]]
    if len(names) != len(values):
        raise AssertionError(f"{len(names)} weight parameters but {len(values)} values")
    mod = mod.clone()
    mod[func] = main.without_attr(PARAMS_ATTR)
    mod = relax.transform.LiftTransformParams()(mod)
    if TRANSFORM_FUNC not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise AssertionError(f"LiftTransformParams made no {TRANSFORM_FUNC}")
    return mod, {name: value.numpy() for name, value in zip(names, values)}


def params_path_for(library: str | os.PathLike) -> Path:
    """The params file written beside a library: same directory and stem, suffix ``.params``
    (``resnet18.so`` -> ``resnet18.params``, as tvmc's ``mod.so`` / ``mod.params``)."""
    return Path(library).with_suffix(".params")


def write_params(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> dict:
    """Write ``weights`` as a TVM parameter dict to ``path``; returns what the library's trailer records
    about it: ``file`` (the name, looked up beside the library), ``sha256``, ``bytes`` and ``names``
    (the order ``main_transform_params`` takes them in)."""
    data = bytes(tvm.runtime.save_param_dict({n: tvm.runtime.tensor(v) for n, v in weights.items()}))
    path = Path(path)
    path.write_bytes(data)
    return {"mode": "separate", "file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "names": list(weights)}
