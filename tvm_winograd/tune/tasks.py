"""Named benchmark layers: the 3x3 convolutions of VGG-16 (224x224) and ResNet-18/34 (stride 1).

Each entry is ``name -> (in_channels, height=width, out_channels)``; every one has a 3x3 kernel,
padding 1 and stride 1.  Layers with the same shape appear once (aliases in the comment).
"""

from __future__ import annotations

import fnmatch

from ..workload import Conv2dSpec, make_spec

__all__ = ["VGG16_LAYERS", "RESNET18_LAYERS", "BENCH_LAYERS", "shape_spec", "layer_spec", "select_layers"]

VGG16_LAYERS: dict[str, tuple[int, int, int]] = {
    "vgg_conv1_2": (64, 224, 64),
    "vgg_conv2_1": (64, 112, 128),
    "vgg_conv2_2": (128, 112, 128),
    "vgg_conv3_1": (128, 56, 256),
    "vgg_conv3_2": (256, 56, 256),  # = conv3_3
    "vgg_conv4_1": (256, 28, 512),
    "vgg_conv4_2": (512, 28, 512),  # = conv4_3
    "vgg_conv5_1": (512, 14, 512),  # = conv5_2, conv5_3
}

RESNET18_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet_64x56": (64, 56, 64),
    "resnet_128x28": (128, 28, 128),
    "resnet_256x14": (256, 14, 256),
    "resnet_512x7": (512, 7, 512),
}

BENCH_LAYERS = {**VGG16_LAYERS, **RESNET18_LAYERS}


def layer_spec(name: str, batch: int = 1, layout: str = "NCHW", dtype: str = "float32") -> Conv2dSpec:
    """The :class:`Conv2dSpec` of a named layer."""
    if name not in BENCH_LAYERS:
        raise ValueError(f"unknown layer {name!r}: choose from {', '.join(BENCH_LAYERS)}")
    return shape_spec(*BENCH_LAYERS[name], batch, layout, dtype)


def shape_spec(in_channels: int, size: int, out_channels: int, batch: int = 1, layout: str = "NCHW",
               dtype: str = "float32") -> Conv2dSpec:
    """The :class:`Conv2dSpec` of a 3x3, stride-1, padding-1 layer on ``size x size`` pixels (a benchmark
    layer's shape)."""
    c, h, k = in_channels, size, out_channels
    ishape = (batch, c, h, h) if layout == "NCHW" else (batch, h, h, c)
    wshape = (k, c, 3, 3) if layout == "NCHW" else (3, 3, c, k)
    return make_spec(ishape, wshape, padding=1, layout=layout, dtype=dtype)


def select_layers(patterns: str | None) -> list[str]:
    """Layer names matching comma-separated glob ``patterns`` (``"vgg_conv2_2,resnet_*"``), in table order."""
    if not patterns:
        return list(BENCH_LAYERS)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    out = [name for name in BENCH_LAYERS if any(fnmatch.fnmatch(name, p) for p in pats)]
    if not out:
        raise ValueError(f"no layer matches {patterns!r}: choose from {', '.join(BENCH_LAYERS)}")
    return out
