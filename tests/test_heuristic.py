"""The direct-vs-Winograd heuristic, pinned on the layers it was fitted on.

Each token is what :func:`choose_algorithm` says for one layer on llvm: ``F4:2.07`` = Winograd F(4, 3),
estimated 2.07x cheaper than direct; ``d:0.51`` = direct (the best Winograd tile only 0.51x as cheap).
The layers are the VGG-16 3x3 convolutions (224x224 input) and the ResNet-18 3x3 stride-1 ones, in the
order of :data:`LAYERS`.  The table was generated before the cost model's constants moved into one
structure; a refit of the CPU model changes it on purpose (and says so in BENCHMARKS.md).
"""

from __future__ import annotations

import re

import pytest

from tvm_winograd.heuristic import cheapest_tile, choose_algorithm
from tvm_winograd.workload import make_spec

#: (name, in_channels, height = width, out_channels)
LAYERS = [
    ("vgg16 conv1_1", 3, 224, 64), ("vgg16 conv1_2", 64, 224, 64), ("vgg16 conv2_1", 64, 112, 128),
    ("vgg16 conv2_2", 128, 112, 128), ("vgg16 conv3_1", 128, 56, 256), ("vgg16 conv3_2", 256, 56, 256),
    ("vgg16 conv4_1", 256, 28, 512), ("vgg16 conv4_2", 512, 28, 512), ("vgg16 conv5_1", 512, 14, 512),
    ("resnet18 64@56", 64, 56, 64), ("resnet18 128@28", 128, 28, 128), ("resnet18 256@14", 256, 14, 256),
    ("resnet18 512@7", 512, 7, 512),
]

#: (layout, dtype, batch) -> one token per layer of LAYERS, for target kind llvm
LLVM_CHOICES = {
    ("NHWC", "float32", 1): "d:0.51 F4:2.07 F4:2.41 F4:2.66 F4:2.88 F4:3.06 F4:2.61 F4:2.73 F4:1.91 F4:2.04 F4:2.03 F4:1.73 F2:1.23",
    ("NHWC", "float32", 8): "d:0.51 F4:2.07 F4:2.42 F4:2.67 F4:2.95 F6:3.15 F6:3.27 F6:3.51 F4:2.49 F4:2.07 F4:2.34 F6:1.99 F4:2.20",
    ("NHWC", "float16", 1): "d:0.29 F4:1.68 F4:2.02 F4:2.36 F4:2.40 F4:2.63 F4:2.61 F4:2.73 F4:1.91 F4:1.57 F4:2.03 F4:1.73 F2:1.23",
    ("NHWC", "float16", 8): "d:0.29 F4:1.68 F4:2.03 F4:2.37 F4:2.69 F4:2.97 F4:3.17 F4:3.36 F4:2.49 F4:1.68 F4:2.35 F4:2.19 F4:2.20",
    ("NCHW", "float32", 1): "d:0.29 F4:1.68 F4:2.02 F4:2.36 F4:2.40 F4:2.63 F4:2.61 F4:2.73 F4:1.91 F4:1.57 F4:2.03 F4:1.73 F2:1.23",
    ("NCHW", "float32", 8): "d:0.29 F6:1.78 F6:2.18 F6:2.61 F6:2.70 F6:3.05 F6:3.27 F6:3.51 F4:2.49 F4:1.68 F4:2.35 F4:2.19 F4:2.20",
    ("NCHW", "float16", 1): "d:0.29 F4:1.68 F4:2.02 F4:2.36 F4:2.40 F4:2.63 F4:2.61 F4:2.73 F4:1.91 F4:1.57 F4:2.03 F4:1.73 F2:1.23",
    ("NCHW", "float16", 8): "d:0.29 F4:1.68 F4:2.03 F4:2.37 F4:2.69 F4:2.97 F4:3.17 F4:3.36 F4:2.49 F4:1.68 F4:2.35 F4:2.19 F4:2.20",
}


def layer_spec(c: int, h: int, k: int, layout: str, dtype: str, batch: int):
    ishape = (batch, c, h, h) if layout == "NCHW" else (batch, h, h, c)
    wshape = (k, c, 3, 3) if layout == "NCHW" else (3, 3, c, k)
    return make_spec(ishape, wshape, padding=1, layout=layout, dtype=dtype)


def _token(algorithm: str, m: int | None, reason: str) -> str:
    gain = re.search(r"([0-9.]+)x cheaper", reason)
    assert gain is not None, reason
    return (f"F{m}" if algorithm == "winograd" else "d") + ":" + gain.group(1)


