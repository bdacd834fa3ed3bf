"""The activations a convolution's epilogue can apply after ``conv + bias + residual`` (math: numpy only).

``relu`` is :class:`~tvm_winograd.compute.Epilogue`'s own flag (kept apart: it is in every tuning key
since the first release); these are the others the graph pass fuses (issue 14, item 3):

========  ==========================  ===========  ===============================================
name      f(y)                        tag letter   where
========  ==========================  ===========  ===============================================
relu6     min(max(y, 0), 6)           ``6``        MobileNetV2 (ONNX Clip(0, 6))
silu      y * sigmoid(y)              ``s``        EfficientNet, RegNet-Y, YOLO (Sigmoid + Mul)
sigmoid   1 / (1 + exp(-y))           ``g``        squeeze-excite gates
tanh      tanh(y)                     ``t``        super-resolution nets (ESPCN)
========  ==========================  ===========  ===============================================

For the error model (:func:`tvm_winograd.accuracy.error_model`): an error ``e`` of the convolution
reaches the output as ``f'(y) e`` (to first order; :func:`derivative`) for the smooth ones, at most
as ``e`` for relu6 (1-Lipschitz, like ReLU: its kinks make the derivative useless), and the float32 evaluation
of ``f`` adds at most :data:`ULP` units of ``u = 2^-24`` relative to ``|f(y)|``: the polynomial
exp/tanh of :mod:`tvm_winograd.schedule.llvm.fastmath` (``MAX_ULP``: exp 4, tanh 8, sigmoid 8),
plus the product's rounding for silu (a test pins the two tables together).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ACTIVATIONS", "PIECEWISE_LINEAR", "TAGS", "ULP", "apply", "derivative"]

#: The activation names, in tag order.
ACTIVATIONS = ("relu6", "silu", "sigmoid", "tanh")

#: One letter each for the epilogue's tag (function names); none of ``b``, ``a``, ``r``.
TAGS = {"relu6": "6", "silu": "s", "sigmoid": "g", "tanh": "t"}

#: Relative error of the float32 evaluation, in units of 2^-24 (see the module docstring).
ULP = {"relu6": 0, "silu": 9, "sigmoid": 8, "tanh": 8}


def _sigmoid(y: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(y))  # no overflow, and no cancellation in either tail
    return np.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def apply(name: str, y: np.ndarray) -> np.ndarray:
    """``f(y)`` in float64."""
    if name == "relu6":
        return np.clip(y, 0.0, 6.0)
    if name == "silu":
        return y * _sigmoid(y)
    if name == "sigmoid":
        return _sigmoid(y)
    if name == "tanh":
        return np.tanh(y)
    raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")


#: The piecewise-linear ones: an error passes through at most unchanged (Lipschitz constant 1).
PIECEWISE_LINEAR = ("relu6",)


def derivative(name: str, y: np.ndarray) -> np.ndarray:
    """``|f'(y)|`` in float64 of a smooth activation (not :data:`PIECEWISE_LINEAR`)."""
    s = _sigmoid(y)
    if name == "silu":
        return np.abs(s * (1.0 + y * (1.0 - s)))
    if name == "sigmoid":
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(y) ** 2
    raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
