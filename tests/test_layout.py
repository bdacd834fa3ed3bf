"""The NHWC conversion of whole CNN blocks (tvm_winograd.relax_layout): transposes only where they must be.

Each model is a small ONNX graph written here with ``onnx.helper`` (seeded He-initialised weights,
activations O(1)), compiled with the defaults (``--layout auto``: NHWC on CPUs) and compared with
onnxruntime within :func:`test_export.model_tolerance`, the derived fp32 bound of the convolutions.
The other ops (activations, normalizations, pooling, resize, data movement) each add a few ulps,
far below it.  Each model also pins its transpose count (``library_metadata(ex)
["layout_transforms"]``): 2 (input and output) unless its docstring says why more.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from test_export import model_tolerance
from tvm import relax, topi

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.relax_layout import (collapse_permutes, compose_view, convert_layout, count_layout_transforms,
                                        layout_transform_sites, prepare_for_layout, register_layout_rules)
from tvm_winograd.runtime import library_metadata

OPSET = 20  # Gelu (20), LayerNormalization (17), HardSwish (14)


class Graph:
    """A tiny ONNX graph recorder: each method adds one node (and its seeded weights) and returns the
    output's name; ``channels`` tracks the channel count of NCHW values."""

    def __init__(self, shape: tuple[int, int, int, int], seed: int = 0) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.channels = {"x": shape[1]}
        self._n = 0

    def _name(self, op: str) -> str:
        self._n += 1
        return f"{op.lower()}{self._n}"

    def const(self, value, dtype=np.float32) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], channels: int | None = None, outputs: int = 1, **attrs):
        names = [self._name(op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, **attrs))
        known = [self.channels[i] for i in inputs if i in self.channels]
        for n in names:
            self.channels[n] = channels if channels is not None else (known[0] if known else None)
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = True,
             gain: float = 2.0) -> str:
        cin = self.channels[x]
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(gain / fan_in)
        inputs = [x, self.const(w)] + ([self.const(0.05 * self.rng.standard_normal(cout))] if bias else [])
        return self.node("Conv", inputs, cout, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=groups)

    def batch_norm(self, x: str) -> str:
        c = self.channels[x]
        scale, shift = 1 + 0.1 * self.rng.standard_normal(c), 0.1 * self.rng.standard_normal(c)
        mean, var = 0.1 * self.rng.standard_normal(c), 1 + 0.2 * self.rng.random(c)
        return self.node("BatchNormalization", [x] + [self.const(v) for v in (scale, shift, mean, var)])

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const(0.0), self.const(6.0)])

    def silu(self, x: str) -> str:
        return self.node("Mul", [x, self.node("Sigmoid", [x])])

    def model(self, output: str) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.shape))
        graph = helper.make_graph(self.nodes, "block", [x], [], self.inits)
        graph.output.append(helper.make_empty_tensor_value_info(output))
        model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
        (typed,) = [v for v in model.graph.value_info if v.name == output] or [None]
        if typed is not None:  # the output's inferred type, so that the checker accepts the graph
            model.graph.output.pop()
            model.graph.output.append(typed)
        onnx.checker.check_model(model, full_check=True)
        return model


# ------------------------------------------------------------------------------------------------
# The blocks
# ------------------------------------------------------------------------------------------------

def mobilenet_v2_block(g: Graph) -> str:
    """A 3x3 stem conv + ReLU6, then an inverted residual: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6,
    1x1 project, residual add (ONNX Clip, which the frontend emits as TE maximum/minimum calls)."""
    stem = g.relu6(g.conv("x", 64))
    y = g.relu6(g.conv(stem, 128, k=1))
    y = g.relu6(g.conv(y, 128, groups=128))
    return g.node("Add", [stem, g.conv(y, 64, k=1, gain=0.5)])


