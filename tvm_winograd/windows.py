"""The reference of a conv layer at a few output windows: float64 error models without the full output.

A full float64 reference of a large layer is out of reach where it is needed (VGG-16's conv1_2 at batch
32: 118 GFLOP, 411 MB).  Winograd computes each output tile from its own input patch, so the outputs of
a window of whole tiles -- rows and columns starting at a multiple of every tile m of :data:`ALIGN` --
are computed exactly as the same window cut from the padded input, convolved without padding, computes
them; an output channel reads only its own filter (and bias, and residual).  :func:`window_models`
therefore gives the error model (:func:`tvm_winograd.accuracy.error_model`: reference, bound, sigma) of
two windows per layer -- the top-left corner of the first image (the padding) and the bottom-right
corner of the last (the partial last tile) -- over at most :data:`CHANNELS` output channels, and the flat
indices of those outputs in the full output, for :func:`tvm_winograd.accuracy.assess`.

numpy only: the GPU pack's ``run.py`` evaluates it on the GPU host from the regenerated inputs.
"""

from __future__ import annotations

import numpy as np

from .accuracy import ErrorModel, Precision, error_model
from .workload import Conv2dSpec

__all__ = ["ALIGN", "WINDOW", "CHANNELS", "crop_windows", "channel_subset", "layer_windows", "window_models"]

#: Windows start at multiples of every tile m packed (2 and 4: F(2,3), F(4,3)).
ALIGN = 4
#: Output rows (and columns) per window: two tiles of m = 4.
WINDOW = 8
#: Output channels the windows cover at most (evenly spread, the first and last among them).
CHANNELS = 64


def crop_windows(extent: int) -> tuple[tuple[int, int], tuple[int, int]] | tuple[tuple[int, int]]:
    """``[start, stop)`` output ranges along one axis of ``extent`` outputs: the first :data:`WINDOW` and
    the last ones (starting at a multiple of :data:`ALIGN`), or the whole axis when it is short."""
    if extent <= 2 * WINDOW:
        return ((0, extent),)
    return ((0, WINDOW), ((extent - WINDOW) // ALIGN * ALIGN, extent))


def channel_subset(channels: int) -> np.ndarray:
    """Up to :data:`CHANNELS` output channels, evenly spread from the first to the last."""
    return np.unique(np.linspace(0, channels - 1, min(channels, CHANNELS)).round().astype(np.int64))


def layer_windows(spec: Conv2dSpec) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """``(image, rows, cols)`` of the windows: the first image's top-left corner and the last image's
    bottom-right one (one window of the whole image when it is small and the batch is 1)."""
    rows, cols = crop_windows(spec.out_height), crop_windows(spec.out_width)
    first, last = (0, rows[0], cols[0]), (spec.batch - 1, rows[-1], cols[-1])
    return [first] if first == last else [first, last]


def _window(data: dict[str, np.ndarray], spec: Conv2dSpec, n: int, rows, cols, channels: np.ndarray, m: int | None,
            precision: Precision, relu: bool, activation: str | None) -> ErrorModel:
    pt, pl, pb, pr = spec.padding
    x = np.pad(data["x"][n:n + 1], ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    xw = x[:, :, rows[0]:rows[1] + spec.r - 1, cols[0]:cols[1] + spec.r - 1]
    residual, bias = data.get("residual"), data.get("bias")
    if residual is not None:
        residual = residual[n:n + 1, channels, rows[0]:rows[1], cols[0]:cols[1]]
    return error_model(xw, data["w"][channels], m=m, padding=0, layout="NCHW", precision=precision,
                       bias=None if bias is None else bias[channels], residual=residual, relu=relu,
                       activation=activation)


def window_models(data: dict[str, np.ndarray], spec: Conv2dSpec, m: int | None, precision: Precision, *,
                  relu: bool = False, activation: str | None = None) -> tuple[np.ndarray, ErrorModel]:
    """The flat indices (in the full NCHW output) of the windows' outputs and their joint error model, for
    Winograd F(m, r) (``m``) or direct convolution (``m`` None) with the stages' dtypes of ``precision``.

    ``data``: ``x``, ``w`` (OIHW) and, where the layer has them, ``bias`` and ``residual``.  Raises
    ``NotImplementedError`` for other than NCHW layers of one group (stride and dilation 1: Winograd's).
    """
    if spec.layout != "NCHW" or spec.groups != 1 or spec.stride != (1, 1) or spec.dilation != (1, 1):
        raise NotImplementedError(f"reference windows take NCHW layers of one group, stride and dilation 1, not "
                                  f"{spec.key()}")
    channels = channel_subset(spec.out_channels)
    windows = layer_windows(spec)
    index = np.concatenate([np.ravel_multi_index(np.ix_([n], channels, range(*rows), range(*cols)),
                                                 spec.output_shape).ravel() for n, rows, cols in windows])
    parts = [_window(data, spec, n, rows, cols, channels, m, precision, relu, activation) for n, rows, cols in windows]
    joined = ErrorModel(*(np.concatenate([getattr(p, f).ravel() for p in parts])
                          for f in ("reference", "expected", "bound", "sigma")),
                        # the windows share no tile: the gain statistic's variances add
                        float(np.sqrt(sum(p.gain_sd ** 2 for p in parts))), parts[0].coherent)
    return index, joined
