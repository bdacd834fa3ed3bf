"""Whole models through the Winograd pass against onnxruntime (and PyTorch); export -> load -> run.

Tolerance of a model output (fp32, derived; see :func:`model_tolerance`): each convolution adds a
rounding error of about ``eps32 * kappa * sqrt(C r^2)`` relative to the activation magnitude, where
``kappa`` is the 2D amplification of the transforms for random-sign rounding errors (the square of the
root-sum-square row norm ``max_i sqrt(sum_j (A_T[i,j] |G[j,:]|_2 |B_T[j,:]|_2)^2)``: 31.3 for F(4,3),
against 876 for the worst-case L1 norm ``transform_norm(4, 3)^2``; 1 for direct) and ``sqrt(C r^2)``
the random-sign growth of a length ``C r^2`` fp32 reduction.
The models keep activations O(1) and each layer's gain near 1 (He init, scaled residual branches),
so the layers' errors add at most linearly to the output: the bound is their sum times the largest
output magnitude.  Worst-case transform norms make it loose (wrong results are O(1) errors, far above
it) but it is what fp32 allows, and it grows with depth, channels and tile size as it should.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_winograd.accuracy import model_tolerance as accuracy_model_tolerance
from tvm_winograd.accuracy import rms_amplification
from tvm_winograd.contract import kind_of, our_prim_funcs
from tvm_winograd.export import compile_model, export_library, load_and_run, load_vm, prepare_model, run
from tvm_winograd.frontend import load_model
from tvm_winograd.relax_pass import LayerReport

EPS32 = float(np.finfo(np.float32).eps)


def model_tolerance(report: list[LayerReport], ref: np.ndarray) -> float:
    """The derived fp32 bound on ``max |ours - onnxruntime|`` (module docstring;
    :func:`tvm_winograd.accuracy.model_tolerance` over the report's convolutions)."""
    convs = []
    for r in report:
        kh, kw = (int(v) for v in r.kernel.split("x"))
        # The reduction length C r^2 / groups is the weight's size per output channel, in either layout:
        # OIHW (kernel last) or HWIO (kernel first; models compile NHWC on CPUs), where input_shape[1] is H.
        ws = tuple(int(v) for v in r.weight_shape)
        out_channels = ws[0] if ws[2:] == (kh, kw) else ws[3]
        convs.append((r.m if r.algorithm == "winograd" else None, kh, int(np.prod(ws)) // out_channels))
    return accuracy_model_tolerance(convs, float(np.abs(ref).max()))


def test_model_tolerance_reads_channels_from_the_weight_in_either_layout():
    """The reduction length is ``C r^2`` from the weight (OIHW or HWIO), not ``input_shape[1]`` (H after the
    NHWC conversion): the same layer gives the same tolerance in both layouts, and it scales as
    ``sqrt(C)``."""
    def layer(layout, c):
        nchw = layout == "NCHW"
        return LayerReport(0, "conv", (1, c, 56, 56) if nchw else (1, 56, 56, c),
                           (64, c, 3, 3) if nchw else (3, 3, c, 64), "3x3", (1, 1), 1, "winograd", 4, "", "override",
                           "winograd")

    ref = np.ones(3)
    tol = {(lay, c): model_tolerance([layer(lay, c)], ref) for lay in ("NCHW", "NHWC") for c in (16, 64)}
    assert tol["NCHW", 16] == pytest.approx(tol["NHWC", 16]) and tol["NCHW", 64] == pytest.approx(tol["NHWC", 64])
    assert tol["NHWC", 64] == pytest.approx(2 * tol["NHWC", 16])
    assert tol["NHWC", 16] == pytest.approx(EPS32 * rms_amplification(4, 3) * np.sqrt(16 * 9))


def _ort(info, feed):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(info.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


@pytest.fixture(scope="module")
def tiny_compiled(tmp_path_factory):
    """tiny_mixed compiled with every eligible layer forced to Winograd (no committed schedules)."""
    empty = tmp_path_factory.mktemp("schedules")
    mod, info = load_model("tiny_mixed")
    ex, report = compile_model(mod, "llvm", empty, algo="winograd")
    return mod, info, ex, report, empty


def test_tiny_model_matches_onnxruntime(tiny_compiled):
    _, info, ex, report, _ = tiny_compiled
    assert sum(r.algorithm == "winograd" for r in report) == 4
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.05 * np.abs(ref).max()  # the bound is meaningful: far below a wrong answer
    err = np.abs(got - ref).max()
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"


def test_compile_report_names_every_function_and_each_default_path(tiny_compiled):
    """Every PrimFunc of the build is in the report with what scheduled it; none unscheduled; our
    Winograd functions took the design-space default (not the simple fallback)."""
    _, _, _, report, _ = tiny_compiled
    assert report.functions and not report.unscheduled(), report.counts()
    winograd = [f for f in report.functions if f.kind == "winograd"]
    assert len(winograd) == 4 and all(f.scheduled_by == "winograd" for f in winograd)
    assert all(f.notes.get("default_schedule") == "design_space" for f in winograd) and not report.fallbacks()
    assert report.as_dict()["fallbacks"] == []


def test_compile_report_counts_and_warns_on_simple_fallbacks(monkeypatch, caplog, tmp_path):
    """A Winograd default whose design space does not apply (decisions broken on purpose) falls back to
    the simple schedule: the compile report lists it and compile warns naming it."""
    from tvm_winograd.schedule import default

    original = default.default_decisions
    monkeypatch.setattr(default, "default_decisions", lambda func: {**original(func), "bgemm.vector": 3})
    mod, _ = load_model("tiny_mixed")
    with caplog.at_level("WARNING", logger="tvm_winograd.export"):
        _, report = compile_model(mod, "llvm", tmp_path, algo="winograd")
    fallbacks = report.fallbacks()
    assert len(fallbacks) == 4 and all(report.function(n).notes["fallback_reason"] for n in fallbacks)
    assert "4 Winograd functions fell back to the simple schedule" in caplog.text
    assert all(n in caplog.text for n in fallbacks)


def test_compiled_module_has_winograd_and_no_weight_transform(tiny_compiled):
    mod, _, ex, _, empty = tiny_compiled
    prepared, _ = prepare_model(mod, "llvm", empty, algo="winograd")
    funcs = our_prim_funcs(prepared)
    kinds = [kind_of(f) for f in funcs.values()]
    assert kinds.count("winograd") == 4 and "weight_transform" not in kinds
    # The built library implements our four Winograd kernels, and its code has no weight transform.
    winograd = [name for name, f in funcs.items() if kind_of(f) == "winograd"]
    assert all(ex.mod.implements_function(name, True) for name in winograd), winograd
    [llvm] = [m for m in ex.mod.imports if m.kind == "llvm"]
    code = llvm.inspect_source("ll")
    assert all(f"@{name}" in code for name in winograd) and "weight_transform" not in code


def test_export_load_run_in_a_fresh_process(tiny_compiled, tmp_path):
    """The .so runs with the TVM runtime alone in a new interpreter and gives the same numbers."""
    _, info, ex, _, _ = tiny_compiled
    lib = export_library(ex, tmp_path / "tiny.so")
    feed = info.net.input_feed()
    np.save(tmp_path / "input.npy", feed["input"])
    expected = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    script = textwrap.dedent(f"""
        import numpy as np
        from tvm_winograd.export import load_and_run
        out = load_and_run({str(lib)!r}, {{"input": np.load({str(tmp_path / 'input.npy')!r})}})
        np.save({str(tmp_path / 'out.npy')!r}, out[0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TVM_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(got, expected)  # same code, same inputs: bitwise equal


def test_load_and_run_errors(tiny_compiled, tmp_path):
    _, info, ex, _, _ = tiny_compiled
    with pytest.raises(ValueError, match="does not exist"):
        load_and_run(tmp_path / "missing.so", info.net.input_feed())
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a shared library")
    with pytest.raises(ValueError, match="bad.so"):
        load_and_run(bad, info.net.input_feed())
    lib = export_library(ex, tmp_path / "tiny.so")
    with pytest.raises(ValueError, match="do not match the model's inputs"):
        load_and_run(lib, {"data": info.net.input_feed()["input"]})
    with pytest.raises(ValueError, match="'tpu'"):
        load_vm(lib, "tpu")
    if not tvm.cuda(0).exist:  # no GPU (the CUDA driver stand-in never pretends one)
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_vm(lib, "cuda")
    with pytest.raises(ValueError, match=r"\.so"):
        export_library(ex, tmp_path / "tiny.onnx")


def test_resnet18_end_to_end(tmp_path):
    """ResNet-18, batch 1, 224x224: the 3x3 stride-1 layers run what the heuristic picks for this host
    (Winograd down to 14x14 on any CPU; 512@7 is a near-tie whose pick follows the CPU's FMA rate); the
    output matches onnxruntime (and PyTorch, when installed) within the derived bound."""
    mod, info = load_model("resnet18")
    ex, report = compile_model(mod, "llvm", tmp_path, algo="auto")
    by = {r.index: r for r in report}
    assert len(report) == 20
    three_by_three = [r for r in report if r.kernel == "3x3" and r.stride == (1, 1)]
    assert len(three_by_three) == 13 and all(r.source == "heuristic" for r in three_by_three)
    assert all(r.algorithm == "winograd" for r in three_by_three if min(r.input_shape[1:]) >= 14)  # H, W, C
    assert sum(r.algorithm == "winograd" for r in three_by_three) >= 10
    assert by[0].algorithm == "direct" and "stride" in by[0].reason  # 7x7 stride-2 stem
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.05 * np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"
    torch = pytest.importorskip("torch")
    from tvm_winograd.models import to_torch

    with torch.no_grad():
        ref_torch = to_torch(info.net)(torch.from_numpy(feed["input"])).numpy()
    assert np.abs(got - ref_torch).max() <= tol


def test_torch_export_program_compiles_and_matches_pytorch(tmp_path):
    """The .pt2 path: torch.export -> Relax (bound params) -> Winograd pass -> same as PyTorch eager."""
    torch = pytest.importorskip("torch")
    from tvm_winograd.models import build_net, to_torch

    net = build_net("tiny_mixed")
    module = to_torch(net)
    x = torch.from_numpy(net.input_feed()["input"])
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(module, (x,)), str(path))
    mod, _ = load_model(path)
    ex, report = compile_model(mod, "llvm", tmp_path, algo="winograd")
    assert {r.index for r in report if r.algorithm == "winograd"} == {0, 1, 5, 6}
    with torch.no_grad():
        ref = module(x).numpy()
    got = run(relax.VirtualMachine(ex, tvm.cpu()), [x.numpy()])[0]
    assert np.abs(got - ref).max() <= model_tolerance(report, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("resnet50", 64), ("vgg16", 64)])
def test_resnet50_and_vgg16_end_to_end(name, size, tmp_path):
    """At 64x64 instead of 224 to keep the test in about a minute each: the layers, their channel
    counts and the decisions per layer type are the same; only H, W (and VGG's first dense layer)
    shrink.  ``scripts/bench_models.py`` runs both at 224."""
    mod, info = load_model(name, {"input": (1, 3, size, size)})
    ex, report = compile_model(mod, "llvm", tmp_path, algo="auto")
    assert any(r.algorithm == "winograd" for r in report)
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.05 * np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol


def test_ineligible_layers_lowered_to_our_direct_primfunc(tmp_path):
    """``ineligible="tir"``: 1x1, stride-2, depthwise and dilated convs run our direct PrimFunc
    (with fused epilogues, default llvm schedule); no relax conv2d is left; numerics unchanged."""
    mod, info = load_model("tiny_mixed")
    ex, report = compile_model(mod, "llvm", tmp_path, algo="winograd", ineligible="tir")
    assert {r.index for r in report if r.algorithm == "winograd"} == {0, 1, 5, 6}
    assert all(r.lowering == "direct_tir" and r.source == "ineligible" for r in report if r.index in (2, 3, 4, 7))
    prepared, _ = prepare_model(mod, "llvm", tmp_path, algo="winograd", ineligible="tir")
    assert "relax.nn.conv2d" not in prepared["main"].script()
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert np.abs(got - ref).max() <= model_tolerance(report, ref)


def test_add_of_two_convolutions_is_fused_once(tmp_path):
    """relu(conv_a(x) + conv_b(x)): the add and relu go into conv_a's call (the first), conv_b keeps
    its bias only; the result is still right."""
    from tvm_winograd.models import Net, to_onnx

    net = Net("two_branches", (1, 8, 12, 12), seed=9)
    a = net.conv("input", 16, 3)
    b = net.conv("input", 16, 3, scale=0.5)
    net.relu(net.add(a, b))
    model = to_onnx(net)
    path = tmp_path / "two.onnx"
    path.write_bytes(model.SerializeToString())
    mod, info = load_model(path)
    ex, report = compile_model(mod, "llvm", tmp_path, algo="winograd")
    assert [r.epilogue for r in report] == ["bar", "b"]
    feed = net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert np.abs(got - ref).max() <= model_tolerance(report, ref)


def test_tuned_record_replaces_the_default_schedule(tmp_path):
    """A record in ``<schedules>/<target>/`` (MetaSchedule JSONDatabase) is applied to the matching
    Winograd PrimFunc exactly, and the default schedule is not applied on top of it."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from tvm_winograd.compute import Epilogue, target_config, winograd_func
    from tvm_winograd.relax_pass import rewrite_winograd
    from tvm_winograd.targets import host_target, target_dirname
    from tvm_winograd.tune.database import open_database
    from tvm_winograd.workload import make_spec

    target = host_target()
    mod, info = load_model("tiny_mixed")
    _, report = rewrite_winograd(mod, target, tmp_path, algo="winograd")
    layer = report[6]  # conv7: 3x3, no epilogue
    spec = make_spec(layer.input_shape, layer.weight_shape, padding=1)
    func = winograd_func(spec, target_config(spec, layer.m, "llvm"), Epilogue())  # what the pass emits
    workload = _normalize_mod(func)  # what the tuner stores for this PrimFunc
    sch = s_tir.Schedule(workload)
    sch.parallel(sch.get_loops(sch.get_sblock("conv2d_winograd"))[1])  # a deliberately odd "tuned" schedule
    db = open_database(tmp_path / target_dirname(target))
    record = ms.database.TuningRecord(sch.trace, db.commit_workload(workload), [1e-3], target,
                                      ms.arg_info.ArgInfo.from_prim_func(func))
    db.commit_tuning_record(record)
    if hasattr(db, "close"):
        db.close()
    prepared, _ = prepare_model(mod, target, tmp_path, algo="winograd", layout="keep")  # the report's NCHW
    tuned = our_prim_funcs(prepared)[layer.func]
    tvm.ir.assert_structural_equal(tuned.body, sch.mod["main"].body)
    ex, report = compile_model(mod, target, tmp_path, algo="winograd", layout="keep")
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert np.abs(got - ref).max() <= model_tolerance(report, ref)


@pytest.mark.slow
def test_cuda_build_of_a_model_carries_a_cubin(tmp_path):
    """CUDA (no GPU here): the whole tiny model builds with nvcc for sm_80 and the exported library
    holds a cubin, not just CUDA source (the driver stand-in of tvm_winograd.cuda makes TVM call nvcc)."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    from tvm_winograd.cuda.build import require_cubin

    mod, _ = load_model("tiny_mixed")
    ex, report = compile_model(mod, "sm_80", tmp_path, algo="winograd", ineligible="tir")
    assert {r.index for r in report if r.algorithm == "winograd"} == {0, 1, 5, 6}
    lib = export_library(ex, tmp_path / "tiny_cuda.so")
    images = require_cubin(lib, "sm_80")
    assert any(img.kind == "cubin" and img.sm == 80 for img in images)


# --------------------------------------------------------------------------------------------------
# Whole models through Winograd: batch > 1, each conv layout, fp16; the default schedule's fast path
# --------------------------------------------------------------------------------------------------

def _compile_forced(mod, layout: str, sdir, kernel_dtype: str | None = None):
    """tiny_mixed with every eligible layer forced to Winograd: the built Executable, the report and
    the Winograd PrimFuncs the pass emitted (after the default schedules), by report order."""
    from tvm_winograd.pipeline import build_pipeline
    from tvm_winograd.targets import resolve_target

    tgt = resolve_target("llvm")
    prepared, report = prepare_model(mod, tgt, sdir, algo="winograd", layout=layout, kernel_dtype=kernel_dtype)
    funcs = our_prim_funcs(prepared)
    wino = [funcs[r.func] for r in report if r.algorithm == "winograd"]
    ex = tvm.compile(prepared, target=tgt, relax_pipeline=build_pipeline(tgt))
    return ex, report, wino


@pytest.mark.parametrize("batch, layout, conv_layout", [(2, "auto", "NHWC"), (4, "NHWC", "NHWC"),
                                                        (1, "NCHW", "NCHW")])
def test_whole_model_batch_and_layout_through_winograd(batch, layout, conv_layout, tmp_path):
    """tiny_mixed at batch 2 / 4 and in NCHW: the four eligible layers run Winograd (from the compile
    report and the emitted PrimFuncs, in the requested layout, at that batch), each on the design-space
    default schedule (the fast path, not the simple fallback), and the output matches onnxruntime
    within the derived fp32 bound.  (``--layout keep`` is test_tuned_record_replaces_the_default_schedule.)"""
    from tvm_winograd.contract import layout_of
    from tvm_winograd.schedule.default import default_schedule_path

    mod, info = load_model("tiny_mixed", {"input": (batch, 8, 16, 16)})
    ex, report, wino = _compile_forced(mod, layout, tmp_path)
    assert [r.name for r in report if r.algorithm == "winograd"] == [r.name for r in report if r.lowering == "winograd"]
    assert len(wino) == 4 and all(int(r.input_shape[0]) == batch for r in report)
    assert {layout_of(f) for f in wino} == {conv_layout}
    assert [default_schedule_path(f) for f in wino] == ["design_space"] * 4
    feed = info.net.input_feed()
    assert feed["input"].shape == (batch, 8, 16, 16)
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.05 * np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"


def _to_float16(model):
    """A copy of an fp32 ONNX model with every float initializer, input and output in float16."""
    import onnx
    from onnx import TensorProto, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    for i, init in enumerate(half.graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            half.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*half.graph.input, *half.graph.output, *half.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return half


def _fp16_weights_in_fp32(model):
    """The fp32 model with its weights rounded to float16 (the reference for the fp16 model: the
    weights' own rounding is then no part of the error measured)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(rounded, init.name))
    return out


def test_fp16_model_through_winograd(tmp_path):
    """tiny_mixed in float16 (weights, input and every activation): the four eligible layers run fp16
    Winograd on the design-space default, and the output matches the fp32 onnxruntime model with the
    same (fp16-rounded) weights and input.  Bound: the transforms and the GEMM accumulate in fp32
    (their error is the fp32 bound's, ~1e-5, negligible), the fp16 roundings dominate: the stored
    transformed weights U and data V (each element within eps16 / 2, random signs, so the GEMM's sum
    keeps that relative size; the two independent roundings add to ``sqrt(2) eps16 / 2``) amplified by
    the transforms' ``kappa`` (:func:`rms_amplification`), and the stored output (eps16 / 2); per layer
    ``(kappa + 1) eps16 / sqrt(2)`` of the output scale (kappa 1 for direct), summed over the layers
    (gains near 1): ~14% of the output scale here, against ~0.15% measured (the pooling and the dense
    layer average the errors); wrong results are O(1) errors."""
    import onnx

    from tvm_winograd.schedule.default import default_schedule_path

    _, info = load_model("tiny_mixed")
    half = _to_float16(info.onnx_model)
    onnx.save(half, str(tmp_path / "tiny16.onnx"))
    mod, _ = load_model(str(tmp_path / "tiny16.onnx"))
    ex, report, wino = _compile_forced(mod, "auto", tmp_path / "schedules")
    assert len(wino) == 4 and [default_schedule_path(f) for f in wino] == ["design_space"] * 4
    assert {str(f.params[0].dtype) for f in wino} == {"float16"}  # the data: an fp16 Winograd layer
    feed = {"input": info.net.input_feed()["input"].astype(np.float16)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(_fp16_weights_in_fp32(info.onnx_model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": feed["input"].astype(np.float32)})[0]
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert got.dtype == np.float16
    eps16 = float(np.finfo(np.float16).eps)
    kappas = [rms_amplification(r.m, int(r.kernel.split("x")[0])) if r.algorithm == "winograd" else 1.0
              for r in report]
    tol = sum((k + 1.0) * eps16 / np.sqrt(2.0) for k in kappas) * float(np.abs(ref).max())
    assert tol < 0.2 * np.abs(ref).max()
    err = np.abs(got.astype(np.float64) - ref).max()
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"


def test_fp16_kernel_pack_through_a_model(tmp_path):
    """``kernel_dtype="float16"`` (opt-in) on the fp32 tiny_mixed: every Winograd layer up to alpha 6
    takes its U in fp16 (data, V, accumulation and output fp32; a larger alpha keeps fp32 U: the 5x5
    layer's tile is the heuristic's, F(4,5) with alpha 8 on a Zen 4, F(2,5) with alpha 6 on a Zen 5) and
    the output matches onnxruntime within the fp32 bound plus U's one fp16 rounding per such layer:
    U's elements each within eps16 / 2, random signs, so the GEMM's sum keeps that relative size,
    amplified by the transforms' ``kappa`` (:func:`rms_amplification`): ``kappa eps16 / 2`` of the
    output scale per layer."""
    mod, info = load_model("tiny_mixed")
    ex, report, wino = _compile_forced(mod, "auto", tmp_path / "schedules", kernel_dtype="float16")
    layers = [r for r in report if r.algorithm == "winograd"]
    alphas = [r.m + int(r.kernel.split("x")[0]) - 1 for r in layers]
    assert len(wino) == 4 and sorted(alphas)[:3] == [4, 4, 4] and sorted(alphas)[3] in (6, 8)
    assert [(str(f.params[0].dtype), str(f.params[1].dtype)) for f in wino] == [
        ("float32", "float16" if a <= 6 else "float32") for a in alphas]
    feed = info.net.input_feed()
    ref = _ort(info, feed)
    got = run(relax.VirtualMachine(ex, tvm.cpu()), feed)[0]
    assert got.dtype == np.float32
    eps16 = float(np.finfo(np.float16).eps)
    u_rounding = sum(rms_amplification(r.m, a - r.m + 1) * eps16 / 2 for r, a in zip(layers, alphas) if a <= 6)
    tol = model_tolerance(report, ref) + u_rounding * float(np.abs(ref).max())
    assert tol < 0.1 * np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"
