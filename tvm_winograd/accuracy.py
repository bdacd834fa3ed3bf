"""Error analysis of Winograd convolution in floating point: bounds for tests, measurements for reports.

The bound (componentwise, worst case, Higham "Accuracy and Stability of Numerical Algorithms" §3).
A Winograd output is a sum of products ``y = sum_t prod(t)`` where every term passes through at most
``n`` rounded operations (multiplications by transform constants, additions, casts).  With unit
roundoff ``u`` each computed term is ``prod(t) (1 + theta_t)``, ``|theta_t| <= gamma_n = n u / (1 - n u)``,
so::

    |y_hat - y| <= gamma_n * S + u_out * |y|,     S = sum_t |prod(t)|
                 = gamma_n * sum_c |A_T| [ (|G||g||G_T|) . (|B_T||d||B|) ] |A|

``S`` is computed exactly in float64 (:func:`reference.conv2d_winograd_abs`).  ``n`` counts, along the
longest path: the data transform (alpha^2 terms: alpha^2 - 1 additions, 2 constant multiplications), the
weight transform (r^2 + 1), the GEMM over C channels (C additions, 1 multiplication), the inverse
transform (alpha^2 + 1) and one cast.  When ``data_pack``/``kernel_pack`` are stored in a narrower dtype
(fp16 storage, fp32 accumulation) each adds one rounding of that dtype's ``u_pack``.

This is the rigorous worst case; errors on random data are typically ~sqrt(n) smaller (Higham & Mary,
2019), and tests compare against the bound itself, never against a loosened constant.
"""

from __future__ import annotations

import numpy as np

from .reference import conv2d_direct, conv2d_winograd_abs
from .workload import Padding

__all__ = ["unit_roundoff", "rounding_depth", "error_bound", "relative_errors", "PUBLISHED_FP32"]

#: Barabasz et al. (arXiv:1803.10986), fp32 errors of F(m, 3) as quoted in TVM's winograd_util.py.
PUBLISHED_FP32 = {"direct": 4.63e-8, 2: 7.65e-8, 3: 2.35e-7, 4: 3.29e-7, 5: 6.81e-7, 6: 8.79e-7, 7: 3.71e-6, 8: 7.35e-6}


def unit_roundoff(dtype: str) -> float:
    """``u = 2^-p`` for a dtype with p-bit significand (round to nearest)."""
    return {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}[str(dtype)]


def rounding_depth(channels: int, m: int, r: int) -> int:
    """``n``: the most rounded operations any term of a Winograd output goes through."""
    alpha = m + r - 1
    data_transform = alpha * alpha + 1
    weight_transform = r * r + 1
    gemm = channels + 1
    inverse = alpha * alpha + 1
    return data_transform + weight_transform + gemm + inverse + 1


def error_bound(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int,
    padding: Padding,
    layout: str = "NCHW",
    acc_dtype: str = "float32",
    pack_dtype: str | None = None,
    out_dtype: str = "float32",
    points=None,
) -> np.ndarray:
    """Componentwise bound on ``|winograd(x, w) - conv(x, w)|`` for the computed (not exact) result.

    ``x`` and ``w`` are the actual (already rounded to the input dtype) inputs; the reference must be
    computed in float64 from those same values.
    """
    channels = x.shape[1] if layout == "NCHW" else x.shape[3]
    r = w.shape[2] if layout == "NCHW" else w.shape[0]
    n = rounding_depth(channels, m, r)
    u = unit_roundoff(acc_dtype)
    gamma = n * u / (1 - n * u)
    u_pack = 0.0 if pack_dtype in (None, acc_dtype) else 2 * unit_roundoff(pack_dtype)
    s = conv2d_winograd_abs(x, w, m=m, padding=padding, layout=layout, points=points)
    y_abs = np.abs(conv2d_direct(x, w, padding=padding, layout=layout))
    return (gamma + u_pack) * s + unit_roundoff(out_dtype) * y_abs


def relative_errors(y: np.ndarray, y_ref: np.ndarray) -> tuple[float, float]:
    """``(max, mean)`` of ``|y - y_ref| / max|y_ref|`` (normwise-relative, as in accuracy reports)."""
    err = np.abs(np.asarray(y, dtype=np.float64) - y_ref) / np.max(np.abs(y_ref))
    return float(err.max()), float(err.mean())


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
    "published"}``, errors normwise-relative (:func:`relative_errors`).
    """
    import tvm

    from .api import conv2d
    from .compute import direct_func
    from .workload import make_spec

    rng = np.random.default_rng(seed)
    rows = []
    for dtype in dtypes:
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((out_channels, shape[1], r, r)).astype(dtype)
        ref = conv2d_direct(x.astype("float64"), w.astype("float64"), padding=r // 2)
        spec = make_spec(x.shape, w.shape, padding=r // 2, dtype=dtype)
        direct = tvm.compile(tvm.IRModule({"main": direct_func(spec)}), target="llvm")
        out = tvm.runtime.empty(spec.output_shape, dtype)
        direct["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        mx, mean = relative_errors(out.numpy(), ref)
        rows.append({"dtype": dtype, "algorithm": "direct", "m": None, "max_rel": mx, "mean_rel": mean,
                     "published": PUBLISHED_FP32["direct"] if dtype == "float32" and r == 3 else None})
        for m in ms:
            mx, mean = relative_errors(conv2d(x, w, m=m, padding=r // 2), ref)
            rows.append({"dtype": dtype, "algorithm": f"F({m},{r})", "m": m, "max_rel": mx, "mean_rel": mean,
                         "published": PUBLISHED_FP32.get(m) if dtype == "float32" and r == 3 else None})
    return rows


def accuracy_markdown(rows: list[dict]) -> str:
    """The rows of :func:`measure_accuracy` as a markdown table."""
    lines = ["| dtype | algorithm | max rel. error | mean rel. error | published fp32 (Barabasz et al.) |",
             "|---|---|---|---|---|"]
    for row in rows:
        pub = f"{row['published']:.2e}" if row["published"] is not None else "-"
        lines.append(f"| {row['dtype']} | {row['algorithm']} | {row['max_rel']:.2e} | {row['mean_rel']:.2e} | {pub} |")
    return "\n".join(lines)
