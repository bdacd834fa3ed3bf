"""Output-channel padding (``tvm_winograd.relax_channels``): convs whose output channels are not a
multiple of 4 get zero channels up to a whole vector and a slice back, compiled whole and compared
with the float64 reference.

Tolerance: the direct convolution's per-element bound of ``tests/test_schedule_direct.py``: an
output is a sum of ``n = C * R * S`` float32 products plus the bias; recursive summation errs by at
most ``(n + 2) * u * (sum |x_i w_i| + |b|)`` (u = 2^-24) in any order. A wrong channel (a padded one
kept, or a real one reading padded weights) errs by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_winograd import relax_channels
from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.reference import conv2d_direct

U32 = 2.0**-24


def _conv_model(x_shape, k, r, bias, relu, rng):
    c = x_shape[1]
    w = (rng.standard_normal((k, c, r, r)) / np.sqrt(c * r * r)).astype("float32")
    b = rng.standard_normal(k).astype("float32")
    inputs = ["x", "W"] + (["B"] if bias else [])
    nodes = [helper.make_node("Conv", inputs, ["y0" if relu else "y"], kernel_shape=[r, r], pads=[r // 2] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", ["y0"], ["y"]))
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if bias else [])
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w, (b if bias else None)


def _reference(x, w, b, relu, r):
    conv = conv2d_direct(x.astype(np.float64), w.astype(np.float64), padding=r // 2)
    mag = conv2d_direct(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), padding=r // 2)
    if b is not None:
        conv = conv + b.reshape(1, -1, 1, 1)
        mag = mag + np.abs(b).reshape(1, -1, 1, 1)
    if relu:
        conv = np.maximum(conv, 0)
    n = w.shape[1] * r * r
    return conv, (n + 2) * U32 * mag + 1e-30


@pytest.mark.parametrize("channels, expected", [(9, 16), (27, 32), (3, 8), (1, 8), (17, 32), (16, None), (12, None),
                                                (6, 8), (40, None), (104, 112), (440, 448), (72, 80), (208, None)])
def test_padded_channels(channels, expected):
    assert relax_channels.padded_channels(channels) == expected


@pytest.mark.parametrize("x_shape, k, r, bias, relu", [
    ((1, 32, 20, 20), 9, 3, True, True),    # ESPCN's last conv: padded to 16, Winograd-eligible then
    ((1, 8, 11, 13), 27, 3, False, False),  # no bias: the slice follows the conv itself
    ((1, 16, 9, 9), 3, 5, True, False),     # an RGB head
    ((1, 24, 7, 7), 9, 1, True, True),
    ((1, 16, 7, 9), 104, 1, True, True),    # RegNetY's 104: 8-lane vectors would fit, padded to 112
])
def test_padded_conv_matches_float64(signed, x_shape, k, r, bias, relu):
    rng = np.random.default_rng(3)
    model, w, b = _conv_model(x_shape, k, r, bias, relu, rng)
    mod = from_onnx_model(model)
    ex, report = compile_model(mod, "llvm", algo="direct")
    direct = [f for f in report.functions if f.name.startswith("direct_")]
    assert direct and all(f"_k{relax_channels.padded_channels(k)}_" in f.name for f in direct), report.functions
    x = signed(x_shape)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    ref, bound = _reference(x, w, b, relu, r)
    assert got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max error / bound {np.max(err / bound):.2f}"


def test_nonzero_padding_is_caught(signed, monkeypatch):
    """The check above fails when a padded channel leaks into the kept ones (the slice moved by one
    channel: the last kept channel is a padded one)."""
    rng = np.random.default_rng(3)
    model, w, b = _conv_model((1, 8, 9, 9), 9, 3, True, False, rng)
    mod = from_onnx_model(model)
    real_slice = relax_channels.relax.op.strided_slice

    def shifted(x, axes, begin, end):
        return real_slice(x, axes=axes, begin=[begin[0] + 1], end=[end[0] + 1])

    monkeypatch.setattr(relax_channels.relax.op, "strided_slice", shifted)
    ex, _ = compile_model(mod, "llvm", algo="direct")
    x = signed((1, 8, 9, 9))
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    ref, bound = _reference(x, w, b, False, 3)
    assert not np.all(np.abs(got - ref) <= bound)


def test_other_convs_are_left_alone():
    """Grouped convs, channel counts that are already a multiple of 4, and NCHW (``layout="keep"``)
    convs keep their channels."""
    rng = np.random.default_rng(0)
    model, _, _ = _conv_model((1, 8, 9, 9), 12, 3, True, False, rng)
    mod = from_onnx_model(model)
    _, report = compile_model(mod, "llvm", algo="direct")
    assert [f.name for f in report.functions if f.name.startswith("direct_")][0].count("_k12_") == 1
    model, _, _ = _conv_model((1, 8, 9, 9), 9, 3, True, False, rng)
    mod = from_onnx_model(model)
    _, report = compile_model(mod, "llvm", algo="direct", layout="keep")
    assert all("_k16_" not in f.name for f in report.functions)
