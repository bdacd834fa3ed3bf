"""Whole-model tuning of the functions that are not Winograd candidates (issue 14 item 4):
the check a tuned record must pass, the budget split, and a real tuning run on a tiny model whose
records ``compile`` then applies (asserted from the compile report), with the output against
onnxruntime.

The tiny model: 3x3 conv + ReLU (a Winograd layer, not a task here), a 1x1 stride-2 conv (our direct
PrimFunc: a ``direct`` task), global average pool, flatten and a fully connected layer (``function``
tasks after fusion), plus the NHWC conversion's transposes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir, te

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model
from tvm_winograd.model_tasks import function_tasks
from tvm_winograd.tune.functions import budget_split, check_same, reduction_extent, tune_functions
from tvm_winograd.tune.measure import make_builder

U = 2.0**-24


def _sum_rows(n: int = 96, k: int = 257, scale: float = 1.0, shift: bool = False):
    a = te.placeholder((n, k), name="A")
    r = te.reduce_axis((0, k), name="r")
    b = te.compute((n,), lambda i: te.sum(a[i, r], axis=r), name="B")
    if scale != 1.0 or shift:
        b = te.compute((n,), lambda i: b[i] * scale + (a[i, 0] if shift else 0.0), name="C")
    return te.create_prim_func([a, b])


def test_reduction_extent_is_the_longest_reduction():
    assert reduction_extent(_sum_rows(k=257)) == 257
    a = te.placeholder((5, 7), name="A")
    assert reduction_extent(te.create_prim_func([a, te.compute((5, 7), lambda i, j: a[i, j] * 2)])) == 1


def test_check_same_passes_a_reassociated_sum_and_catches_wrong_ones():
    target = tvm.target.Target("llvm")
    default = _sum_rows()
    sch = s_tir.Schedule(default)  # another summation order: rfactor over 8 interleaved partial sums
    (i, r) = sch.get_loops(sch.get_sblock("B"))
    ro, ri = sch.split(r, [None, 8])
    sch.rfactor(ri, 0)
    assert check_same(sch.mod["main"], default, target) < 1
    # an output scaled by 1 + 1e-4 (~1700 ulp) or one term counted twice is caught
    for wrong in (_sum_rows(scale=1 + 1e-4), _sum_rows(shift=True)):
        with pytest.raises(ArithmeticError, match="buffer 1"):
            check_same(wrong, default, target)


def test_budget_split():
    assert budget_split(None, None, 5) == (320, 64)  # 64 per task
    assert budget_split(100, None, 8) == (100, 12)  # the total spread evenly
    assert budget_split(3, None, 8) == (3, 1)  # at least one each
    assert budget_split(None, 10, 4) == (40, 10)
    assert budget_split(50, 20, 4) == (50, 20)


def _tiny_onnx(rng) -> onnx.ModelProto:
    c, size = 16, 8
    w1 = rng.standard_normal((c, c, 3, 3)).astype("float32") / 12
    w2 = rng.standard_normal((32, c, 1, 1)).astype("float32") / 4
    fc = rng.standard_normal((10, 32)).astype("float32") / 6
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["c"], strides=[2, 2], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["d"]),
        helper.make_node("Flatten", ["d"], ["e"]),
        helper.make_node("Gemm", ["e", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_whole_model_tuning_stores_records_that_compile_applies(tmp_path, rng):
    model = _tiny_onnx(rng)
    mod = from_onnx_model(model)
    sched, logs = tmp_path / "schedules", tmp_path / "logs"
    tasks = function_tasks(mod, "llvm", sched)
    kinds = {t.kind for t in tasks}
    assert kinds == {"direct", "function"}, [(t.name, t.kind) for t in tasks]
    # the 3x3 layer is a Winograd candidate (tuned by tune_layer), not one of these tasks
    assert all("winograd" not in t.name for t in tasks), [t.name for t in tasks]

    # one task of each kind, one trial each (every search round starts build and run processes: ~10 s)
    tasks = [next(t for t in tasks if t.kind == "direct"), next(t for t in tasks if "matmul" in t.name)]
    rows = tune_functions(tasks, "llvm", trials=len(tasks), trials_per_task=1, log_dir=logs,
                          schedules_dir=sched, builder=make_builder(tvm.target.Target("llvm"), max_workers=1),
                          require_gain=False)
    assert [r["name"] for r in rows] == [t.name for t in tasks]
    assert all(r["records"] >= 1 and r["default_ms"] is not None for r in rows), rows
    stored = {r["name"]: r["kind"] for r in rows if r["stored"]}
    assert "function" in stored.values() and "direct" in stored.values(), rows

    ex, report = compile_model(mod, "llvm", sched)
    by = {f.name: f.scheduled_by for f in report.functions}
    for name in stored:
        assert by.get(name) == "tuned", (name, by)
    assert report.unscheduled() == []

    x = rng.standard_normal((1, 16, 8, 8)).astype("float32")
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"x": x})[0]
    # per output: dot products of 144 (3x3 conv, Winograd F(m,3) within 16x that), 16 (1x1), 16 (pool), 32 (FC)
    tol = 16 * U * (144 + 16 + 16 + 32) * np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol

    # the same run again measures nothing new (resumed from the log) and keeps the records
    again = tune_functions(tasks, "llvm", trials=len(tasks), trials_per_task=1, log_dir=logs,
                           schedules_dir=sched, require_gain=False)
    assert [r["records"] for r in again] == [r["records"] for r in rows]
