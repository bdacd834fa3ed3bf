"""Level 2: the TE compute, built for llvm with the default schedule, against the float64 reference.

Tolerance: :func:`tvm_winograd.accuracy.assess` on the model of :func:`tvm_winograd.accuracy.error_model`
for the stage dtypes the compute should use: the componentwise worst-case bound (the outer guard) and the
random-rounding model (RMS, peak and gain statistics), computed per output element from the actual inputs.
The injected-bug tests show the second check rejects precision bugs the bound alone lets through.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_winograd as tw
from tvm_winograd.accuracy import Precision, assess, error_model, relative_errors, weight_transform_bound
from tvm_winograd.api import build_winograd
from tvm_winograd.compute import Epilogue, WinogradConfig, target_config, weight_transform_func, winograd_func
from tvm_winograd.reference import conv2d_direct, winograd_weight_transform
from tvm_winograd.schedule import schedule_llvm_default
from tvm_winograd.activations import ACTIVATIONS
from tvm_winograd.compute import direct_func
from tvm_winograd.schedule.direct import schedule_direct_llvm
from tvm_winograd.schedule.llvm.fastmath import approximate_math
from tvm_winograd.targets import resolve_target
from tvm_winograd.verify import prepare, run_cpu
from tvm_winograd.workload import make_spec



def _layout_arrays(x, w, layout):
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return x, w


def _check(signed, shape_nchw, k, r, m, layout, dtype, padding, acc_dtype="float32"):
    n, c, h, wd = shape_nchw
    x, w = _layout_arrays(signed(shape_nchw, dtype), signed((k, c, r, r), dtype), layout)
    y = tw.conv2d(x, w, m=m, padding=padding, layout=layout, acc_dtype=acc_dtype)
    x64, w64 = x.astype("float64"), w.astype("float64")
    ref = conv2d_direct(x64, w64, padding=padding, layout=layout)
    assert y.shape == ref.shape and y.dtype == np.dtype(dtype)
    spec = make_spec(x.shape, w.shape, padding=padding, layout=layout, dtype=dtype)
    config = target_config(spec, m, "llvm", acc_dtype=acc_dtype)
    precision = Precision(acc_dtype=acc_dtype, pack_dtype=config.resolved_pack_dtype(spec), out_dtype=dtype,
                          kernel_pack_computed=True, separable=config.separable)
    model = error_model(x, w, m=m, padding=padding, layout=layout, precision=precision)
    verdict = assess(y, model)
    assert verdict.ok, verdict.reason
    return relative_errors(y, ref)


GRID = [(m, r, dtype) for m in (2, 4, 6) for r in (3, 5) for dtype in ("float32", "float16")
        if not (r == 5 and m == 6) and not (dtype == "float16" and m == 6)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("m,r,dtype", GRID)
def test_compute_matches_reference_grid(signed, layout, m, r, dtype):
    """Odd sizes (C=13, H=23, W=19: not multiples of m, H != W), asymmetric padding, batch 2."""
    _check(signed, (2, 13, 23, 19), 11, r, m, layout, dtype, (1, 2, r - 1, 0))


@pytest.mark.parametrize(
    "shape,k,padding,layout,m",
    [
        ((2, 13, 71, 59), 59, 1, "NCHW", 4),  # the odd shape
        ((2, 13, 71, 59), 59, 1, "NHWC", 6),
        ((1, 3, 1, 1), 5, 1, "NCHW", 2),  # H = W = 1, C = 3
        ((1, 3, 1, 1), 5, "SAME", "NHWC", 4),
        ((1, 4, 9, 3), 6, "VALID", "NCHW", 4),  # output 7x1
        ((3, 2, 5, 8), 3, (0, 1), "NHWC", 2),
    ],
)
def test_compute_special_shapes(signed, shape, k, padding, layout, m):
    _check(signed, shape, k, 3, m, layout, "float32", padding)


def test_selectable_accumulation_dtype(signed):
    """fp16 accumulation is allowed and its errors are those the fp16-accumulation model predicts (the
    worst-case bound alone passed the output scaled by 0.7)."""
    _check(signed, (1, 8, 10, 10), 4, 3, 2, "NCHW", "float16", 1, acc_dtype="float16")


def test_error_grows_with_m(signed):
    """Theory (transform norms): F(2,3) < F(4,3) < F(6,3) in fp32 error, on a 64-channel layer."""
    x = signed((1, 64, 24, 24))
    w = signed((16, 64, 3, 3))
    ref = conv2d_direct(x.astype("float64"), w.astype("float64"), padding=1)
    errs = [relative_errors(tw.conv2d(x, w, m=m, padding=1), ref)[1] for m in (2, 4, 6)]
    assert errs[0] < errs[1] < errs[2], errs


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fused_epilogue(signed, layout):
    """relu(conv + bias + residual) in the output stage equals the reference epilogue."""
    spec = make_spec((1, 6, 9, 10) if layout == "NCHW" else (1, 9, 10, 6),
                     (5, 6, 3, 3) if layout == "NCHW" else (3, 3, 6, 5), padding=1, layout=layout)
    config = WinogradConfig(m=4)
    target = tvm.target.Target("llvm")
    conv = tvm.compile(tvm.IRModule({"main": schedule_llvm_default(
        winograd_func(spec, config, Epilogue(bias=True, residual=True, relu=True)))}), target=target)
    x, w = signed(spec.input_shape), signed(spec.weight_shape)
    bias, res = signed((5,)), signed(spec.output_shape)
    compiled = build_winograd(spec, config)
    pack = compiled.transform_weight(w)
    out = tvm.runtime.empty(spec.output_shape, "float32")
    conv["main"](tvm.runtime.tensor(x), pack, tvm.runtime.tensor(bias), tvm.runtime.tensor(res), out)
    model = error_model(x, w, m=4, padding=1, layout=layout, precision=Precision(kernel_pack_computed=True),
                        bias=bias, residual=res, relu=True)
    verdict = assess(out.numpy(), model)
    assert verdict.ok, verdict.reason
    assert (out.numpy() == 0).any() and (out.numpy() > 0).any()  # ReLU did clip something


@pytest.mark.parametrize("m", [2, 4])
def test_fp16_kernel_pack_of_an_fp32_layer(signed, m):
    """``kernel_dtype="float16"`` (opt-in): U computed in fp32, stored in fp16, converted in the GEMM,
    with fp32 data, V and accumulation.  The output is within the model of one more rounding of U, and
    outside the fp32 model (the check can fail: one fp16 rounding is ~1e3 fp32 ulps)."""
    spec = make_spec((1, 9, 10, 16), (3, 3, 16, 32), padding=1, layout="NHWC")
    config = target_config(spec, m, "llvm", kernel_dtype="float16")
    compiled = build_winograd(spec, config)
    x, w = signed(spec.input_shape), signed(spec.weight_shape)
    pack = compiled.transform_weight(w)
    assert pack.dtype == "float16"
    got = compiled(x, pack)

    def model(kernel_dtype):
        return error_model(x, w, m=m, padding=1, layout="NHWC", precision=Precision(
            kernel_pack_computed=True, separable=True, kernel_dtype=kernel_dtype))

    verdict = assess(got, model("float16"))
    assert verdict.ok, verdict.reason
    assert not assess(got, model(None)).ok
    assert relative_errors(got, conv2d_direct(x.astype("float64"), w.astype("float64"), padding=1,
                                              layout="NHWC"))[0] > 1e-5


def test_fp16_kernel_pack_is_for_fp32_layers_up_to_alpha_6():
    """Which layers a requested fp16 U reaches (compute.kernel_dtype_for), and what is refused."""
    from tvm_winograd.compute import check_kernel_dtype, kernel_dtype_for

    fp32 = make_spec((1, 8, 8, 16), (3, 3, 16, 16), padding=1, layout="NHWC")
    fp16 = make_spec((1, 8, 8, 16), (3, 3, 16, 16), padding=1, layout="NHWC", dtype="float16")
    assert [kernel_dtype_for(fp32, m, "float16") for m in (2, 4, 6)] == ["float16", "float16", None]
    assert kernel_dtype_for(fp16, 4, "float16") is None and kernel_dtype_for(fp32, 4, "float32") is None
    assert kernel_dtype_for(fp32, 4, None) is None
    check_kernel_dtype("float16", "llvm")
    with pytest.raises(ValueError, match="'bfloat16'"):
        check_kernel_dtype("bfloat16", "llvm")
    with pytest.raises(ValueError, match="CPU"):
        check_kernel_dtype("float16", "cuda")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_weight_transform_equals_reference(signed, layout):
    """kernel_pack = G g G_T, as its own function (what a compiler folds on constant weights)."""
    spec = make_spec((1, 7, 8, 8) if layout == "NCHW" else (1, 8, 8, 7),
                     (3, 7, 5, 5) if layout == "NCHW" else (5, 5, 7, 3), padding=2, layout=layout)
    w = signed(spec.weight_shape)
    compiled = build_winograd(spec, WinogradConfig(m=4))
    got = compiled.transform_weight(w).numpy()
    ref = winograd_weight_transform(w.astype("float64"), 4, layout)
    assert got.shape == ref.shape == (8, 8, 7, 3)
    bound = weight_transform_bound(w, 4, layout)  # gamma_{r^2 + 3} |G| |g| |G_T| + output rounding
    assert np.all(np.abs(got - ref) <= bound) and np.abs(got - ref).max() > 0


def test_stages_are_named_and_carry_schedule_rules():
    spec = make_spec((1, 4, 8, 8), (4, 4, 3, 3), padding=1, dtype="float16")
    script = winograd_func(spec, WinogradConfig(m=2)).script()
    for stage in ("data_pad", "input_tile", "data_pack", "bgemm", "inverse", "conv2d_winograd"):
        assert f'T.sblock("{stage}")' in script
    for rule in ("winograd_data_pack", "winograd_bgemm", "winograd_inverse", "winograd_output"):
        assert f'"schedule_rule": "{rule}"' in script
    assert '"schedule_rule": "winograd_kernel_pack"' in weight_transform_func(spec, WinogradConfig(m=2)).script()


def test_separable_transforms_add_their_row_passes():
    """``separable=True`` (what llvm compiles) computes B_T d B and A_T M A as two 1-D passes: the
    row stages exist, each reduction runs over alpha terms (not alpha^2)."""
    spec = make_spec((1, 4, 8, 8), (4, 4, 3, 3), padding=1)
    plain = winograd_func(spec, WinogradConfig(m=2)).script()
    script = winograd_func(spec, WinogradConfig(m=2, separable=True)).script()
    for stage in ("data_pack_rows", "inverse_rows"):
        assert f'T.sblock("{stage}")' in script and f'T.sblock("{stage}")' not in plain
    assert "v_r_a, v_r_b = T.axis.remap" in plain and "v_r_a, v_r_b = T.axis.remap" not in script


# --------------------------------------------------------------------------------------------------
# The check can fail: injected precision bugs the worst-case bound alone lets through
# --------------------------------------------------------------------------------------------------

INJECTED = [
    # (bug, m, dtype): each within the worst-case bound (asserted), each rejected by the model
    ("scaled_output", 6, "float32"),  # F(6,3): the bound is ~1e-2 of max|y|, the scale error 1e-3
    ("scaled_output", 4, "float16"),  # fp16 storage: bound ~0.17 of max|y|
    ("perturbed_entry", 2, "float32"),
    ("perturbed_entry", 4, "float32"),
    ("fp16_accumulation", 4, "float16"),  # acc_dtype float16 where the config says float32
]


@pytest.mark.parametrize("bug,m,dtype", INJECTED)
def test_injected_precision_bug_is_rejected(signed, inject_transform_bug, bug, m, dtype):
    """A 16-channel 12x12 layer computed with the bug, judged by the model of the intended dtypes and
    transforms: within the worst-case bound, rejected by the random-rounding model."""
    x, w = signed((1, 16, 12, 12), dtype), signed((16, 16, 3, 3), dtype)
    spec = make_spec(x.shape, w.shape, padding=1, dtype=dtype)
    config = target_config(spec, m, "llvm")
    model = error_model(x, w, m=m, padding=1, precision=Precision(
        pack_dtype=config.resolved_pack_dtype(spec), out_dtype=dtype, kernel_pack_computed=True,
        separable=config.separable))
    assert assess(tw.conv2d(x, w, m=m, padding=1), model).ok  # the same layer without the bug passes
    if bug == "fp16_accumulation":
        y = tw.conv2d(x, w, m=m, padding=1, acc_dtype="float16")
    else:
        inject_transform_bug(bug)
        y = tw.conv2d(x, w, m=m, padding=1)
    verdict = assess(y, model)
    assert verdict.bound_ratio <= 1.0, verdict  # the old check alone would pass it
    assert not verdict.ok, verdict


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("algorithm, layout", [("winograd", "NHWC"), ("winograd", "NCHW"), ("direct", "NHWC")])
def test_activation_epilogue(activation, algorithm, layout):
    """``f(conv + bias)`` in the output stage, with exp/tanh swapped for the polynomials as the llvm
    pipeline does, passes :func:`assess` on the activation's error model; the wrong activation, and
    the output scaled by (1 + 1e-4), do not (the checks see an error the size of the polynomials')."""
    spec = make_spec((1, 16, 10, 11) if layout == "NCHW" else (1, 10, 11, 16),
                     (16, 16, 3, 3) if layout == "NCHW" else (3, 3, 16, 16), padding=1, layout=layout)
    epilogue = Epilogue(bias=True, activation=activation)
    config = WinogradConfig(m=4) if algorithm == "winograd" else None
    case = prepare(spec, epilogue, algorithm, config, seed=3)
    if algorithm == "winograd":
        func = schedule_llvm_default(winograd_func(spec, config, epilogue))
    else:
        func = schedule_direct_llvm(direct_func(spec, epilogue))
    lib = tvm.compile(tvm.IRModule({"main": approximate_math(func)}), target=resolve_target("llvm"))
    got = run_cpu(lib["main"], case)
    verdict = case.assess(got)
    assert verdict.ok, verdict.reason
    wrong = [a for a in ACTIVATIONS if a != activation][0]
    assert not prepare(spec, Epilogue(bias=True, activation=wrong), algorithm, config, seed=3).assess(got).ok
    assert not case.assess(got * (1 + 1e-4)).ok
