"""Transposed convolutions run as one stride-1 conv and a depth-to-space, dilated ones as a batch of
undilated ones (``tvm_winograd.relax_conv_forms``), against float64 numpy (a scatter; the direct conv).

Tolerance: each output is one sum of at most ``C k k`` float32 products plus the bias (the rewritten
conv adds zero taps, which add nothing); recursive summation errs by at most ``(C k k + 2) u sum |x w|``
(u = 2^-24) plus ``u |b|``, per element, plus the Winograd error where the heuristic picks it for the
3x3 conv (the model tolerance of ``test_export``). A wrong tap, phase order or padding errs by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from test_export import model_tolerance
from tvm import relax

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.reference import conv2d_direct
from tvm_winograd.relax_conv_forms import conv_transpose_as_conv, dilation_as_batch

U32 = 2.0**-24


def _model(c, k, h, w, kernel, stride, pads=(0, 0, 0, 0), output_padding=(0, 0), rng=None):
    weight = rng.standard_normal((c, k, kernel, kernel)).astype("float32")
    bias = rng.standard_normal(k).astype("float32")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=list(pads), output_padding=list(output_padding))
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight, bias


def _scatter(x, w, stride, pads, output_padding):
    """float64 ``conv_transpose``: every input pixel scatters ``x W`` through every tap."""
    n, _, h, wd = x.shape
    _, k, kh, kw = w.shape
    full = np.zeros((n, k, stride * (h - 1) + kh + output_padding[0], stride * (wd - 1) + kw + output_padding[1]))
    for i in range(kh):
        for j in range(kw):
            full[:, :, i:i + stride * h:stride, j:j + stride * wd:stride] += np.einsum("nchw,ck->nkhw", x, w[:, :, i, j])
    pt, pl, pb, pr = pads
    return full[:, :, pt:full.shape[2] - pb, pl:full.shape[3] - pr]


@pytest.mark.parametrize("c, k, h, w, kernel, stride, pads, output_padding", [
    (16, 8, 5, 7, 2, 2, (0, 0, 0, 0), (0, 0)),    # U-Net: a 1x1 conv
    (12, 20, 4, 3, 3, 3, (0, 0, 0, 0), (0, 0)),
    (8, 16, 6, 5, 4, 2, (1, 1, 1, 1), (0, 0)),    # DCGAN / pix2pix: a 3x3 conv
    (8, 16, 6, 6, 3, 2, (1, 1, 1, 1), (1, 1)),    # "same" upsampling: a 2x2 conv, output padding
    (8, 8, 5, 5, 3, 1, (1, 1, 1, 1), (0, 0)),     # stride 1: the flipped 3x3 conv
    (4, 8, 5, 4, 5, 2, (2, 1, 2, 1), (1, 0)),     # unequal pads, odd kernel, the last phase cropped
])
def test_transposed_conv_runs_as_a_conv(signed, rng, c, k, h, w, kernel, stride, pads, output_padding):
    model, weight, bias = _model(c, k, h, w, kernel, stride, pads, output_padding, rng=rng)
    ex, report = compile_model(from_onnx_model(model), "llvm", "/nonexistent-schedules")
    names = [f.name for f in report.functions]
    assert not any("conv2d_transpose" in n for n in names), names
    assert report.unscheduled() == [], report.unscheduled()
    x = signed((1, c, h, w))
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    ref = _scatter(x64, w64, stride, pads, output_padding) + bias.reshape(1, k, 1, 1)
    mag = _scatter(np.abs(x64), np.abs(w64), stride, pads, output_padding)
    bound = (c * kernel * kernel + 2) * U32 * mag + U32 * np.abs(bias).reshape(1, k, 1, 1) + 1e-30
    bound = np.maximum(bound, model_tolerance(report, ref))  # a Winograd pick for the 3x3 conv
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got - ref)
    assert np.all(err <= bound), f"max error / bound {np.max(err / bound):.2f}"


def test_grouped_transposed_convs_are_left_to_tvm(rng):
    weight = rng.standard_normal((4, 2, 2, 2)).astype("float32")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2], group=2)
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    mod = from_onnx_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    calls = [b.value for f in mod.functions.values() if isinstance(f, relax.Function)
             for block in f.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call) and "conv2d_transpose" in str(b.value.op)]
    assert calls and all(conv_transpose_as_conv(call) is None for call in calls)


def _dilated_model(c, k, h, w, d, pads, rng):
    weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype("float32")
    bias = rng.standard_normal(k).astype("float32")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], dilations=[d, d], pads=list(pads)),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "dil", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight, bias


def _convs(mod) -> list:
    return [b.value for f in mod.functions.values() if isinstance(f, relax.Function)
            for block in f.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and b.value.op == tvm.ir.Op.get("relax.nn.conv2d")]


@pytest.mark.parametrize("c, k, h, w, d, pads, batched", [
    (16, 32, 16, 12, 2, (2, 2, 2, 2), True),   # FCN's layer3: dilation 2, padding 2
    (32, 16, 16, 16, 4, (4, 4, 4, 4), True),   # layer4: dilation 4
    (8, 16, 12, 12, 2, (0, 2, 2, 0), True),    # unequal padding, each a multiple of d
    (8, 16, 13, 12, 2, (2, 2, 2, 2), False),   # an odd height: left dilated
    (8, 16, 12, 12, 2, (1, 1, 1, 1), False),   # padding no multiple of d: left dilated
])
def test_dilated_conv_runs_as_a_batch_of_undilated_ones(signed, rng, c, k, h, w, d, pads, batched):
    model, weight, bias = _dilated_model(c, k, h, w, d, pads, rng)
    mod = from_onnx_model(model)
    assert [dilation_as_batch(call) for call in _convs(mod)] == [d if batched else None]
    ex, report = compile_model(mod, "llvm", "/nonexistent-schedules", algo="winograd")
    assert report.unscheduled() == [], report.unscheduled()
    # batched: an undilated 3x3 over the d x d phases, which Winograd takes; else the dilated direct conv
    assert [(r.input_shape[0], r.algorithm) for r in report] == [(d * d if batched else 1,
                                                                  "winograd" if batched else "direct")]
    x = signed((1, c, h, w))
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    pad = (pads[0], pads[1], pads[2], pads[3])
    ref = conv2d_direct(x.astype(np.float64), weight.astype(np.float64), padding=pad, dilation=d)
    ref = np.maximum(ref + bias.reshape(1, k, 1, 1), 0)
    tol = model_tolerance(report, ref)
    assert tol < 0.01 * np.abs(ref).max()
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"


def test_tune_and_layers_see_the_rewritten_graph(rng):
    """``tune`` tunes, and ``layers`` lists, the convs ``compile`` compiles: the dilated conv as its
    batch of d x d phases (``export.prepare_graph`` is the one place all three start from)."""
    from tvm_winograd.export import prepare_graph
    from tvm_winograd.relax_pass import model_workloads
    from tvm_winograd.targets import resolve_target

    model, _, _ = _dilated_model(16, 16, 16, 16, 2, (2, 2, 2, 2), rng)
    target = resolve_target("llvm")
    layers = model_workloads(prepare_graph(from_onnx_model(model), target), target, "keep")
    assert [(spec.batch, spec.dilation, spec.layout) for spec, _, _ in layers] == [(4, (1, 1), "NHWC")]
