"""The model set's own architectures (``scripts/export_torchvision.py``: the U-Net and ESPCN that
torchvision does not have), built small, exported to ONNX as the benchmark does, compiled with the
defaults but ``algo="winograd"`` (at these small sizes the heuristic keeps most convs direct; here the
Winograd path inside these graphs is what is checked) and compared with onnxruntime under the derived
model tolerance (``test_export.model_tolerance``); the compile report must show Winograd on every
stride-1 convolution and no unscheduled function."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from test_export import model_tolerance
from tvm import relax

from tvm_winograd.export import compile_model, run
from tvm_winograd.frontend import from_onnx_model

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_torchvision.py"


def _script():
    spec = importlib.util.spec_from_file_location("export_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _onnx(module, shape) -> onnx.ModelProto:
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), buf, input_names=["input"], output_names=["output"],
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("name, shape, winograd", [
    # U-Net, 3 levels from 8 channels: 14 3x3 stride-1 convs (2 per block), transposed convs, concatenations
    ("unet", (1, 3, 32, 32), 14),
    ("espcn", (1, 1, 20, 20), 3),  # its 5x5, and both 3x3 (32 -> 9 padded to 16 output channels)
])
def test_model_set_architecture_compiles_and_matches_onnxruntime(name, shape, winograd, tmp_path, rng):
    script = _script()
    torch.manual_seed(0)
    module = (script._unet(torch, base=8, depth=3) if name == "unet" else script._espcn(torch)).eval()
    model = _onnx(module, shape)
    x = rng.standard_normal(shape).astype("float32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    ex, report = compile_model(from_onnx_model(model), "llvm", tmp_path / "no-schedules", algo="winograd")
    got = run(relax.VirtualMachine(ex, tvm.cpu()), {"input": x})[0]
    tol = model_tolerance(report, ref)
    assert tol < 0.01 * np.abs(ref).max()  # far below a wrong answer
    err = float(np.abs(got - ref).max())
    assert got.shape == ref.shape and err <= tol, f"max error {err:.3g} > derived bound {tol:.3g}"
    assert report.unscheduled() == [], report.unscheduled()
    assert sum(r.algorithm == "winograd" for r in report) == winograd, [(r.kernel, r.algorithm) for r in report]
