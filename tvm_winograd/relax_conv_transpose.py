"""Graph-level rewrite: a transposed convolution whose kernel equals its stride is a 1x1 convolution
followed by a depth-to-space.

TVM 0.27 legalizes ``relax.nn.conv2d_transpose`` (NCHW/IOHW only) into topi's form, a direct conv over
the input dilated with zeros, which no rule of ours tiles: a U-Net's 2x2 stride-2 up-convolutions ran
at 1.3 GFLOP/s (512 -> 256 channels at 14x14: 154 ms, 90 % of the model's time, measured on the Zen 4).
With ``kernel == stride`` (no padding, no output padding, no dilation, one group) every output pixel
``(h s + i, w s + j)`` reads exactly one input pixel ``(h, w)`` through the kernel tap ``(i, j)``::

    y[n, k, h s + i, w s + j] = sum_c x[n, c, h, w] W[c, k, i, j]          (W: IOHW)

which is a 1x1 ``conv2d`` to ``K s s`` channels (channel ``(k s + i) s + j`` holds tap ``(i, j)`` of
output channel ``k``) and a reshape / permute / reshape that interleaves them, exactly (the same
products, summed in the same order over ``c``).  The 1x1 conv then takes the layout conversion, the
channel padding and the direct-conv schedule like any other; the interleave is an injective copy.
Other transposed convolutions (overlapping taps: 4x4 stride 2, 3x3 stride 2 with padding) are left
to TVM's legalization.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .relax_layout import static_shape

__all__ = ["conv_transpose_as_conv", "rewrite_conv_transpose"]

logger = logging.getLogger(__name__)

_CONV_TRANSPOSE = tvm.ir.Op.get("relax.nn.conv2d_transpose")


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def conv_transpose_as_conv(call: relax.Expr) -> tuple[int, np.ndarray] | None:
    """``(stride, 1x1 OIHW weight)`` when ``call`` is a ``conv2d_transpose`` this module rewrites (kernel
    equal to its stride, NCHW/IOHW, constant weight, static shapes, nothing else set), else None."""
    if not (isinstance(call, relax.Call) and call.op == _CONV_TRANSPOSE):
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "IOHW", "NCHW"):
        return None
    weight = call.args[1]
    if not isinstance(weight, tvm.ir.expr.Constant) or static_shape(call.args[0]) is None:
        return None
    c, k, kh, kw = (int(v) for v in weight.value.shape)
    strides = _ints(attrs.strides)
    if (kh, kw) != tuple(strides) or kh != kw or int(attrs.groups) != 1 or any(_ints(attrs.padding)) \
            or any(_ints(attrs.output_padding)) or _ints(attrs.dilation) != [1, 1]:
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", str(weight.value.dtype)):
        return None
    w = weight.value.numpy()  # [c, k, i, j] -> [(k s + i) s + j, c, 1, 1]
    return kh, np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(k * kh * kw, c, 1, 1))


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's name
        call = super().visit_call_(call)
        plan = conv_transpose_as_conv(call)
        if plan is None:
            return call
        s, w1 = plan
        n, _, h, w = static_shape(call.args[0])
        k = w1.shape[0] // (s * s)
        y = self.builder_.emit(relax.op.nn.conv2d(call.args[0], relax.const(w1)))
        y = self.builder_.emit(relax.op.reshape(y, (n, k, s, s, h, w)))
        y = self.builder_.emit(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]))  # (n, k, h, i, w, j)
        self.rewritten += 1
        return relax.op.reshape(y, (n, k, h * s, w * s))


def rewrite_conv_transpose(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite every ``conv2d_transpose`` with kernel == stride in ``mod``'s Relax functions (module
    docstring); the others are left as they are."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        mutator = _Rewrite(mod)
        new_func = mutator.visit_expr(func)
        if mutator.rewritten:
            mod = mutator.builder_.get()
            mod[gv] = new_func
            logger.info("%s: %d transposed convolution(s) as 1x1 conv + depth-to-space", gv.name_hint,
                        mutator.rewritten)
    return mod
