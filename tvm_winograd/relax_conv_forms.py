"""Graph-level rewrites of convolutions into the form our CPU schedules and the Winograd pass take.

**Transposed convolutions** as one stride-1 convolution and a depth-to-space.  TVM 0.27 legalizes ``relax.nn.conv2d_transpose`` (NCHW/IOHW only) into topi's form, a direct conv over
the input dilated with zeros, which no rule of ours tiles: a U-Net's 2x2 stride-2 up-convolutions ran
at 1.3 GFLOP/s (512 -> 256 channels at 14x14: 154 ms, 90 % of the model's time, measured on the Zen 4).

Per axis, ``y[o] = sum x[h] W[i]`` over ``o = h s + i - p``.  The outputs of one *phase* ``a`` (``o = s q +
a``) take the kernel taps ``i = t + s u`` (``t = (a + p) mod s``) and read ``x[q + d - u]`` (``d = (a + p -
t) / s``): each phase is a stride-1 correlation of ``x`` with a sub-kernel.  All ``s x s`` phases run as
one ``conv2d`` over the union of their windows (zero taps where a phase reads less), with ``K s s``
output channels (channel ``(k s + a) s + b`` is phase ``(a, b)`` of output channel ``k``), then a reshape /
permute / reshape interleaves the phases (a depth-to-space) and a slice drops the outputs past the edge.
Every output is the same sum of the same products as before.  Kernel == stride (a U-Net's 2x2 stride 2)
gives a 1x1 conv; 4x4 stride 2 padding 1 (GAN generators, decoders) a 3x3 conv, Winograd-eligible,
with 9 taps per phase where 4 are non-zero; 3x3 stride 2 padding 1 a 2x2 conv.  The conv then takes the
layout conversion, the channel padding, the Winograd pass and the direct-conv schedule like any other.
Grouped or dilated transposed convolutions, and strides that differ per axis, are left to TVM.

**Dilated convolutions** (stride 1, dilation ``d``) as a batch of ``d x d`` undilated ones ("space to
batch", as TensorFlow's atrous convolution runs): output ``o = d q + a`` reads ``x[d (q + r - p/d) + a]``
through tap ``r``, so phase ``(a, b)`` of the output is the undilated conv (padding ``p / d``) of phase
``(a, b)`` of the input.  The phases are stacked on the batch axis by a reshape / permute / reshape and
unstacked after; the products and their order are those of the dilated conv.  Where the padding and
the image are multiples of ``d``: FCN / DeepLab backbones (3x3, dilation 2 and 4, padding = dilation,
28x28), whose 3x3 convolutions then become Winograd-eligible.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .relax_layout import static_shape

__all__ = ["conv_transpose_as_conv", "dilation_as_batch", "rewrite_conv_forms"]

logger = logging.getLogger(__name__)

_CONV = tvm.ir.Op.get("relax.nn.conv2d")
_CONV_TRANSPOSE = tvm.ir.Op.get("relax.nn.conv2d_transpose")


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _phases(k: int, s: int, pad: int, size: int, out: int):
    """Per output phase ``a`` (outputs ``o = s q + a``) of one axis: the taps ``(window offset, kernel
    index)`` it sums, and the shared window ``(lo, R, pad_begin, pad_end, Q)`` of the conv that computes
    every phase; None when that conv would need negative padding.

    ``y[o] = sum x[h] W[i]`` over ``o = h s + i - pad``: phase ``a`` takes ``i = t + s u`` with
    ``t = (a + pad) mod s``, reading ``x[q + d - u]``, ``d = (a + pad - t) / s``."""
    taps, offsets = [], []
    for a in range(s):
        t = (a + pad) % s
        d = (a + pad - t) // s
        phase = [(d - u, t + s * u) for u in range(-(-(k - t) // s))]
        taps.append(phase)
        offsets += [e for e, _ in phase]
    lo, hi = min(offsets), max(offsets)
    window, q = hi - lo + 1, -(-out // s)
    pad_begin, pad_end = -lo, q - size + hi
    if pad_begin < 0 or pad_end < 0:
        return None
    return taps, (lo, window, pad_begin, pad_end, q)


def conv_transpose_as_conv(call: relax.Expr) -> dict | None:
    """How to compute ``call`` as one stride-1 ``conv2d`` and a depth-to-space (module docstring), or
    None when it is not a ``conv2d_transpose`` this module rewrites: NCHW/IOHW, one group, no dilation,
    a constant weight and static shapes.  Returns the conv's OIHW weight (channel ``(k s + a) s + b``
    holds phase ``(a, b)`` of output channel ``k``), its padding, the stride and the output size."""
    if not (isinstance(call, relax.Call) and call.op == _CONV_TRANSPOSE):
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "IOHW", "NCHW"):
        return None
    weight = call.args[1]
    in_shape, out_shape = static_shape(call.args[0]), static_shape(call)
    if not isinstance(weight, tvm.ir.expr.Constant) or in_shape is None or out_shape is None:
        return None
    if int(attrs.groups) != 1 or _ints(attrs.dilation) != [1, 1]:
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", str(weight.value.dtype)):
        return None
    c, k, kh, kw = (int(v) for v in weight.value.shape)
    (sh, sw), (pt, pl, _, _) = _ints(attrs.strides), _ints(attrs.padding)
    if sh != sw:  # one depth-to-space block size
        return None
    rows = _phases(kh, sh, pt, in_shape[2], out_shape[2])
    cols = _phases(kw, sw, pl, in_shape[3], out_shape[3])
    if rows is None or cols is None:
        return None
    (row_taps, (row_lo, r_h, pad_t, pad_b, q_h)), (col_taps, (col_lo, r_w, pad_l, pad_r, q_w)) = rows, cols
    w = weight.value.numpy()
    conv_w = np.zeros((k, sh, sw, c, r_h, r_w), w.dtype)
    for a, row in enumerate(row_taps):
        for b, col in enumerate(col_taps):
            for e_h, i in row:
                for e_w, j in col:
                    conv_w[:, a, b, :, e_h - row_lo, e_w - col_lo] = w[:, :, i, j].T
    return {"weight": conv_w.reshape(k * sh * sw, c, r_h, r_w), "padding": (pad_t, pad_l, pad_b, pad_r),
            "stride": sh, "tiles": (q_h, q_w), "out": tuple(out_shape[2:])}


def _conv_transpose(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    plan = conv_transpose_as_conv(call)
    if plan is None:
        return None
    s, (q_h, q_w), out = plan["stride"], plan["tiles"], plan["out"]
    n = static_shape(call.args[0])[0]
    k = plan["weight"].shape[0] // (s * s)
    y = builder.emit(relax.op.nn.conv2d(call.args[0], relax.const(plan["weight"]), padding=plan["padding"]))
    if s > 1:
        y = builder.emit(relax.op.reshape(y, (n, k, s, s, q_h, q_w)))
        y = builder.emit(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]))  # (n, k, q_h, a, q_w, b)
        y = relax.op.reshape(y, (n, k, q_h * s, q_w * s))
    if (q_h * s, q_w * s) != out:  # the last phases ran one output past the edge
        y = relax.op.strided_slice(builder.emit(y), axes=[2, 3], begin=[0, 0], end=list(out))
    return y


def dilation_as_batch(call: relax.Expr) -> int | None:
    """The dilation ``d > 1`` of an NCHW/OIHW stride-1 ``conv2d`` with static shapes whose padding and
    image are multiples of ``d`` (module docstring), else None."""
    if not (isinstance(call, relax.Call) and call.op == _CONV):
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW"):
        return None
    dh, dw = _ints(attrs.dilation)
    shape, out = static_shape(call.args[0]), static_shape(call)
    if dh != dw or dh == 1 or _ints(attrs.strides) != [1, 1] or shape is None or out is None:
        return None
    if any(v % dh for v in [*_ints(attrs.padding), *shape[2:], *out[2:]]):
        return None
    return dh


def _dilated(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    d = dilation_as_batch(call)
    if d is None:
        return None
    attrs = call.attrs
    n, c, h, w = static_shape(call.args[0])
    _, k, oh, ow = static_shape(call)
    x = builder.emit(relax.op.reshape(call.args[0], (n, c, h // d, d, w // d, d)))
    x = builder.emit(relax.op.permute_dims(x, [0, 3, 5, 1, 2, 4]))  # (n, a, b, c, h / d, w / d)
    x = builder.emit(relax.op.reshape(x, (n * d * d, c, h // d, w // d)))
    y = builder.emit(relax.op.nn.conv2d(x, call.args[1], padding=[p // d for p in _ints(attrs.padding)],
                                        groups=int(attrs.groups), out_dtype=attrs.out_dtype))
    y = builder.emit(relax.op.reshape(y, (n, d, d, k, oh // d, ow // d)))
    y = builder.emit(relax.op.permute_dims(y, [0, 3, 4, 1, 5, 2]))  # (n, k, oh / d, a, ow / d, b)
    return relax.op.reshape(y, (n, k, oh, ow))


#: The rewrites, each ``(builder, call) -> replacement or None``, and what the log calls them.
REWRITES = ((_conv_transpose, "transposed convolution(s) as a stride-1 conv + depth-to-space"),
            (_dilated, "dilated convolution(s) as a batch of undilated ones"))


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.rewritten = [0] * len(REWRITES)

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's name
        call = super().visit_call_(call)
        for index, (rewrite, _) in enumerate(REWRITES):
            new = rewrite(self.builder_, call)
            if new is not None:
                self.rewritten[index] += 1
                return new
        return call


def rewrite_conv_forms(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite the transposed and dilated convolutions of ``mod``'s Relax functions that the module
    docstring describes; every other call is left as it is."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        mutator = _Rewrite(mod)
        new_func = mutator.visit_expr(func)
        if any(mutator.rewritten):
            mod = mutator.builder_.get()
            mod[gv] = new_func
            for count, (_, what) in zip(mutator.rewritten, REWRITES):
                if count:
                    logger.info("%s: %d %s", gv.name_hint, count, what)
    return mod