@pytest.mark.parametrize("layout, dtype, batch", sorted(LLVM_CHOICES))
def test_llvm_choices_on_vgg16_and_resnet18(layout, dtype, batch):
    """The CPU cost model's picks (and estimated gains, to two decimals) on the 13 distinct layers."""
    got = " ".join(_token(*choose_algorithm(layer_spec(c, h, k, layout, dtype, batch), "llvm"))
                   for _, c, h, k in LAYERS)
    assert got == LLVM_CHOICES[(layout, dtype, batch)]


#: (layout, dtype) -> the tile ``algo="winograd"`` forces on VGG-16 conv1_1 (the heuristic says direct
#: there, so the least estimated cost decides), batch 1 and 8 alike
LLVM_FORCED_CONV1_1 = {("NHWC", "float32"): 2, ("NHWC", "float16"): 4, ("NCHW", "float32"): 4, ("NCHW", "float16"): 4}


@pytest.mark.parametrize("layout, dtype", sorted(LLVM_FORCED_CONV1_1))
@pytest.mark.parametrize("batch", [1, 8])
def test_llvm_forced_tile_where_the_heuristic_says_direct(layout, dtype, batch):
    assert cheapest_tile(layer_spec(3, 224, 64, layout, dtype, batch), "llvm") == LLVM_FORCED_CONV1_1[(layout, dtype)]


# --------------------------------------------------------------------------------------------------
# CUDA: its own heuristic (a roofline estimate, not measured on a GPU)
# --------------------------------------------------------------------------------------------------

def test_cuda_layers_are_decided_by_the_cuda_heuristic_alone():
    """cuda decisions read CUDA_HEURISTIC's constants, never the CPU model's: changing every CPU
    constant changes no CUDA choice, and the CUDA costs are the CUDA heuristic's."""
    from dataclasses import replace

    import tvm_winograd.heuristic as heuristic

    specs = [layer_spec(c, h, k, "NCHW", dtype, n) for _, c, h, k in LAYERS for dtype in ("float32", "float16")
             for n in (1, 8)]
    before = [choose_algorithm(s, "cuda") for s in specs]
    cpu = heuristic.CPU_COST_MODEL
    try:
        heuristic.CPU_COST_MODEL = replace(cpu, transform_weight=30.0, memory_weight=0.1, cache_weight=9.0,
                                           min_gain=0.1, full_rows=1)
        assert [choose_algorithm(s, "cuda") for s in specs] == before
        assert [choose_algorithm(s, "llvm") for s in specs] != [(a, m, r) for a, m, r in before]
    finally:
        heuristic.CPU_COST_MODEL = cpu
    spec = layer_spec(256, 56, 256, "NCHW", "float32", 1)
    assert heuristic.winograd_cost(spec, 4, "cuda") == heuristic.CUDA_HEURISTIC.winograd_cost(spec, 4)
    assert heuristic.direct_cost(spec, "cuda") == heuristic.CUDA_HEURISTIC.direct_cost(spec)


def test_cuda_heuristic_is_a_roofline_of_counts():
    """VGG conv3_2 (256 ch., 56x56, fp32) is compute-bound: every kernel's multiply-adds exceed its bytes
    at the balance except the transforms', so F(6,3) (fewest GEMM multiply-adds per output) wins; ResNet-18's
    512@7 at batch 1 is bound by reading U (alpha^2/r^2 times the weights), so direct stays; fp16 halves
    the bytes and never gets F(6,3)."""
    from tvm_winograd.heuristic import CUDA_HEURISTIC

    conv3_2 = layer_spec(256, 56, 256, "NCHW", "float32", 1)
    assert CUDA_HEURISTIC.direct_cost(conv3_2) == conv3_2.flops / 2  # 1.85 G multiply-adds; 8.8 MB
    assert choose_algorithm(conv3_2, "cuda")[:2] == ("winograd", 6)
    late = layer_spec(512, 7, 512, "NCHW", "float32", 1)
    assert choose_algorithm(late, "cuda")[0] == "direct"
    assert choose_algorithm(layer_spec(512, 7, 512, "NCHW", "float32", 8), "cuda")[0] == "winograd"
    assert choose_algorithm(layer_spec(256, 56, 256, "NCHW", "float16", 1), "cuda")[1] == 4
    # a GPU with more multiply-adds per byte (H100: 10) finds the weight-bound layer even less worth it
    from dataclasses import replace

    h100 = replace(CUDA_HEURISTIC, balance=10.0)
    ratio = {model: model.winograd_cost(late, 2) / model.direct_cost(late) for model in (CUDA_HEURISTIC, h100)}
    assert ratio[h100] > ratio[CUDA_HEURISTIC] > 1
