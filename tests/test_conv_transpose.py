"""Transposed convolutions with kernel == stride run as a 1x1 conv and a depth-to-space
(``tvm_winograd.relax_conv_transpose``), against float64 numpy.

Tolerance: each output is one sum of ``C`` float32 products plus the bias; recursive summation errs by
at most ``(C + 2) u sum |x w|`` (u = 2^-24) plus ``u |b|``, per element.  A wrong tap order (``(i, j)``
swapped, or the channel interleave off by one) errs by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.relax_conv_transpose import conv_transpose_as_conv

U32 = 2.0**-24


def _model(c: int, k: int, h: int, w: int, kernel: int, stride: int, pads=(0, 0, 0, 0), rng=None):
    weight = rng.standard_normal((c, k, kernel, kernel)).astype("float32")
    bias = rng.standard_normal(k).astype("float32")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=list(pads))
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight, bias


@pytest.mark.parametrize("c, k, h, w, s", [(16, 8, 5, 7, 2), (12, 20, 4, 3, 3), (3, 5, 6, 6, 2)])
def test_kernel_equal_to_stride_runs_as_1x1_conv(signed, rng, c, k, h, w, s):
    model, weight, bias = _model(c, k, h, w, s, s, rng=rng)
    ex, report = compile_model(from_onnx_model(model), "llvm", "/nonexistent-schedules")
    names = [f.name for f in report.functions]
    assert not any("conv2d_transpose" in n for n in names), names
    assert any(n.startswith("direct_") and "_r1x1_" in n for n in names), names
    x = signed((1, c, h, w))
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    ref = np.einsum("nchw,ckij->nkhiwj", x64, w64).reshape(1, k, h * s, w * s) + bias.reshape(1, k, 1, 1)
    mag = np.einsum("nchw,ckij->nkhiwj", np.abs(x64), np.abs(w64)).reshape(1, k, h * s, w * s)
    bound = (c + 2) * U32 * mag + U32 * np.abs(bias).reshape(1, k, 1, 1) + 1e-30
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    assert np.all(err <= bound), f"max error / bound {np.max(err / bound):.2f}"


@pytest.mark.parametrize("kernel, stride, pads", [(4, 2, (1, 1, 1, 1)), (3, 2, (0, 0, 0, 0)), (2, 2, (1, 1, 0, 0))])
def test_overlapping_or_padded_transposed_convs_are_left_to_tvm(rng, kernel, stride, pads):
    model, _, _ = _model(4, 4, 5, 5, kernel, stride, pads, rng=rng)
    mod = from_onnx_model(model)
    calls = [b.value for f in mod.functions.values() if isinstance(f, relax.Function)
             for block in f.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call) and "conv2d_transpose" in str(b.value.op)]
    assert calls and all(conv_transpose_as_conv(call) is None for call in calls)