def efficientnet_block(g: Graph) -> str:
    """MBConv: 3x3 conv + SiLU, 3x3 depthwise + SiLU, squeeze-excite (global average pool, 1x1
    reduce + SiLU, 1x1 expand + sigmoid, multiply), 1x1 project; then MobileNetV3's hard-swish and
    hard-sigmoid (clip in Relax)."""
    y = g.silu(g.conv("x", 64))
    y = g.silu(g.conv(y, 64, groups=64))
    s = g.node("GlobalAveragePool", [y])
    s = g.node("Sigmoid", [g.conv(g.silu(g.conv(s, 16, k=1)), 64, k=1)])
    y = g.conv(g.node("Mul", [y, s]), 64, k=1)
    y = g.node("HardSwish", [y])
    return g.node("Mul", [y, g.node("HardSigmoid", [g.conv(y, 64, k=1)], alpha=1 / 6, beta=0.5)])


def densenet_block(g: Graph) -> str:
    """A 3x3 stem conv, a dense layer (BN-ReLU-1x1 conv-BN-ReLU-3x3 conv) concatenated to its input
    on the channel axis, then a transition (BN-ReLU-1x1 conv-2x2 average pool)."""
    x = g.conv("x", 64)
    y = g.conv(g.node("Relu", [g.batch_norm(x)]), 128, k=1)
    y = g.conv(g.node("Relu", [g.batch_norm(y)]), 64)
    y = g.node("Concat", [x, y], 128, axis=1)
    y = g.conv(g.node("Relu", [g.batch_norm(y)]), 64, k=1)
    return g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])


def unet(g: Graph) -> str:
    """Two-level U-Net: encoder convs and max pools; one decoder stage upsamples with a 2x2 stride-2
    ConvTranspose, the other with Resize (nearest); each concatenates the skip connection."""
    e1 = g.node("Relu", [g.conv("x", 64)])
    e2 = g.node("Relu", [g.conv(g.node("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2]), 64)])
    b = g.node("Relu", [g.conv(g.node("MaxPool", [e2], kernel_shape=[2, 2], strides=[2, 2]), 64)])
    w = g.rng.standard_normal((64, 32, 2, 2)) * np.sqrt(2.0 / (64 * 4 / 4))
    up = g.node("ConvTranspose", [b, g.const(w), g.const(0.05 * g.rng.standard_normal(32))], 32,
                kernel_shape=[2, 2], strides=[2, 2])
    d2 = g.node("Relu", [g.conv(g.node("Concat", [up, e2], 96, axis=1), 64)])
    up = g.node("Resize", [d2, "", g.const([1.0, 1.0, 2.0, 2.0])], mode="nearest")
    d1 = g.node("Relu", [g.conv(g.node("Concat", [up, e1], 128, axis=1), 64)])
    return g.conv(d1, 4, k=1)


def sr_head(g: Graph) -> str:
    """A super-resolution head: 3x3 convs and two 2x depth-to-space steps (DCR, then CRD)."""
    y = g.node("Relu", [g.conv("x", 64)])
    y = g.node("DepthToSpace", [g.conv(y, 64)], 16, blocksize=2, mode="DCR")
    return g.node("DepthToSpace", [g.conv(y, 12)], 3, blocksize=2, mode="CRD")


def convnext_block(g: Graph) -> str:
    """ConvNeXt: a 3x3 stem conv, then 7x7 depthwise conv and a layer norm over channels, twice:
    the channels-first form (mean/variance over axis 1, (C, 1, 1) scale and shift, 1x1 conv MLP)
    and the channels-last form (permute to NHWC, LayerNormalization, MatMul MLP with GELU, layer
    scale, permute back), each with its residual add."""
    x = g.conv("x", 64)
    c = g.channels[x]
    y = g.conv(x, 64, k=7, groups=64)
    mean = g.node("ReduceMean", [y, g.const([1], np.int64)], keepdims=1)
    centred = g.node("Sub", [y, mean])
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred]), g.const([1], np.int64)], keepdims=1)
    y = g.node("Div", [centred, g.node("Sqrt", [g.node("Add", [var, g.const(1e-6)])])])
    y = g.node("Add", [g.node("Mul", [y, g.const(1 + 0.1 * g.rng.standard_normal((c, 1, 1)))]),
                       g.const(0.1 * g.rng.standard_normal((c, 1, 1)))])
    y = g.conv(g.node("Gelu", [g.conv(y, 4 * c, k=1)]), c, k=1, gain=0.5)
    x = g.node("Add", [x, y])
    y = g.node("Transpose", [g.conv(x, 64, k=7, groups=64)], perm=[0, 2, 3, 1])
    y = g.node("LayerNormalization", [y, g.const(1 + 0.1 * g.rng.standard_normal(c)),
                                      g.const(0.1 * g.rng.standard_normal(c))], axis=-1, epsilon=1e-6)
    y = g.node("Add", [g.node("MatMul", [y, g.const(g.rng.standard_normal((c, 4 * c)) / np.sqrt(c))]),
                       g.const(0.05 * g.rng.standard_normal(4 * c))])
    y = g.node("Gelu", [y], approximate="tanh")
    y = g.node("MatMul", [y, g.const(g.rng.standard_normal((4 * c, c)) / np.sqrt(2 * c))])
    y = g.node("Mul", [y, g.const(0.5 + 0.1 * g.rng.standard_normal(c))])
    return g.node("Add", [x, g.node("Transpose", [y], perm=[0, 3, 1, 2])])


