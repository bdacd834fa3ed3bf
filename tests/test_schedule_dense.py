"""The CPU schedule of legalized matrix products (VGG/ResNet fully connected layers) vs float64."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from tvm_winograd.contract import SCHEDULED_ATTR
from tvm_winograd.export import build_pipeline
from tvm_winograd.schedule.dense import schedule_matmul_llvm
from tvm_winograd.targets import resolve_target

TARGET = resolve_target("llvm")


def _fc_module(batch: int, k: int, n: int, rng, relu: bool = True):
    w = rng.standard_normal((k, n)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))
            y = bb.emit(relax.op.nn.relu(y) if relu else y)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), w, b


@pytest.mark.parametrize("batch,k,n", [(1, 200, 64), (2, 96, 48), (1, 64, 1000)])
def test_scheduled_fully_connected_matches_float64(rng, batch, k, n):
    mod, w, b = _fc_module(batch, k, n, rng)
    with TARGET:
        legal = tvm.transform.Sequential(cpu_pipeline.legalize_passes(TARGET))(mod)
    (func,) = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    scheduled = schedule_matmul_llvm(func)
    assert scheduled is not None and "T.parallel" in scheduled.script() and "T.vectorized" in scheduled.script()
    assert bool(scheduled.attrs[SCHEDULED_ATTR])  # what DLight (next in the pipeline) checks to skip it
    ex = tvm.compile(mod, target=TARGET, relax_pipeline=build_pipeline(TARGET))
    x = rng.standard_normal((batch, k)).astype("float32")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = np.maximum(x64 @ w64 + b, 0)
    # k products summed in fp32 (any order) + the bias add: |error| <= (k + 1) u sum|x_k w_kn| + |b| u
    bound = (k + 2) * 2.0**-24 * (np.abs(x64) @ np.abs(w64) + np.abs(b))
    assert np.all(np.abs(got - ref) <= bound)


def test_other_functions_are_left_alone(rng):
    """A reduction that is not a matmul (here a sum) is not taken by the matmul schedule."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sum(x, axis=1))
        bb.emit_func_output(out)
    with TARGET:
        legal = tvm.transform.Sequential(cpu_pipeline.legalize_passes(TARGET))(bb.get())
    (func,) = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert schedule_matmul_llvm(func) is None
