"""The Relax Winograd pass: which layers it rewrites, why, the IR it produces, and its numerics.

The tiny mixed model (``tvm_winograd.models.tiny_mixed``) has, in order: conv1 3x3 (+bias+relu),
conv2 3x3 (+bias+residual+relu), conv3 1x1, conv4 3x3 stride 2, conv5 depthwise 3x3, conv6 5x5
(+bias+relu), conv7 3x3 (no bias, no relu), conv8 3x3 dilation 3.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_winograd.contract import is_scheduled, kind_of, our_prim_funcs
from tvm_winograd.export import compile_model, prepare_model, run
from tvm_winograd.frontend import load_model
from tvm_winograd.models import Net, to_onnx
from tvm_winograd.reference import conv2d_direct
from tvm_winograd.relax_pass import conv_workloads, format_report, rewrite_winograd
from tvm_winograd.targets import host_target, target_dirname
from tvm_winograd.tune.choices import AlgorithmChoice, save_choices
from tvm_winograd.heuristic import choose_algorithm
from tvm_winograd.targets import resolve_target
from tvm_winograd.workload import make_spec

ELIGIBLE = {0, 1, 5, 6}
INELIGIBLE_REASONS = {2: "r=1", 3: "stride", 4: "groups", 7: "dilation"}


@pytest.fixture(scope="module")
def tiny():
    mod, info = load_model("tiny_mixed")
    return mod, info


@pytest.fixture
def no_schedules(tmp_path):
    """An empty schedules directory: decisions come from the heuristic, not committed records."""
    return tmp_path


def _calls(func: relax.Function) -> list[str]:
    """Names of the callees of every binding: op names or call_tir PrimFunc names."""
    out = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call):
                if value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
                    out.append(value.args[0].name_hint)
                elif isinstance(value.op, tvm.ir.Op):
                    out.append(value.op.name)
    return out


def test_override_rewrites_exactly_the_eligible_layers(tiny, no_schedules):
    mod, _ = tiny
    _, report = rewrite_winograd(mod, "llvm", no_schedules, algo="winograd")
    assert len(report) == 8
    assert {r.index for r in report if r.algorithm == "winograd"} == ELIGIBLE
    for r in report:
        if r.index in ELIGIBLE:
            assert r.source == "override" and r.lowering == "winograd" and r.m in (2, 4, 6)
        else:
            assert r.algorithm == "direct" and r.source == "ineligible" and r.lowering == "relax"
            assert INELIGIBLE_REASONS[r.index] in r.reason, r
    assert [r.epilogue for r in report if r.index in ELIGIBLE] == ["br", "bar", "br", "none"]
    text = format_report(report)
    assert "4 of 8 convolutions use Winograd" in text and "stride=(2, 2)" in text


def test_auto_follows_the_heuristic(tiny, no_schedules):
    mod, _ = tiny
    _, report = rewrite_winograd(mod, "llvm", no_schedules, algo="auto")
    for r in report:
        if r.index not in ELIGIBLE:
            assert r.source == "ineligible"
            continue
        spec = make_spec(r.input_shape, r.weight_shape, padding=int(r.kernel[0]) // 2)
        algorithm, m, reason = choose_algorithm(spec, resolve_target("llvm"))  # the host's CPU model
        assert (r.algorithm, r.m, r.reason, r.source) == (algorithm, m, reason, "heuristic")
        assert r.lowering == ("winograd" if algorithm == "winograd" else "direct_tir")


def test_direct_override_uses_our_direct_primfunc(tiny, no_schedules):
    mod, info = tiny
    new, report = rewrite_winograd(mod, "llvm", no_schedules, algo="direct")
    assert all(r.algorithm == "direct" for r in report)
    calls = _calls(new["main"])
    assert sum(c.startswith("direct_") for c in calls) == len(ELIGIBLE)
    assert calls.count("relax.nn.conv2d") == 4
    # ... and the default-scheduled direct PrimFuncs compute the model right (fp32 direct on both
    # sides: only the summation order differs, a few ulps of the accumulated magnitudes).
    ex, _ = compile_model(mod, "llvm", no_schedules, algo="direct")
    feed = info.net.input_feed()
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    ref = ort.InferenceSession(info.onnx_model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_measured_choices_win_over_the_heuristic(tiny, tmp_path):
    mod, _ = tiny
    _, heuristic = rewrite_winograd(mod, "llvm", tmp_path, algo="auto")
    keys = {r.index: r.key for r in heuristic}
    # Layers 0 and 6 share no spec, so both choices apply to exactly one layer each.
    save_choices(tmp_path / target_dirname(host_target()), {
        keys[0]: AlgorithmChoice("direct", None, {"direct": 0.1, "winograd_m4": 0.2}),
        keys[6]: AlgorithmChoice("winograd", 2, {"direct": 0.3, "winograd_m2": 0.1}),
    })
    new, report = rewrite_winograd(mod, "llvm", tmp_path, algo="auto")
    by_index = {r.index: r for r in report}
    assert (by_index[0].algorithm, by_index[0].source, by_index[0].lowering) == ("direct", "tuned", "direct_tir")
    assert (by_index[6].algorithm, by_index[6].m, by_index[6].source) == ("winograd", 2, "tuned")
    assert "measured" in by_index[6].reason
    assert by_index[0].func in _calls(new["main"]) and by_index[0].func.startswith("direct_")
    # algo overrides beat measurements
    _, forced = rewrite_winograd(mod, "llvm", tmp_path, algo="winograd")
    assert {r.index for r in forced if r.algorithm == "winograd"} == ELIGIBLE


def test_conv_workloads_are_the_rewritten_layers(tiny, no_schedules):
    """conv_workloads lists what rewrite_winograd lowers (same specs, epilogues, reports); the tuner's
    model_workloads groups the Winograd-eligible ones by (spec, epilogue)."""
    from tvm_winograd.relax_pass import model_workloads

    mod, _ = tiny
    for algo, ineligible in (("winograd", "relax"), ("auto", "tir")):
        _, report = rewrite_winograd(mod, "llvm", no_schedules, algo=algo, ineligible=ineligible)
        works = conv_workloads(mod, "llvm", no_schedules, algo=algo, ineligible=ineligible)
        lowered = [r for r in report if r.lowering != "relax"]
        assert [w.report.index for w in works] == [r.index for r in lowered]
        for w, r in zip(works, lowered):
            assert w.spec.key() == r.key and w.epilogue.tag() == r.epilogue
            assert (w.report.algorithm, w.report.m, w.report.source) == (r.algorithm, r.m, r.source)
    assert {w.report.index for w in conv_workloads(mod, "llvm", no_schedules, algo="winograd")} == ELIGIBLE
    grouped = model_workloads(mod)
    assert sorted(name for _, _, names in grouped for name in names) == sorted(
        w.report.name for w in conv_workloads(mod, "llvm", no_schedules, algo="winograd"))
    assert len({(spec, epi) for spec, epi, _ in grouped}) == len(grouped)
    with pytest.raises(ValueError, match="'fastest'"):
        conv_workloads(mod, algo="fastest")


def test_tune_model_tunes_each_workload_once(tiny, tmp_path, monkeypatch):
    """tune_model with an injected fake per-layer tuner: one call per distinct (spec, epilogue), and the
    reported speedup is direct / chosen candidate."""
    import tvm_winograd.tune.tuner as tuner
    from tvm_winograd.relax_pass import model_workloads
    from tvm_winograd.tune.model import tune_model
    from tvm_winograd.tune.results import CandidateResult, LayerTuneResult

    calls = []

    def fake_tune_layer(spec, target, *, epilogue, **_kwargs):
        calls.append((spec, epilogue))
        cands = {"direct": CandidateResult("direct", "direct", None, median_ms=2.0),
                 "winograd_m4": CandidateResult("winograd_m4", "winograd", 4, median_ms=0.5),
                 "winograd_m2": CandidateResult("winograd_m2", "winograd", 2, median_ms=None)}
        choice = AlgorithmChoice("winograd", 4, {"direct": 2.0, "winograd_m4": 0.5})
        return LayerTuneResult(spec, epilogue, str(target), cands, choice, "", "", 1, 0.0)

    monkeypatch.setattr(tuner, "tune_layer", fake_tune_layer)
    mod, _ = tiny
    results = tune_model(model_workloads(mod), "llvm", trials=1, log_dir=tmp_path, schedules_dir=tmp_path,
                         progress=False)
    assert calls == [(spec, epi) for spec, epi, _ in model_workloads(mod)]
    assert len(results) == len(calls) == 4
    for r in results:
        assert (r["algorithm"], r["m"], r["speedup_vs_direct"]) == ("winograd", 4, 4.0)
        assert r["times_ms"] == {"direct": 2.0, "winograd_m4": 0.5}


def test_epilogue_is_fused_and_weights_are_transformed_at_compile_time(tiny, no_schedules):
    mod, _ = tiny
    rewritten, report = rewrite_winograd(mod, "llvm", no_schedules, algo="winograd")
    calls = _calls(rewritten["main"])
    assert sum(c.startswith("weight_transform_") for c in calls) == len(ELIGIBLE)
    # conv1..2 (+bias, residual, relu) are single calls: no relax add/relu is left before conv3.
    first_conv = calls.index("relax.nn.conv2d")
    assert not any(c in ("relax.add", "relax.nn.relu") for c in calls[:first_conv])

    prepared, _ = prepare_model(mod, "llvm", no_schedules, algo="winograd", ineligible="relax")
    funcs = our_prim_funcs(prepared)
    kinds = sorted(kind_of(f) for f in funcs.values())
    assert kinds == ["winograd"] * 4, kinds  # no weight_transform left anywhere in the module
    assert all(is_scheduled(f) for f in funcs.values())
    assert all("global_symbol" not in f.attrs for f in funcs.values())
    calls = _calls(prepared["main"])
    assert not any(c.startswith("weight_transform_") for c in calls)
    assert sum(c.startswith("winograd_") for c in calls) == 4


def test_intermediate_with_other_users_is_not_fused(no_schedules):
    """conv+bias -> (relu, add(relu, conv+bias)): the biased value is used twice, so only the bias
    is fused; relu and add stay Relax ops."""
    net = Net("shared", (1, 8, 12, 12), seed=5)
    x = net.conv("input", 8, 3)
    net.add(net.relu(x), x)
    mod, _ = load_model(relax.transform.FoldConstant()(_import(net)))
    new, report = rewrite_winograd(mod, "llvm", no_schedules, algo="winograd")
    assert report[0].epilogue == "b"
    calls = _calls(new["main"])
    assert calls.count("relax.add") == 1 and calls.count("relax.nn.relu") == 1


def _import(net: Net) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(to_onnx(net))


def test_dynamic_shape_and_non_constant_weight_stay_direct(no_schedules):
    # symbolic batch
    net = Net("dyn", (1, 8, 12, 12), seed=2)
    net.relu(net.conv("input", 8, 3))
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(to_onnx(net, dynamic_batch=True))
    new, report = rewrite_winograd(mod, "llvm", no_schedules, algo="winograd")
    assert report[0].algorithm == "direct" and "dynamic shape" in report[0].reason
    # weight given as a function parameter
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 12, 12), "float32"))
    w = relax.Var("w", relax.TensorType((8, 8, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, w, padding=1))
        bb.emit_func_output(y)
    _, report = rewrite_winograd(bb.get(), "llvm", no_schedules, algo="winograd")
    assert report[0].algorithm == "direct" and "not a compile-time constant" in report[0].reason


def test_dynamic_batch_model_compiles_and_runs(tmp_path, no_schedules):
    """A symbolic batch leaves every conv to TVM's own lowering; the model still runs at batch 2."""
    from tvm_winograd.models import build_net

    net = build_net("tiny_mixed")
    model = to_onnx(net, dynamic_batch=True)
    path = tmp_path / "dyn.onnx"
    path.write_bytes(model.SerializeToString())
    mod, _ = load_model(path)
    ex, report = compile_model(mod, "llvm", no_schedules)
    assert all(r.algorithm == "direct" and "dynamic shape" in r.reason for r in report)
    x = np.random.default_rng(3).standard_normal((2, 8, 16, 16)).astype("float32")
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"input": x})[0]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    # Direct fp32 convolutions on both sides: only summation order differs.
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("algo", ["winograd", "direct"])
def test_nhwc_conv_with_bias_and_relu_matches_float64_reference(no_schedules, algo):
    """NHWC/HWIO conv2d + (1,1,1,K) bias + relu becomes one Winograd (or our direct) call with the
    epilogue fused, under the default llvm schedules."""
    rng = np.random.default_rng(11)
    x_np = rng.standard_normal((1, 10, 10, 16)).astype("float32")
    w_np = (rng.standard_normal((3, 3, 16, 24)) / np.sqrt(16 * 9)).astype("float32")
    b_np = rng.standard_normal((1, 1, 1, 24)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_np.shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w_np), padding=1, data_layout="NHWC", kernel_layout="HWIO"))
            y = bb.emit(relax.op.add(y, relax.const(b_np)))
            y = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    ex, report = compile_model(bb.get(), "llvm", no_schedules, algo=algo)
    assert report[0].algorithm == algo and report[0].epilogue == "br"
    got = run(relax.VirtualMachine(ex, tvm.cpu()), [x_np])[0]
    ref = np.maximum(conv2d_direct(x_np.astype("float64"), w_np.astype("float64"), padding=1, layout="NHWC")
                     + b_np.astype("float64"), 0)
    # One F(m,3) layer, C=16: fp32 rounding amplified by the transform norm kappa^2 (<= 29.6^2 for
    # F(4,3)) over sqrt(C r^2) random-sign terms, times the output magnitude.
    from tvm_winograd.transforms import transform_norm

    kappa = transform_norm(report[0].m, 3) ** 2 if algo == "winograd" else 1.0
    tol = np.finfo(np.float32).eps * kappa * np.sqrt(16 * 9) * np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol


