"""Bad input: every rejection names the bad value; nothing is silently computed wrong."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_winograd as tw
from tvm_winograd.compute import WinogradConfig, winograd_func
from tvm_winograd.heuristic import choose_algorithm
from tvm_winograd.workload import check_winograd, make_spec

X = np.zeros((1, 4, 8, 8), "float32")
W = np.zeros((6, 4, 3, 3), "float32")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"stride": 2}, NotImplementedError, r"stride=\(2, 2\)"),
        ({"dilation": (1, 2)}, NotImplementedError, r"dilation=\(1, 2\)"),
        ({"groups": 2}, NotImplementedError, "groups=2"),
    ],
)
def test_winograd_rejects_ineligible_convolutions(kwargs, exc, match):
    weight = (6, 4 // kwargs.get("groups", 1), 3, 3)
    spec = make_spec(X.shape, weight, padding=1, **kwargs)
    with pytest.raises(exc, match=match):
        check_winograd(spec, 4)
    with pytest.raises(exc, match=match):
        winograd_func(spec, WinogradConfig(m=4))
    algo, m, reason = choose_algorithm(spec)
    assert algo == "direct" and m is None and match.replace("\\", "") in reason


@pytest.mark.parametrize(
    "x,w,kwargs,exc,match",
    [
        (X, np.zeros((6, 4, 3, 5), "float32"), {}, NotImplementedError, "kernel 3x5 is not square"),
        (X, np.zeros((6, 4, 4, 4), "float32"), {}, NotImplementedError, "r=4"),
        (X, W, {"m": 1}, ValueError, "m=1"),
        (X, W, {"m": 9}, ValueError, "m=9"),
        (X.astype("int32"), W.astype("int32"), {}, NotImplementedError, "int32"),
        (X, W.astype("float16"), {}, ValueError, "float16"),
        (X, np.zeros((6, 5, 3, 3), "float32"), {}, ValueError, "channel mismatch: input has 4 channels"),
        (X, W, {"layout": "NCWH"}, ValueError, "NCWH"),
        (X, W, {"padding": "FULL"}, ValueError, "FULL"),
        (X, W, {"padding": -1}, ValueError, "negative"),
        (X[0], W, {}, ValueError, r"input shape \(4, 8, 8\) is not 4-D"),
        (np.zeros((1, 4, 2, 2), "float32"), W, {"padding": 0}, ValueError, "output would be empty"),
        (X, W, {"acc_dtype": "float64x"}, ValueError, "float64x"),
        (X, W, {"target": "no-such-target"}, ValueError, "no-such-target"),
    ],
)
def test_conv2d_bad_input(x, w, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tw.conv2d(x, w, **kwargs)


def test_heuristic_prefers_winograd_on_large_3x3_and_direct_on_tiny():
    big = make_spec((1, 128, 56, 56), (128, 128, 3, 3), padding=1)
    algo, m, _ = choose_algorithm(big)
    assert algo == "winograd" and m in (4, 6)
    tiny = make_spec((1, 512, 1, 1), (512, 512, 3, 3), padding=1)
    assert choose_algorithm(tiny)[0] == "direct"
    half = make_spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1, dtype="float16")
    assert choose_algorithm(half)[1] in (2, 4)  # fp16 never gets F(6,3)


def test_heuristic_counts_the_fused_cpu_schedule():
    """fp32 NHWC on llvm: VGG conv2_2 (128 ch., 112x112) runs F(4,3) fused (V and M stay in cache)
    and that beat F(6,3), whose 19 tiles per row cannot be fused, by 1.5x in the sweep
    (BENCHMARKS.md); NCHW, fp16 and CUDA have no fused schedule, so nothing is credited there."""
    from tvm_winograd.heuristic import CPU_COST_MODEL
    from tvm_winograd.schedule.fusion import spec_fused_step

    nhwc = make_spec((1, 112, 112, 128), (3, 3, 128, 128), padding=1, layout="NHWC")
    assert spec_fused_step(nhwc, 4) == 14 and spec_fused_step(nhwc, 6) is None
    assert choose_algorithm(nhwc)[1] == 4
    assert spec_fused_step(nhwc, 4, "cuda") is None
    # the same CPU model for a kind without the fused schedule ("c") credits nothing
    assert CPU_COST_MODEL.winograd_cost(nhwc, 4, "c") > CPU_COST_MODEL.winograd_cost(nhwc, 4, "llvm")
    nchw = make_spec((1, 128, 112, 112), (128, 128, 3, 3), padding=1)
    assert spec_fused_step(nchw, 4) is None
    big_u = make_spec((1, 28, 28, 512), (3, 3, 512, 512), padding=1, layout="NHWC")  # U = 38 MB
    assert spec_fused_step(big_u, 4) is None


def test_heuristic_counts_the_register_tile():
    """F(6,3) on 112 pixels has 19 x 19 tiles: the CPU GEMM gets a 1-row register tile (NCHW, no fused
    steps). Measured NCHW (BENCHMARKS.md): F(4,3) 13.3 ms vs F(6,3) 18.7 ms; the model must say F(4,3)
    on llvm; the term is llvm's micro-kernel (the same model for another kind, "c", has none)."""
    from tvm_winograd.heuristic import CPU_COST_MODEL

    nchw = make_spec((1, 128, 112, 112), (128, 128, 3, 3), padding=1)
    assert choose_algorithm(nchw)[1] == 4
    cost = CPU_COST_MODEL.winograd_cost
    assert cost(nchw, 6, "llvm") > 2 * cost(nchw, 6, "c") > 0
    # 28 x 28 tiles (F(4,3)) have 7-row tiles: nearly the full rate
    assert cost(nchw, 4, "llvm") < 1.5 * cost(nchw, 4, "c")
