"""Built-in example models with seeded random weights, as ONNX graphs (and optional PyTorch modules).

No downloads are possible, so the architectures are written out here: ResNet-18, ResNet-50, VGG-16 and
a tiny mixed test net.  Every model is first recorded as a small list of layers (:class:`Net`), from
which both an ONNX graph (``onnx.helper``; onnxruntime is the reference) and, when ``torch`` is
importable, an equivalent ``torch.nn.Module`` are produced with the *same* weights.

Weights are He-initialised (``std = sqrt(2 / fan_in)``) so that activations stay O(1) through the
depth; BatchNorm is folded into the convolution (weight and bias), as an inference graph has it.  The
last convolution of each residual branch is scaled by ``RESIDUAL_SCALE`` (the "zero-gamma" trick, not
quite zero) so that the variance grows only slightly over the residual additions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = [
    "Net",
    "BUILTIN_MODELS",
    "build_net",
    "build_onnx",
    "to_onnx",
    "to_torch",
    "resnet18",
    "resnet50",
    "vgg16",
    "tiny_mixed",
    "RESIDUAL_SCALE",
]

logger = logging.getLogger(__name__)

#: Scale of the last convolution of a residual branch (see module docstring).
RESIDUAL_SCALE = 0.2


@dataclass
class Layer:
    """One recorded operation: ``op`` on the named ``inputs`` producing ``output``."""

    op: str  # conv | relu | add | maxpool | avgpool_global | flatten | dense
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # name -> np.ndarray (float32)


class Net:
    """A layer recorder: the one description both the ONNX graph and the torch module are made from."""

    def __init__(self, name: str, input_shape: tuple[int, int, int, int], seed: int = 0) -> None:
        self.name = name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.layers: list[Layer] = []
        self.rng = np.random.default_rng(seed)
        self.channels = {"input": self.input_shape[1]}
        self.spatial = {"input": self.input_shape[2:]}
        self.output = "input"
        self._count: dict[str, int] = {}

    def _name(self, op: str) -> str:
        self._count[op] = self._count.get(op, 0) + 1
        return f"{op}{self._count[op]}"

    def conv(self, x: str, out_channels: int, kernel: int, stride: int = 1, padding: int | None = None,
             groups: int = 1, bias: bool = True, scale: float = 1.0, dilation: int = 1) -> str:
        """Conv2d (NCHW, OIHW) with BatchNorm folded into weight and bias."""
        cin = self.channels[x]
        pad = (kernel // 2) * dilation if padding is None else padding
        fan_in = cin // groups * kernel * kernel
        w = self.rng.standard_normal((out_channels, cin // groups, kernel, kernel), dtype=np.float32)
        w *= np.float32(scale * np.sqrt(2.0 / fan_in))
        weights = {"weight": w}
        if bias:
            weights["bias"] = (0.05 * self.rng.standard_normal(out_channels)).astype(np.float32)
        out = self._name("conv")
        self.layers.append(Layer("conv", (x,), out, dict(kernel=kernel, stride=stride, padding=pad, groups=groups,
                                                         dilation=dilation), weights))
        h, w_ = self.spatial[x]
        eff = (kernel - 1) * dilation + 1
        self.spatial[out] = ((h + 2 * pad - eff) // stride + 1, (w_ + 2 * pad - eff) // stride + 1)
        self.channels[out] = out_channels
        self.output = out
        return out

    def _same(self, op: str, inputs: tuple[str, ...], **attrs) -> str:
        out = self._name(op)
        self.layers.append(Layer(op, inputs, out, attrs))
        self.channels[out], self.spatial[out] = self.channels[inputs[0]], self.spatial[inputs[0]]
        self.output = out
        return out

    def relu(self, x: str) -> str:
        return self._same("relu", (x,))

    def add(self, a: str, b: str) -> str:
        return self._same("add", (a, b))

    def maxpool(self, x: str, kernel: int, stride: int, padding: int = 0) -> str:
        out = self._same("maxpool", (x,), kernel=kernel, stride=stride, padding=padding)
        h, w = self.spatial[x]
        self.spatial[out] = ((h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        return out

    def global_avgpool(self, x: str) -> str:
        out = self._same("avgpool_global", (x,))
        self.spatial[out] = (1, 1)
        return out

    def flatten(self, x: str) -> str:
        out = self._same("flatten", (x,))
        c, (h, w) = self.channels[x], self.spatial[x]
        self.channels[out], self.spatial[out] = c * h * w, ()
        return out

    def dense(self, x: str, units: int) -> str:
        fan_in = self.channels[x]
        w = (self.rng.standard_normal((units, fan_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
        b = (0.05 * self.rng.standard_normal(units)).astype(np.float32)
        out = self._name("dense")
        self.layers.append(Layer("dense", (x,), out, {}, {"weight": w, "bias": b}))
        self.channels[out], self.spatial[out] = units, ()
        self.output = out
        return out

    def input_feed(self, seed: int = 1) -> dict[str, np.ndarray]:
        """A seeded signed random input (standard normal, like a normalised image)."""
        rng = np.random.default_rng(seed)
        return {"input": rng.standard_normal(self.input_shape, dtype=np.float32)}


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------

def _basic_block(net: Net, x: str, channels: int, stride: int) -> str:
    y = net.relu(net.conv(x, channels, 3, stride))
    y = net.conv(y, channels, 3, 1, scale=RESIDUAL_SCALE)
    shortcut = x
    if stride != 1 or net.channels[x] != channels:
        shortcut = net.conv(x, channels, 1, stride, padding=0)
    return net.relu(net.add(y, shortcut))


def _bottleneck(net: Net, x: str, channels: int, stride: int) -> str:
    # torchvision's ResNet v1.5: the stride sits on the 3x3 convolution.
    y = net.relu(net.conv(x, channels, 1, 1, padding=0))
    y = net.relu(net.conv(y, channels, 3, stride))
    y = net.conv(y, channels * 4, 1, 1, padding=0, scale=RESIDUAL_SCALE)
    shortcut = x
    if stride != 1 or net.channels[x] != channels * 4:
        shortcut = net.conv(x, channels * 4, 1, stride, padding=0)
    return net.relu(net.add(y, shortcut))


def _resnet(name: str, block: Callable, stages: tuple[int, ...], batch: int, image_size: int, seed: int,
            num_classes: int) -> Net:
    net = Net(name, (batch, 3, image_size, image_size), seed)
    x = net.relu(net.conv("input", 64, 7, 2, 3))
    x = net.maxpool(x, 3, 2, 1)
    for i, blocks in enumerate(stages):
        channels = 64 * 2**i
        for j in range(blocks):
            x = block(net, x, channels, 2 if (j == 0 and i > 0) else 1)
    x = net.flatten(net.global_avgpool(x))
    net.dense(x, num_classes)
    return net


def resnet18(batch: int = 1, image_size: int = 224, seed: int = 0, num_classes: int = 1000) -> Net:
    """ResNet-18 (He et al. 2016), BatchNorm folded."""
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), batch, image_size, seed, num_classes)


def resnet50(batch: int = 1, image_size: int = 224, seed: int = 0, num_classes: int = 1000) -> Net:
    """ResNet-50 v1.5 (stride on the 3x3 convolution, as torchvision), BatchNorm folded."""
    return _resnet("resnet50", _bottleneck, (3, 4, 6, 3), batch, image_size, seed, num_classes)


def vgg16(batch: int = 1, image_size: int = 224, seed: int = 0, num_classes: int = 1000) -> Net:
    """VGG-16 (configuration D).  The classifier flattens the last feature map as it is (7x7 at 224);
    smaller images give a smaller first dense layer instead of torchvision's adaptive pooling."""
    net = Net("vgg16", (batch, 3, image_size, image_size), seed)
    x = "input"
    for channels, repeat in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(repeat):
            x = net.relu(net.conv(x, channels, 3, 1))
        x = net.maxpool(x, 2, 2)
    x = net.flatten(x)
    x = net.relu(net.dense(x, 4096))
    x = net.relu(net.dense(x, 4096))
    net.dense(x, num_classes)
    return net


