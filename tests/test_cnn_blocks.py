"""Blocks of the CNNs that ran slowly before the llvm rules (issue 14), exported from PyTorch to ONNX,
compiled with the defaults and compared with onnxruntime; the compile report must list every
PrimFunc as scheduled (by our convolutions or a named rule), none ``unscheduled``.

* EfficientNet's MBConv: 1x1 expand + BN + SiLU, depthwise 3x3 + BN + SiLU, squeeze-excite (global
  mean, 1x1, SiLU, 1x1, sigmoid, multiply), 1x1 project + BN, residual;
* ConvNeXt's block: depthwise 7x7, permute to NHWC, layer norm, Linear 4x + GELU, Linear, layer
  scale, permute back, residual;
* ESPCN's super-resolution head: 5x5 conv + tanh, 3x3 conv + tanh, 3x3 conv, pixel shuffle (ONNX
  DepthToSpace);
* DenseNet's layer: BN + ReLU + 1x1 conv + BN + ReLU + 3x3 conv, concatenated to its input, BN + ReLU;
* ConvNeXt as torchvision writes it (``convnext_tv``): a stem conv and ``LayerNorm2d`` (permute, layer
  norm, permute back), two blocks whose (C, 1, 1) layer scale multiplies *after* the permute back to
  NCHW, so the residual stream between blocks is the model's NCHW, then a downsampling
  ``LayerNorm2d`` + 2x2 stride-2 conv;
* MobileNetV2's inverted residual: 1x1 expand + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 project + BN,
  residual.

Layout: compiled with the defaults (NHWC on CPUs), no layout transform is left inside any block:
only at its input and output (``CompileReport.layout_transforms``).

Tolerance: with signed random data the rounding error of an ``n``-term dot product grows like
``sqrt(n) u`` (u = 2^-24) of its magnitude; both runtimes make such errors, so per dot product on
the path ``4 sqrt(n) u`` (four standard deviations, both sides), plus ``MAX_ULP`` per polynomial
exp/tanh/erf/sigmoid, all relative to the largest output.  The bound is asserted to stay far below
a wrong answer.
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.schedule.llvm.fastmath import MAX_ULP

torch = pytest.importorskip("torch")
nn = torch.nn
U = 2.0**-24


class MBConv(nn.Module):
    def __init__(self, c: int = 16, expand: int = 4, squeeze: int = 4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.se_reduce, self.se_expand = nn.Conv2d(h, squeeze, 1), nn.Conv2d(squeeze, h, 1)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.se_expand(nn.functional.silu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return x + self.project(y * s)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int = 24):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.randn(c) * 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class SRHead(nn.Module):
    def __init__(self, c: int = 3, r: int = 3):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, 16, 5, padding=2), nn.Conv2d(16, 8, 3, padding=1)
        self.c3, self.shuffle = nn.Conv2d(8, c * r * r, 3, padding=1), nn.PixelShuffle(r)

    def forward(self, x):
        return self.shuffle(self.c3(torch.tanh(self.c2(torch.tanh(self.c1(x))))))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 project + BN, residual."""

    def __init__(self, c: int = 16, expand: int = 6):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class DenseLayer(nn.Module):
    def __init__(self, c: int = 16, growth: int = 8):
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(c), nn.BatchNorm2d(4 * growth), nn.BatchNorm2d(c + growth)
        self.c1, self.c2 = nn.Conv2d(c, 4 * growth, 1, bias=False), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.c2(torch.relu(self.bn2(self.c1(torch.relu(self.bn1(x))))))
        return torch.relu(self.bn3(torch.cat([x, y], 1)))


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: a layer norm over channels of an NCHW tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """torchvision.models.convnext.CNBlock (inference: stochastic depth is the identity)."""

    def __init__(self, c: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c), Permute(0, 2, 3, 1),
                                   nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c),
                                   Permute(0, 3, 1, 2))
        self.layer_scale = nn.Parameter(1 + 0.3 * torch.randn(c, 1, 1))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class ConvNeXtTorchvision(nn.Module):
    def __init__(self, c: int = 24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), LayerNorm2d(c, eps=1e-6))
        self.blocks = nn.Sequential(CNBlock(c), CNBlock(c))
        self.down = nn.Sequential(LayerNorm2d(c, eps=1e-6), nn.Conv2d(c, 2 * c, 2, stride=2))

    def forward(self, x):
        return self.down(self.blocks(self.stem(x)))


#: name -> (module, input shape, dot-product lengths on the path, polynomial functions on the path,
#: rules that must appear in the report, epilogues the convolutions must have fused (report tags:
#: b bias, a residual, r ReLU, 6 ReLU6, s SiLU, g sigmoid, t tanh))
BLOCKS = {
    "mbconv": (MBConv, (1, 16, 15, 15), [16, 9, 225, 64, 4, 64], 4, {"reduction"}, {"bs", "bg"}),
    "convnext": (ConvNeXtBlock, (1, 24, 14, 14), [49, 24, 24, 24, 96], 1, {"matmul", "row-reduction"}, {"b"}),
    "sr_head": (SRHead, (1, 3, 17, 17), [75, 144, 72], 2, {"injective"}, {"bt"}),
    "inverted_residual": (InvertedResidual, (1, 16, 14, 14), [16, 9, 96], 0, set(), {"b6"}),
    "dense": (DenseLayer, (1, 16, 13, 13), [16, 288], 0, {"injective"}, {"br"}),
    "convnext_tv": (ConvNeXtTorchvision, (1, 3, 12, 12), [27, 24] + [49, 24, 24, 96] * 2 + [24, 96], 2,
                    {"matmul"}, {"b"}),
}

#: name -> where its layout transforms sit, where that is not one at the input and one at the output
SITES = {
    "sr_head": {"input": 1, "output": 1, "inside": 0},  # the pixel shuffle's transpose is the output's
}


def _onnx(name: str):
    cls, shape, *_ = BLOCKS[name]
    torch.manual_seed(0)
    module = cls().eval()
    for m in module.modules():  # trained-looking batch norms (the defaults are the identity)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_()
            m.bias.data.normal_()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, torch.randn(*shape), buf, dynamo=False, input_names=["input"])
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_matches_onnxruntime_and_is_fully_scheduled(name, rng):
    _, shape, dots, polynomials, rules, epilogues = BLOCKS[name]
    model = _onnx(name)
    x = rng.standard_normal(shape).astype("float32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    ex, report = compile_model(from_onnx_model(model), "llvm", "/nonexistent-schedules")
    assert report.unscheduled() == [], report.counts()
    assert rules <= set(report.counts()), report.counts()
    assert {f.scheduled_by for f in report.functions if f.kind == "direct"} <= {"direct"}
    assert epilogues <= {layer.epilogue for layer in report}, [layer.epilogue for layer in report]
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"input": x})[0]
    tol = U * (sum(4 * math.sqrt(n) for n in dots) + polynomials * max(MAX_ULP.values()) + 8) * np.abs(ref).max()
    assert tol < 0.01 * np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol, f"{name}: max error {err:.3g} > derived bound {tol:.3g}"
    # NHWC inside: the input's transpose and the output's, none between two ops of the block.
    assert report.layout_transforms == SITES.get(name, {"input": 1, "output": 1, "inside": 0}), report.layout_transforms
