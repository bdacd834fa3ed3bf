"""Which activations the graph pass fuses into a convolution's output stage (issue 14, item 3), and
that the fused model still computes the model: ONNX graphs of one conv and its activation, compiled
with the defaults, against onnxruntime.

Tolerance: ``4 sqrt(n) u`` of the largest output per dot product of length ``n`` (four standard
deviations of random rounding, both runtimes), plus the polynomial's ``ULP`` (tests/test_cnn_blocks.py).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_winograd.activations import ULP
from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model

U = 2.0**-24
C, K, H = 16, 32, 10


def _model(activation: str, extra_user: bool = False):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, C, 3, 3)) / math.sqrt(9 * C)).astype("float32")
    b = rng.standard_normal(K).astype("float32")
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    if activation.startswith("clip"):
        lo, hi = activation[4:].split("_")
        inits += [numpy_helper.from_array(np.array(float(lo), "float32"), "lo"),
                  numpy_helper.from_array(np.array(float(hi), "float32"), "hi")]
        nodes.append(helper.make_node("Clip", ["y", "lo", "hi"], ["z"]))
    elif activation == "silu":
        nodes += [helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["y", "s"], ["z"])]
    else:
        nodes.append(helper.make_node({"tanh": "Tanh", "sigmoid": "Sigmoid"}[activation], ["y"], ["z"]))
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, K, H, H])]
    if extra_user:  # the conv's output is also a model output: nothing may be fused after it
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K, H, H]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("activation, tag", [("clip0_6", "b6"), ("silu", "bs"), ("tanh", "bt"), ("sigmoid", "bg"),
                                             ("clip0_5", "b"), ("clip-1_6", "b")])
@pytest.mark.parametrize("algo", ["winograd", "direct"])
def test_activation_is_fused_and_correct(activation, tag, algo):
    model = _model(activation)
    ex, report = compile_model(from_onnx_model(model), "llvm", "/nonexistent-schedules", algo=algo)
    assert [layer.epilogue for layer in report] == [tag]
    assert [layer.algorithm for layer in report] == [algo]
    x = np.random.default_rng(1).standard_normal((1, C, H, H)).astype("float32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    name = {"clip0_6": "relu6"}.get(activation, activation)
    # Winograd F(4,3) errs more than a dot product: its model's rms is within ~10x (tests/test_compute.py)
    tol = U * (4 * math.sqrt(9 * C) * (10 if algo == "winograd" else 1) + ULP.get(name, 0) + 4) * np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol


@pytest.mark.parametrize("activation", ["silu", "tanh", "clip0_6"])
def test_activation_with_another_user_is_not_fused(activation):
    ex, report = compile_model(from_onnx_model(_model(activation, extra_user=True)), "llvm",
                               "/nonexistent-schedules", algo="direct")
    assert [layer.epilogue for layer in report] == ["b"]
