"""Graph-level channel padding: NHWC convolutions whose output channels the CPU tiles cannot vector
(or only in narrow vectors).

The CPU convolution schedules vectorize the output channels (16 float32 lanes of a zmm register,
else 8 or 4); Winograd needs them in whole vectors too. A convolution with, say, 9 or 27 output
channels (a super-resolution net's last conv before its pixel shuffle, an RGB output head) falls to
scalar code: ESPCN's 32 -> 9 3x3 conv at 224x224 took 43 ms, 68 % of the model, at 2.4 GFLOP/s.

:func:`pad_output_channels` gives such a conv zero output channels up to the next multiple of the
vector (8 below 16 channels, else 16), pads its constant bias the same way when an ``add`` of one
follows, and slices the real channels back (``strided_slice`` on the channel axis, which fuses
with what follows). The padded channels' weights and bias are zero, so the kept channels are
computed exactly as before (each output channel's sum reads only its own weights) and the padded
ones are discarded. The cost is ``K' / K`` more multiply-adds for the conv, which is then
vectorized, and Winograd-eligible where the shape allows.  Counts from 9 to 63 that a 4-lane vector
fits are left to the direct convolution, which pads them inside its function, without a slice
(:func:`tvm_winograd.compute.direct_channel_multiple`).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .relax_layout import static_shape
from .relax_pass import Bindings

__all__ = ["padded_channels", "pad_output_channels"]

logger = logging.getLogger(__name__)

_CONV = tvm.ir.Op.get("relax.nn.conv2d")
_ADD = tvm.ir.Op.get("relax.add")


#: From this many output channels on, a count that is no multiple of 16 is padded to one: the tile of
#: 8- or 4-lane vectors runs at about 60 % of the 16-lane one (measured, Zen 4, 2 threads: RegNetY's
#: 440 -> 440 1x1 at 7x7 133 GFLOP/s, 440 -> 448 215; 104 -> 104 at 28x28 143, 104 -> 112 203), and
#: the padding costs at most 1/4 more multiply-adds. Below, only counts no vector of 4 fits are padded.
FULL_VECTOR_FROM = 64


def padded_channels(channels: int) -> int | None:
    """The channel count a conv with ``channels`` outputs is padded to, or None (a whole number of
    16-lane vectors, or of 4- or 8-lane ones below :data:`FULL_VECTOR_FROM` channels)."""
    if channels % 16 == 0 or (channels % 4 == 0 and channels < FULL_VECTOR_FROM):
        return None
    vector = 8 if channels < 16 else 16
    return -(-channels // vector) * vector


def _paddable(call: relax.Expr) -> tuple[int, int] | None:
    """``(K, K')`` for an NHWC/HWIO, ungrouped, static conv2d with a constant weight to pad."""
    if not (isinstance(call, relax.Call) and call.op == _CONV):
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NHWC", "HWIO", "NHWC"):
        return None
    if int(attrs.groups) != 1 or not isinstance(call.args[1], tvm.ir.expr.Constant):
        return None
    shape = static_shape(call.args[1])
    if shape is None or static_shape(call.args[0]) is None:
        return None
    target = padded_channels(shape[3])
    return None if target is None else (shape[3], target)


def _bias_constant(expr: relax.Expr, channels: int) -> np.ndarray | None:
    """The constant of an ``add`` after the conv, if it broadcasts along the channels only."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    if value.size != channels or value.shape not in {(channels,), (1, channels), (1, 1, channels), (1, 1, 1, channels)}:
        return None
    return value.reshape(channels)


def _pad_last(value: np.ndarray, target: int) -> np.ndarray:
    widths = [(0, 0)] * (value.ndim - 1) + [(0, target - value.shape[-1])]
    return np.pad(value, widths)


@relax.expr_functor.mutator
class _PadChannels(relax.PyExprMutator):
    """Rewrite the planned convs (and their bias adds) to padded ones followed by a slice."""

    def __init__(self, mod: tvm.IRModule, convs: dict, adds: dict):
        super().__init__(mod)
        self.convs = convs  # conv var -> (K, K'), padded where it is bound
        self.adds = adds  # add var -> (conv var, bias vector, K, K'), padded with its conv
        self.folded = {entry[0] for entry in adds.values()}  # convs rebuilt at their add instead
        self.values: dict = {}
        self.padded = 0

    def _padded_conv(self, call: relax.Call, target: int) -> relax.Expr:
        weight = _pad_last(call.args[1].value.numpy(), target)
        new = relax.Call(call.op, [self.visit_expr(call.args[0]), relax.const(weight)], call.attrs)
        return self.builder_.emit(new)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: N802 - TVM's name
        var = binding.var
        if var in self.folded:
            self.values[var] = binding.value
        elif var in self.convs:
            channels, target = self.convs[var]
            conv = self._padded_conv(binding.value, target)
            self._bind(var, relax.op.strided_slice(conv, axes=[3], begin=[0], end=[channels]))
        elif var in self.adds:
            conv_var, bias, channels, target = self.adds[var]
            conv = self._padded_conv(self.values[conv_var], target)
            added = self.builder_.emit(relax.op.add(conv, relax.const(_pad_last(bias, target))))
            self._bind(var, relax.op.strided_slice(added, axes=[3], begin=[0], end=[channels]))
        else:
            super().visit_var_binding_(binding)

    def _bind(self, var: relax.Var, value: relax.Expr) -> None:
        self.padded += 1
        if self.builder_.current_block_is_dataflow() and not isinstance(var, relax.DataflowVar):
            new_var = self.builder_.emit_output(value, str(var.name))
        else:
            new_var = self.builder_.emit(value, str(var.name))
        self.set_var_remap(var, new_var)


def _plan(func: relax.Function) -> tuple[dict, dict]:
    """The convs to pad where they are bound, and the bias adds to pad together with their conv."""
    graph = Bindings(func)
    convs, adds = {}, {}
    for var in graph.order:
        sizes = _paddable(graph.values[var])
        if sizes is None:
            continue
        after = graph.sole_user(var)
        if graph.is_call(after, _ADD):
            add = graph.call(after)
            other = add.args[1] if add.args[0].same_as(var) else add.args[0]
            bias = _bias_constant(other, sizes[0])
            if bias is not None:
                adds[after] = (var, bias, *sizes)
                continue
        convs[var] = sizes
    return convs, adds


def pad_output_channels(mod: tvm.IRModule) -> tvm.IRModule:
    """Pad the output channels of NHWC convolutions to whole vectors (see the module docstring).

    Only ungrouped NHWC/HWIO convolutions with static shapes and a constant weight whose output
    channel count is not a multiple of 4; every other conv is left as it is. The convs replaced are
    left dead (``remove_dead_code`` drops them)."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        convs, adds = _plan(func)
        if not convs and not adds:
            continue
        mutator = _PadChannels(mod, convs, adds)
        new_func = mutator.visit_expr(func)
        mod = mutator.builder_.get()
        mod[gv] = new_func
        logger.info("%s: padded the output channels of %d convolution(s) to whole vectors", gv.name_hint,
                    mutator.padded)
    return mod
