"""Vectorizable float32 ``exp``, ``tanh``, ``erf`` and ``sigmoid`` for the llvm rules.

TVM lowers ``T.exp`` / ``T.erf`` to LLVM's math intrinsics, which LLVM turns into one ``expf`` /
``erff`` libm call per lane: a vectorized SiLU, GELU or tanh loop is as slow as a scalar one
(checked in the assembly; 64^4 tanh: 1.19 ms with the calls, 0.25 ms polynomial, under load).
``T.tanh`` is lowered as ``(1 - e^-2x) / (1 + e^-2x)``, which also loses up to 6e-4 relative
accuracy near 0.  :func:`approximate_math` replaces those calls by TVM's own polynomial versions
(``topi.fast_exp``: Cephes' expf, ``topi.fast_tanh`` and ``topi.fast_erf``: Eigen's rational
approximations), which are plain arithmetic and vectorize.  ``sigmoid(x)`` becomes
``1 / (1 + fast_exp(-x))``.

Accuracy, measured over ``3 * N(0, 1)`` float32 inputs against float64 (see the tests, which pin
it): exp <= 2 ulp, tanh <= 5 ulp, erf <= 6 ulp relative; :data:`MAX_ULP` is the bound the tests use.
"""

from __future__ import annotations

from functools import lru_cache

import tvm
import tvm_ffi
from tvm import s_tir, te, tirx, topi

__all__ = ["MAX_ULP", "approximate_math", "uses_libm_math"]

#: Relative error bound (in float32 ulp, 2^-24) of each replacement on finite inputs, with margin.
MAX_ULP = {"exp": 4, "tanh": 8, "erf": 10, "sigmoid": 8}

_TOPI = {"exp": topi.fast_exp, "tanh": topi.fast_tanh, "erf": topi.fast_erf}


@lru_cache(maxsize=None)
def _template(name: str) -> tuple[tirx.Var, tirx.Expr]:
    """``(x, expression of x)`` for ``topi.fast_<name>``: its stages inlined into one expression."""
    x_tensor = te.placeholder((1,), "float32", name="x")
    func = te.create_prim_func([x_tensor, _TOPI[name](x_tensor)])
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    for block in blocks[:-1]:  # fast_tanh clamps its input in separate stages
        sch.compute_inline(block)
    (block,) = sch.get_child_blocks(sch.get_sblock("root"))
    store = sch.get(block).body
    assert isinstance(store, tirx.BufferStore), type(store)
    x_buffer = sch.mod["main"].params[0]
    var = tirx.Var("x", "float32")

    def load_to_var(load: tvm.ir.expr.TensorLoad):
        return var if load.source.same_as(x_buffer) else load

    return var, tvm_ffi.structural_map(store.value, (tvm.ir.expr.TensorLoad, load_to_var))


def _instantiate(name: str, arg: tirx.Expr) -> tirx.Expr:
    """``fast_<name>(arg)`` with ``arg`` bound once (a Let: the polynomial reads it many times)."""
    var, body = _template(name)
    fresh = tirx.Var(f"{name}_x", "float32")
    body = tvm_ffi.structural_map(body, (tvm.ir.expr.Var, lambda v: fresh if v.same_as(var) else v))
    return tirx.Let(fresh, arg, body)


def _op_name(call) -> str | None:
    op = getattr(call, "op", None)
    name = getattr(op, "name", None)
    if not isinstance(name, str) or not name.startswith("tirx."):
        return None
    short = name[len("tirx."):]
    if short not in MAX_ULP or len(call.args) != 1 or str(call.ty) != "float32":
        return None
    return short


def _approximate_call(call):
    name = _op_name(call)
    if name is None:
        return call
    (arg,) = call.args
    if name == "sigmoid":
        one = tirx.const(1.0, "float32")
        return one / (one + _instantiate("exp", tirx.const(0.0, "float32") - arg))
    return _instantiate(name, arg)


def uses_libm_math(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` calls a float32 exp/tanh/erf/sigmoid that :func:`approximate_math` replaces."""
    found = []
    tvm_ffi.structural_walk(func.body, [(tvm.ir.expr.Call, lambda c: found.append(_op_name(c)))], order="post")
    return any(found)


def approximate_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float32 exp/tanh/erf/sigmoid replaced by its polynomial version."""
    if not uses_libm_math(func):
        return func
    return func.with_body(tvm_ffi.structural_map(func.body, (tvm.ir.expr.Call, _approximate_call)))