def test_bad_arguments():
    mod, _ = load_model("tiny_mixed")
    with pytest.raises(ValueError, match="algo 'fast'"):
        rewrite_winograd(mod, "llvm", algo="fast")
    with pytest.raises(ValueError, match="IRModule"):
        rewrite_winograd("resnet18", "llvm")


def test_module_pass_form(tiny, no_schedules):
    """``winograd_pass`` is the same rewrite as a ``tvm.transform`` pass, reporting into a list."""
    from tvm_winograd.relax_pass import winograd_pass

    mod, _ = tiny
    reports: list = []
    new = tvm.transform.Sequential([winograd_pass("llvm", no_schedules, "winograd", reports)])(mod)
    direct, expected = rewrite_winograd(mod, "llvm", no_schedules, algo="winograd")
    assert reports == expected
    tvm.ir.assert_structural_equal(new, direct)


def test_cuda_check_layers_are_the_pass_workloads(tiny, no_schedules):
    """cuda-check's layers come from conv_workloads (the pass's own specs, passed in by the caller), not
    from a layer key parsed back: each distinct Winograd layer once, with the planned tile and epilogue."""
    from tvm_winograd.cuda.check import _layers, winograd_layers

    mod, _ = tiny
    works = conv_workloads(mod, "sm_80", no_schedules, algo="winograd")
    expected: dict = {}
    for work in works:
        if work.report.algorithm == "winograd":
            expected.setdefault(work.spec.key(), (work.spec, work.report.m, work.epilogue))
    layers = winograd_layers(works)
    assert layers and layers == list(expected.values())
    assert _layers(works, None, None) == layers
    assert all(any(spec is w.spec for w in works) for spec, _, _ in layers)  # the pass's objects, not re-parsed
    with pytest.raises(TypeError, match="mixture"):
        _layers([layers[0][0], works[0]], None, None)
    with pytest.raises(ValueError, match="at least one layer"):
        _layers([], None, None)
