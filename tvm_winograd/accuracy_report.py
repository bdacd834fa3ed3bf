"""The accuracy report: our compiled Winograd F(m, r) and direct convs against float64 (``tvm-winograd
accuracy``, ``scripts/accuracy.py``). It compiles with TVM, so it lives above the math of
:mod:`tvm_winograd.accuracy` (which imports nothing that compiles)."""

from __future__ import annotations

import numpy as np
import tvm

from .accuracy import PUBLISHED_FP32, relative_errors
from .api import conv2d
from .compute import direct_func, kernel_dtype_for
from .lowering import build_tir
from .reference import conv2d_direct
from .workload import make_spec

__all__ = ["measure_accuracy"]


def measure_accuracy(
    ms: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
    r: int = 3,
    dtypes: tuple[str, ...] = ("float32", "float16"),
    shape: tuple[int, int, int, int] = (1, 64, 32, 32),
    out_channels: int = 32,
    seed: int = 0,
) -> list[dict]:
    """Errors of our TVM Winograd F(m, r) and TVM direct conv vs float64 direct, on signed N(0, 1) data.

    Returns one row per (dtype, algorithm): ``{"dtype", "algorithm", "m", "max_rel", "mean_rel",
    "published"}``, errors normwise-relative (:func:`relative_errors`); for float32, also the tiles
    that take the opt-in fp16 U (``kernel_dtype="float16"``) as dtype ``"float32, fp16 U"``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for dtype in dtypes:
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((out_channels, shape[1], r, r)).astype(dtype)
        ref = conv2d_direct(x.astype("float64"), w.astype("float64"), padding=r // 2)
        spec = make_spec(x.shape, w.shape, padding=r // 2, dtype=dtype)
        direct = build_tir(direct_func(spec), "llvm")
        out = tvm.runtime.empty(spec.output_shape, dtype)
        direct["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        mx, mean = relative_errors(out.numpy(), ref)
        rows.append({"dtype": dtype, "algorithm": "direct", "m": None, "max_rel": mx, "mean_rel": mean,
                     "published": PUBLISHED_FP32["direct"] if dtype == "float32" and r == 3 else None})
        for m in ms:
            mx, mean = relative_errors(conv2d(x, w, m=m, padding=r // 2), ref)
            rows.append({"dtype": dtype, "algorithm": f"F({m},{r})", "m": m, "max_rel": mx, "mean_rel": mean,
                         "published": PUBLISHED_FP32.get(m) if dtype == "float32" and r == 3 else None})
        for m in (m for m in ms if kernel_dtype_for(spec, m, "float16")):
            mx, mean = relative_errors(conv2d(x, w, m=m, padding=r // 2, kernel_dtype="float16"), ref)
            rows.append({"dtype": f"{dtype}, fp16 U", "algorithm": f"F({m},{r})", "m": m, "max_rel": mx,
                         "mean_rel": mean, "published": None})
    return rows
