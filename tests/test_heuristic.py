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

from tvm_winograd.workload import choose_algorithm, make_spec

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
    from tvm_winograd.relax_pass import _forced_tile

    assert _forced_tile(layer_spec(3, 224, 64, layout, dtype, batch), "llvm") == LLVM_FORCED_CONV1_1[(layout, dtype)]