def tiny_mixed(batch: int = 1, image_size: int = 16, seed: int = 0, num_classes: int = 10) -> Net:
    """A small net with every case the Winograd pass must tell apart.

    Layers (``conv<i>``, in order): conv1 3x3 (+bias+relu, Winograd-eligible), conv2 3x3 (+bias
    +residual+relu, eligible), conv3 1x1 (ineligible: r=1), conv4 3x3 stride 2 (ineligible), conv5 3x3
    depthwise (groups=32, ineligible), conv6 5x5 (eligible), conv7 3x3 without bias (eligible),
    conv8 3x3 dilation 3 (ineligible: a dilation whose phases do not tile the 8x8 image, so the CPU
    rewrite of :mod:`~tvm_winograd.relax_conv_forms` leaves it dilated too); then max pooling, global
    average pooling and a dense layer.
    """
    net = Net("tiny_mixed", (batch, 8, image_size, image_size), seed)
    x1 = net.relu(net.conv("input", 16, 3))
    x2 = net.relu(net.add(net.conv(x1, 16, 3, scale=RESIDUAL_SCALE), x1))
    x3 = net.relu(net.conv(x2, 32, 1, padding=0))
    x4 = net.relu(net.conv(x3, 32, 3, stride=2))
    x5 = net.relu(net.conv(x4, 32, 3, groups=32))
    x6 = net.relu(net.conv(x5, 32, 5))
    x7 = net.conv(x6, 32, 3, bias=False)
    x8 = net.relu(net.conv(x7, 32, 3, dilation=3))
    x = net.maxpool(x8, 2, 2)
    x = net.flatten(net.global_avgpool(x))
    net.dense(x, num_classes)
    return net


BUILTIN_MODELS: dict[str, Callable[..., Net]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "tiny_mixed": tiny_mixed,
}