# ------------------------------------------------------------------------------------------------
# Whole blocks: compile with the defaults, compare, count
# ------------------------------------------------------------------------------------------------

#: block -> (layout transforms after the NHWC conversion, why, if more than the input's and output's)
BLOCKS = {
    mobilenet_v2_block: (2, ""),
    efficientnet_block: (2, ""),
    densenet_block: (2, ""),
    unet: (3, "the 2x2 stride-2 transposed conv is a 1x1 conv and a depth-to-space, whose interleave is a "
              "transpose of its own (relax_conv_forms)"),
    sr_head: (3, "each depth-to-space is a transpose of its own; the last one merges with the output's"),
    convnext_block: (2, ""),
}


def _onnxruntime(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


@pytest.fixture(scope="module")
def no_schedules(tmp_path_factory):
    """An empty schedules directory: the heuristic decides, as for an untuned user."""
    return tmp_path_factory.mktemp("schedules")


@pytest.mark.parametrize("block", list(BLOCKS), ids=lambda b: b.__name__)
def test_block_compiles_nhwc_and_matches_onnxruntime(block, no_schedules):
    """Default compile (NHWC, heuristic algorithms) of each block against onnxruntime; the transposes
    left are the ones BLOCKS states; the 3x3 stride-1 convolutions that Winograd can run do."""
    g = Graph((1, 64, 16, 16))
    model = g.model(block(g))
    ex, report = compile_model(from_onnx_model(model), "llvm", no_schedules)
    feed = {"x": np.random.default_rng(7).standard_normal(g.shape).astype(np.float32)}
    ref = _onnxruntime(model, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.05 * np.abs(ref).max()  # far below a wrong answer
    err = float(np.abs(got - ref).max())
    assert got.shape == ref.shape and err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"
    expected, why = BLOCKS[block]
    assert library_metadata(ex)["layout_transforms"] == expected, why or "the input's and the output's only"
    assert report.layout_transforms == {"input": 1, "output": 1, "inside": expected - 2}, report.layout_transforms
    stem = report[0]  # each block starts with a 3x3 stride-1 conv 64 -> 64 on 16x16 (F(4,3) by the heuristic)
    assert (stem.kernel, stem.stride, stem.groups, stem.algorithm) == ("3x3", (1, 1), 1, "winograd"), stem
    # Every convolution runs NHWC: its weight is HWIO (kernel first).
    assert all("x".join(str(v) for v in r.weight_shape[:2]) == r.kernel for r in report), report


# ------------------------------------------------------------------------------------------------
# The pieces
# ------------------------------------------------------------------------------------------------

def _apply_steps(x: np.ndarray, steps) -> np.ndarray:
    for kind, arg in steps:
        x = np.transpose(x, arg) if kind == "permute" else x.reshape(arg)
    return x


def test_compose_view_cases():
    """Inverse transposes vanish; a transpose of size-1 axes is a reshape; depth-to-space between
    NHWC layout transposes is one 6-D transpose; a transpose then any reshape is still one."""
    assert compose_view((1, 8, 8, 4), [("permute", (0, 3, 1, 2)), ("permute", (0, 2, 3, 1))]).ops((1, 8, 8, 4)) == []
    view = compose_view((2, 1, 1, 5), [("permute", (0, 3, 1, 2))])
    assert view.permutes == 0 and view.ops((2, 1, 1, 5)) == [("reshape", (2, 5, 1, 1))]
    # NHWC (1, 4, 5, 8) -> NCHW -> DCR depth-to-space (r = 2) -> NHWC (1, 8, 10, 2)
    d2s = [("permute", (0, 3, 1, 2)), ("reshape", (1, 2, 2, 2, 4, 5)), ("permute", (0, 3, 4, 1, 5, 2)),
           ("reshape", (1, 2, 8, 10)), ("permute", (0, 2, 3, 1))]
    view = compose_view((1, 4, 5, 8), d2s)
    assert view.permutes == 1 and [k for k, _ in view.ops((1, 4, 5, 8))] == ["reshape", "permute", "reshape"]
    # factors h, w, (i, j, c) of the NHWC source; (j, c) stay adjacent, so 4-D: h, i, w, (j c)
    assert view.split == (4, 5, 2, 4) and view.perm == (0, 2, 1, 3)
    view = compose_view((2, 3), [("permute", (1, 0)), ("reshape", (2, 3))])
    assert view is not None and view.ops((2, 3)) == [("permute", (1, 0)), ("reshape", (2, 3))]
    # A regrouping followed by a transpose has no reshape-permute-reshape form.
    assert compose_view((2, 3), [("permute", (1, 0)), ("reshape", (2, 3)), ("permute", (1, 0))]) is None


def test_compose_view_equals_numpy_on_random_chains():
    """200 random chains of transposes and reshapes (splits, merges, size-1 axes): the view's steps
    move the data exactly as the chain's (numpy), with at most one transpose."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(200):
        shape = tuple(int(d) for d in rng.choice([1, 2, 3, 4, 6], size=rng.integers(2, 5)))
        steps, cur = [], shape
        for _ in range(rng.integers(1, 5)):
            if rng.random() < 0.5:
                steps.append(("permute", tuple(int(a) for a in rng.permutation(len(cur)))))
                cur = tuple(cur[a] for a in steps[-1][1])
            else:  # split or merge one axis
                k = int(rng.integers(len(cur)))
                if cur[k] in (4, 6) and rng.random() < 0.6:
                    cur = cur[:k] + (2, cur[k] // 2) + cur[k + 1:]
                elif k + 1 < len(cur):
                    cur = cur[:k] + (cur[k] * cur[k + 1],) + cur[k + 2:]
                steps.append(("reshape", cur))
        view = compose_view(shape, steps)
        x = np.arange(int(np.prod(shape))).reshape(shape)
        if view is None:
            continue
        checked += 1
        np.testing.assert_array_equal(_apply_steps(x, view.ops(shape)), _apply_steps(x, steps))
        assert sum(k == "permute" for k, _ in view.ops(shape)) <= 1
    assert checked > 150


def test_registered_rules_fill_only_gaps():
    """The rules go to the ops TVM has none for; a second call registers nothing."""
    register_layout_rules()
    for name in ("relax.clip", "relax.nn.leakyrelu", "relax.nn.softplus", "relax.nn.pad"):
        assert tvm.ir.Op.get(name).get_attr("FRelaxInferLayout") is not None, name
    assert register_layout_rules() == []


def _calls(mod: tvm.IRModule, op: str) -> int:
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) and e.op.name == op else None)
    return len(found)


def _activation_zoo(g: Graph) -> str:
    """conv, ONNX Clip with a lower bound only and with both (frontend TE maximum/minimum), an
    asymmetric Pad with a non-zero value (frontend TE pad), a (1, C, 1, 1) scale as the *first*
    operand, LeakyRelu, Elu, Mish, max pool, conv."""
    y = g.node("Clip", [g.conv("x", 16), g.const(-0.5)])
    y = g.relu6(y)
    y = g.node("Pad", [y, g.const([0, 0, 1, 2, 0, 0, 3, 1], np.int64), g.const(0.25)])
    y = g.node("Mul", [g.const(1 + 0.1 * g.rng.standard_normal((1, 16, 1, 1))), y])
    y = g.node("Mish", [g.node("Elu", [g.node("LeakyRelu", [y], alpha=0.1)], alpha=0.7)])
    y = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return g.conv(y, 8)


def test_frontend_te_calls_are_raised_and_the_result_is_exact(no_schedules):
    """The frontend's TE Clip and Pad become Relax ops (no call_tir left), every op between the
    convolutions stays NHWC, and the compiled block equals onnxruntime."""
    g = Graph((1, 8, 12, 10))
    model = g.model(_activation_zoo(g))
    mod = from_onnx_model(model)
    assert _calls(mod, "relax.call_tir") == 4  # maximum, maximum, minimum, pad
    prepared = prepare_for_layout(mod)
    assert _calls(prepared, "relax.call_tir") == 0
    assert not any(isinstance(f, tvm.tirx.PrimFunc) for f in prepared.functions.values())
    assert count_layout_transforms(convert_layout(mod, "NHWC")) == 2
    ex, report = compile_model(mod, "llvm", no_schedules)
    feed = {"x": np.random.default_rng(5).standard_normal(g.shape).astype(np.float32)}
    ref = _onnxruntime(model, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= model_tolerance(report, ref)


def test_other_te_calls_stay(no_schedules):
    """A call_tir that is not exactly the frontend's maximum is left alone (and so is run in the
    model's layout, between two counted transposes)."""
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    w = relax.const(np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype("float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            y = bb.emit_te(lambda a, b: topi.maximum(topi.multiply(a, 2.0), b), y, relax.const(0.0, "float32"))
            out = bb.emit_output(relax.op.nn.conv2d(y, w, padding=1))
        bb.emit_func_output(out)
    mod = bb.get()
    assert _calls(prepare_for_layout(mod), "relax.call_tir") == 1
    assert count_layout_transforms(convert_layout(mod, "NHWC")) == 4


def test_count_layout_transforms_skips_constants():
    """Transposes of data count (permute_dims and layout_transform); a constant's does not."""
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    c = relax.const(np.ones((1, 6, 6, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            y = bb.emit(relax.op.add(y, relax.op.permute_dims(c, [0, 1, 2, 3])))
            y = bb.emit(relax.op.layout_transform(y, lambda n, h, w, c: (n, c, h, w)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    assert count_layout_transforms(bb.get()) == 2


def test_convert_layout_rejects_unknown_layout():
    with pytest.raises(ValueError, match="NCWH"):
        convert_layout(tvm.IRModule(), "NCWH")


# ------------------------------------------------------------------------------------------------
# Layout regions: a hand-built function, converted and checked against the original
# ------------------------------------------------------------------------------------------------

def _build_and_run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _convnext_like(c: int = 8, hw: int = 6) -> tvm.IRModule:
    """conv (NCHW) -> the model's permute to NHWC -> layer norm -> GELU -> matmul -> the model's permute
    back -> (C, 1, 1) layer scale -> residual add -> mean over H, W (keepdims) subtracted -> concat
    with the residual on channels -> softmax over channels -> conv: every op between the two
    convolutions is layout-agnostic, so NHWC needs no transpose inside."""
    rng = np.random.default_rng(3)
    x = relax.Var("x", relax.TensorType((1, c, hw, hw), "float32"))

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, const(c, c, 3, 3), padding=1))
            y = bb.emit(relax.op.permute_dims(conv, [0, 2, 3, 1]))
            y = bb.emit(relax.op.nn.layer_norm(y, const(c), const(c), axes=[-1]))
            y = bb.emit(relax.op.nn.gelu(y))
            y = bb.emit(relax.op.matmul(y, const(c, c)))
            y = bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
            y = bb.emit(relax.op.multiply(y, const(1, c, 1, 1)))
            res = bb.emit(relax.op.add(y, conv))
            y = bb.emit(relax.op.subtract(res, relax.op.mean(res, axis=[2, 3], keepdims=True)))
            y = bb.emit(relax.op.concat([y, res], axis=1))
            y = bb.emit(relax.op.nn.softmax(y, axis=1))
            out = bb.emit_output(relax.op.nn.conv2d(y, const(c, 2 * c, 1, 1)))
        bb.emit_func_output(out)
    return relax.transform.Normalize()(bb.get())


def test_regions_move_agnostic_ops_to_nhwc_and_keep_the_result():
    """After the NHWC conversion only the input's and the output's transposes remain (before the
    region rewrite TVM's ConvertLayout leaves the layer scale, the residual, the mean, the concat
    and the softmax NCHW, with transposes around them); the converted function equals the original."""
    mod = _convnext_like()
    converted = convert_layout(mod, "NHWC")
    assert layout_transform_sites(converted) == {"input": 1, "output": 1, "inside": 0}
    # The model's own permutes are gone too: the two left are the conversion's at the boundary.
    assert count_layout_transforms(converted) == 2
    x = np.random.default_rng(4).standard_normal((1, 8, 6, 6)).astype("float32")
    ref, got = _build_and_run(mod, x), _build_and_run(converted, x)
    # Same ops, same float32 data; only the reductions' order may differ (layer norm over 8, mean
    # over 36, softmax over 16, conv over 72/16 terms): a few ulps of values O(10).
    assert np.abs(got - ref).max() <= 64 * 2.0**-24 * np.abs(ref).max()
    # The check can fail: a rewrite that swapped H and W (a wrong permutation) would differ.
    wrong = _build_and_run(mod, np.ascontiguousarray(x.transpose(0, 1, 3, 2)))
    assert np.abs(wrong - ref).max() > 1e-2 * np.abs(ref).max()


def _region_only(perm_back_user: str) -> tvm.IRModule:
    """x (NCHW parameter) -> permute to NHWC -> relu -> permute back (read twice: by a sigmoid and
    by the add) -> add -> result: one region, whose best layout is the parameter's."""
    x = relax.Var("x", relax.TensorType((1, 3, 5, 7), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            y = bb.emit(relax.op.nn.relu(y))
            back = bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
            other = bb.emit(getattr(relax.op, perm_back_user)(back))
            out = bb.emit_output(relax.op.add(back, other))
        bb.emit_func_output(out)
    return bb.get()


def test_inverse_permutes_cancel_through_a_region():
    """A permute and its inverse with an agnostic op between them and a value read twice cancel to
    no transpose at all (what :func:`_plan_collapse` alone cannot: the chain is not single-use)."""
    mod = _region_only("sigmoid")
    assert count_layout_transforms(mod) == 2
    collapsed = collapse_permutes(mod)
    assert count_layout_transforms(collapsed) == 0
    x = np.random.default_rng(5).standard_normal((1, 3, 5, 7)).astype("float32")
    np.testing.assert_array_equal(_build_and_run(collapsed, x), _build_and_run(mod, x))


def test_composed_permutes_become_one():
    """Two permutes that do not cancel, with an op between them, become one transpose."""
    x = relax.Var("x", relax.TensorType((2, 3, 5, 7), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            y = bb.emit(relax.op.multiply(relax.op.tanh(y), relax.const(np.arange(3, dtype="float32"))))
            out = bb.emit_output(relax.op.permute_dims(y, [2, 0, 1, 3]))
        bb.emit_func_output(out)
    mod = relax.transform.Normalize()(bb.get())
    collapsed = collapse_permutes(mod)
    assert count_layout_transforms(collapsed) == 1
    x_np = np.random.default_rng(6).standard_normal((2, 3, 5, 7)).astype("float32")
    ref = np.transpose(np.tanh(x_np.transpose(0, 2, 3, 1)) * np.arange(3), (2, 0, 1, 3))
    np.testing.assert_allclose(_build_and_run(collapsed, x_np), ref, rtol=4 * 2.0**-24, atol=4 * 2.0**-24)


def test_inconsistent_region_is_left_alone():
    """add(x, permute(x, p)) on a square tensor: the two paths from x give it two layouts, so the
    region is left as it is (and stays right)."""
    x = relax.Var("x", relax.TensorType((1, 4, 4, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            out = bb.emit_output(relax.op.add(relax.op.nn.relu(y), x))
        bb.emit_func_output(out)
    mod = relax.transform.Normalize()(bb.get())
    collapsed = collapse_permutes(mod)
    assert count_layout_transforms(collapsed) == 1
    x_np = np.random.default_rng(7).standard_normal((1, 4, 4, 4)).astype("float32")
    np.testing.assert_array_equal(_build_and_run(collapsed, x_np), _build_and_run(mod, x_np))


def test_layout_transform_sites():
    """A transpose on a parameter is the input's, one into the result (through reshapes) the output's,
    any other one is inside the model."""
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3]))  # inside: between two ops
            y = bb.emit(relax.op.sigmoid(y))
            y = bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
            out = bb.emit_output(relax.op.reshape(y, (1, 144)))
        bb.emit_func_output(out)
    assert layout_transform_sites(bb.get()) == {"input": 1, "output": 1, "inside": 1}


def test_flatten_of_a_transpose_permutes_the_classifier_weights():
    """VGG's classifier: the NHWC pool output is transposed back to NCHW only to be flattened into a
    matmul with constant weights; the rows of the weights are permuted instead (no transpose), and
    the result is the same."""
    rng = np.random.default_rng(8)
    x = relax.Var("x", relax.TensorType((2, 3, 4, 5), "float32"))  # NHWC: H 3, W 4, C 5
    w1 = relax.const(rng.standard_normal((60, 7)).astype("float32"))
    w2 = relax.const(rng.standard_normal((60, 3)).astype("float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(x))
            y = bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
            flat = bb.emit(relax.op.reshape(y, (2, 60)))
            a = bb.emit(relax.op.matmul(flat, w1))
            b = bb.emit(relax.op.matmul(flat, w2))
            out = bb.emit_output(relax.op.concat([a, b], axis=1))
        bb.emit_func_output(out)
    mod = relax.transform.Normalize()(bb.get())
    collapsed = collapse_permutes(mod)
    assert count_layout_transforms(collapsed) == 0
    x_np = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    flat_np = np.maximum(x_np, 0).transpose(0, 3, 1, 2).reshape(2, 60).astype(np.float64)
    ref = np.concatenate([flat_np @ w1.value.numpy(), flat_np @ w2.value.numpy()], axis=1)
    got = _build_and_run(collapsed, x_np)
    # 60-term float32 dot products of O(1) terms: 4 sqrt(60) u of sum |terms| bounds the error well
    bound = 4 * np.sqrt(60) * 2.0**-24 * (np.abs(flat_np) @ np.abs(np.concatenate([w1.value.numpy(), w2.value.numpy()], 1)))
    assert np.all(np.abs(got - ref) <= bound + 1e-30)
    # The check can fail: the weights used unpermuted on the NHWC flattening differ.
    unpermuted = np.maximum(x_np, 0).reshape(2, 60) @ w1.value.numpy()
    assert np.abs(unpermuted - ref[:, :7]).max() > 0.1