def build_net(name: str, batch: int = 1, image_size: int | None = None, seed: int = 0) -> Net:
    """The recorded layers of built-in model ``name`` (see :data:`BUILTIN_MODELS`)."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}: built-in models are {', '.join(sorted(BUILTIN_MODELS))}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch {batch!r} must be a positive integer")
    kwargs: dict = {"batch": batch, "seed": seed}
    if image_size is not None:
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size {image_size!r} must be an integer >= 8")
        if name != "tiny_mixed" and image_size < 32:
            raise ValueError(f"image_size {image_size} is too small for {name} (five 2x downsamplings): use >= 32")
        kwargs["image_size"] = image_size
    return BUILTIN_MODELS[name](**kwargs)


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------

def to_onnx(net: Net, opset: int = 17, dynamic_batch: bool = False):
    """The ONNX ``ModelProto`` of ``net`` (input ``"input"``, output ``"output"``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for layer in net.layers:
        ins = list(layer.inputs)
        for wname, arr in layer.weights.items():
            full = f"{layer.output}.{wname}"
            inits.append(numpy_helper.from_array(arr, full))
            ins.append(full)
        a = layer.attrs
        if layer.op == "conv":
            k, p, s = a["kernel"], a["padding"], a["stride"]
            nodes.append(helper.make_node("Conv", ins, [layer.output], name=layer.output, kernel_shape=[k, k],
                                          pads=[p, p, p, p], strides=[s, s], group=a["groups"],
                                          dilations=[a["dilation"]] * 2))
        elif layer.op == "relu":
            nodes.append(helper.make_node("Relu", ins, [layer.output], name=layer.output))
        elif layer.op == "add":
            nodes.append(helper.make_node("Add", ins, [layer.output], name=layer.output))
        elif layer.op == "maxpool":
            k, p, s = a["kernel"], a["padding"], a["stride"]
            nodes.append(helper.make_node("MaxPool", ins, [layer.output], name=layer.output, kernel_shape=[k, k],
                                          pads=[p, p, p, p], strides=[s, s]))
        elif layer.op == "avgpool_global":
            nodes.append(helper.make_node("GlobalAveragePool", ins, [layer.output], name=layer.output))
        elif layer.op == "flatten":
            nodes.append(helper.make_node("Flatten", ins, [layer.output], name=layer.output, axis=1))
        elif layer.op == "dense":
            nodes.append(helper.make_node("Gemm", ins, [layer.output], name=layer.output, transB=1))
        else:  # pragma: no cover - internal invariant
            raise AssertionError(layer.op)
    nodes.append(helper.make_node("Identity", [net.output], ["output"], name="output"))
    in_shape: list = list(net.input_shape)
    out_shape: list = [net.input_shape[0], net.channels[net.output]]
    if dynamic_batch:
        in_shape[0] = out_shape[0] = "batch"
    graph = helper.make_graph(
        nodes, net.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tvm-winograd")
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime 1.18+
    onnx.checker.check_model(model)
    return model


def build_onnx(name: str, batch: int = 1, image_size: int | None = None, seed: int = 0):
    """``(onnx.ModelProto, Net)`` of built-in model ``name``."""
    net = build_net(name, batch, image_size, seed)
    return to_onnx(net), net


# ------------------------------------------------------------------------------------------------
# PyTorch (optional)
# ------------------------------------------------------------------------------------------------

def to_torch(net: Net):
    """An equivalent ``torch.nn.Module`` with the same weights (needs ``torch``)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as err:  # torch is an optional extra
        raise NotImplementedError("PyTorch models need the optional 'torch' extra (pip install torch)") from err

    class _Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.params = torch.nn.ParameterDict()
            for layer in net.layers:
                for wname, arr in layer.weights.items():
                    self.params[f"{layer.output}_{wname}"] = torch.nn.Parameter(torch.from_numpy(arr.copy()),
                                                                              requires_grad=False)

        def forward(self, x):
            env = {"input": x}
            for layer in net.layers:
                a, ins = layer.attrs, [env[i] for i in layer.inputs]
                if layer.op == "conv":
                    bias = self.params[f"{layer.output}_bias"] if "bias" in layer.weights else None
                    y = F.conv2d(ins[0], self.params[f"{layer.output}_weight"], bias, a["stride"], a["padding"],
                                 a["dilation"], a["groups"])
                elif layer.op == "relu":
                    y = F.relu(ins[0])
                elif layer.op == "add":
                    y = ins[0] + ins[1]
                elif layer.op == "maxpool":
                    y = F.max_pool2d(ins[0], a["kernel"], a["stride"], a["padding"])
                elif layer.op == "avgpool_global":
                    y = F.adaptive_avg_pool2d(ins[0], 1)
                elif layer.op == "flatten":
                    y = torch.flatten(ins[0], 1)
                else:
                    y = F.linear(ins[0], self.params[f"{layer.output}_weight"], self.params[f"{layer.output}_bias"])
                env[layer.output] = y
            return env[net.output]

    return _Module().eval()
