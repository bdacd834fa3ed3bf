"""The `tvm-winograd` command line end to end, in subprocesses (as a user runs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "tvm_winograd.cli"]
REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["layers", "tune", "compile", "run", "bench", "accuracy", "cuda-check", "gpu-pack", "gpu-import"]


#: The directory the commands run in unless a test names one: an empty one per module
#: (:func:`_empty_cwd`), never the repository, whose ./schedules (the default schedules directory,
#: live from the developer's tuning) would decide what ``layers`` and ``compile`` report.
_CWD: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _empty_cwd(tmp_path_factory):
    _CWD[:] = [tmp_path_factory.mktemp("cwd")]
    yield
    assert not (_CWD[0] / "schedules").exists() and not (_CWD[0] / "tuning_logs").exists()
    _CWD.clear()


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    assert cwd is not None or _CWD, "cli() outside the module's fixture"
    # The checkout's package first, as when run from the repository root (``-m`` puts the cwd on sys.path).
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd or _CWD[0], timeout=timeout,
                          env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})})


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err) == 1, proc.stderr
    for frag in fragments:
        assert frag in err[0], (frag, err[0])


def test_help_everywhere_with_an_example():
    proc = cli("--help")
    assert proc.returncode == 0 and "compile" in proc.stdout
    for command in COMMANDS:
        proc = cli(command, "--help")
        assert proc.returncode == 0, (command, proc.stderr)
        assert "example:" in proc.stdout and f"tvm-winograd {command}" in proc.stdout


@pytest.fixture(scope="module")
def tiny_lib(tmp_path_factory) -> Path:
    """tiny_mixed compiled for llvm by the CLI (Winograd on all 4 eligible layers), exported to a .so."""
    out = tmp_path_factory.mktemp("cli") / "tiny.so"
    proc = cli("compile", "tiny_mixed", "--target", "llvm", "--algo", "winograd", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["winograd_layers"] == 4 and summary["conv_layers"] == 8
    # NHWC: the input's transpose only; the head's (N, 1, 1, C) -> (N, C, 1, 1) is a reshape
    assert summary["layout_transforms"] == 1
    assert summary["layout_transform_sites"] == {"input": 1, "output": 0, "inside": 0}
    assert summary["kernel_dtype"] == "float32" and summary["winograd_kernel_dtypes"] == {"float32": 4}
    assert out.is_file()
    return out


def test_compile_with_fp16_kernel_pack_runs_and_says_so(tmp_path):
    """``--kernel-dtype float16``: the summary counts the layers whose U is fp16 (alpha = m + r - 1 up to
    FP16_PACK_MAX_ALPHA; a larger alpha keeps fp32), and the library runs within the fp16-U sanity ceiling
    of onnxruntime (one fp16 rounding of U per layer, ~1e-3 each; the bound is derived in test_export).
    The tile of the 5x5 layer is the heuristic's and depends on the CPU (F(4,5), alpha 8, on a Zen 4;
    F(2,5), alpha 6, on a Zen 5): the expected counts follow the m the summary reports per layer."""
    import collections

    import onnxruntime as ort

    from tvm_winograd.compute import FP16_PACK_MAX_ALPHA
    from tvm_winograd.models import build_onnx

    out = tmp_path / "tiny16u.so"
    proc = cli("compile", "tiny_mixed", "--algo", "winograd", "--kernel-dtype", "float16", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kernel_dtype"] == "float16"
    winograd = [layer for layer in summary["layers"] if layer["algorithm"] == "winograd"]
    assert len(winograd) == 4
    for layer in winograd:
        r = int(layer["kernel"].split("x")[0])
        fits = layer["m"] + r - 1 <= FP16_PACK_MAX_ALPHA
        assert layer["kernel_dtype"] == ("float16" if fits else "float32"), layer
    assert summary["winograd_kernel_dtypes"] == dict(collections.Counter(layer["kernel_dtype"] for layer in winograd))
    assert summary["winograd_kernel_dtypes"].get("float16", 0) >= 3
    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    proc = cli("run", str(out), "--input", f"input={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    model, _ = build_onnx("tiny_mixed")
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    err = np.abs(np.load(tmp_path / "y.npy") - ref).max() / np.abs(ref).max()
    assert 1e-6 < err < 1e-2  # fp16 U did round (fp32 is ~1e-6 here), and far from a wrong answer


def test_compile_run_matches_onnxruntime(tiny_lib, tmp_path):
    """compile -> copy the .so elsewhere -> run on .npy -> equals onnxruntime on the same ONNX model."""
    import onnxruntime as ort

    from tvm_winograd.models import build_onnx

    model, net = build_onnx("tiny_mixed")
    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype("float32")
    elsewhere = tmp_path / "deploy"
    elsewhere.mkdir()
    lib = Path(shutil.copy(tiny_lib, elsewhere / "model.so"))
    np.save(tmp_path / "x.npy", x)
    proc = cli("run", str(lib), "--input", f"input={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npy"),
               "--repeat", "3", "--json", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["repeat"] == 3 and info["median_ms"] > 0
    y = np.load(tmp_path / "y.npy")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    # fp32 through 8 convs of <= 32x25 taps: errors ~1e-6 relative; 1e-4 is a sanity ceiling for the CLI
    # plumbing, not a precision check (those: accuracy.assess in test_compute, model_tolerance in test_export)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_layers_json_reports_choices():
    proc = cli("layers", "tiny_mixed", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 8
    decided = [r for r in rows if r["source"] != "ineligible"]
    assert len(decided) == 4 and all(r["source"] == "heuristic" for r in decided)
    assert all(r["reason"].startswith("heuristic: ") for r in decided)
    assert all(r["reason"] for r in rows if r["source"] == "ineligible")
    proc = cli("layers", "tiny_mixed", "--algo", "direct", "--json")
    assert all(r["algorithm"] == "direct" for r in json.loads(proc.stdout))
    proc = cli("layers", "tiny_mixed", "--algo", "winograd", "--json")
    forced = [r for r in json.loads(proc.stdout) if r["source"] != "ineligible"]
    assert len(forced) == 4 and all(r["algorithm"] == "winograd" and r["m"] for r in forced)


def test_run_bad_inputs(tiny_lib, tmp_path):
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((1, 8, 16, 16), "float32"))
    wrong_shape = tmp_path / "w.npy"
    np.save(wrong_shape, np.zeros((1, 8, 15, 16), "float32"))
    corrupt = tmp_path / "c.npy"
    corrupt.write_bytes(b"not numpy")
    assert_usage_error(cli("run", str(tiny_lib), "--input", f"image={good}"), "image")
    assert_usage_error(cli("run", str(tiny_lib), "--input", f"input={wrong_shape}"),
                       "input 'input' is float32[1,8,15,16]; the model takes float32[1,8,16,16]")
    assert_usage_error(cli("run", str(tiny_lib), "--input", f"input={corrupt}"), str(corrupt))
    assert_usage_error(cli("run", str(tiny_lib), "--input", f"input={tmp_path / 'nope.npy'}"), "nope.npy")
    assert_usage_error(cli("run", str(tmp_path / "missing.so"), "--input", f"input={good}"), "missing.so")
    bad_lib = tmp_path / "bad.so"
    bad_lib.write_bytes(b"\x7fELF garbage")
    assert_usage_error(cli("run", str(bad_lib), "--input", f"input={good}"), "bad.so")


def test_compile_bad_inputs(tmp_path):
    out = str(tmp_path / "o.so")
    assert_usage_error(cli("compile", str(tmp_path / "missing.onnx"), "-o", out), "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\x01 this is not a protobuf")
    assert_usage_error(cli("compile", str(corrupt), "-o", out), "corrupt.onnx")
    assert_usage_error(cli("compile", "resnet1000", "-o", out), "resnet1000")
    assert_usage_error(cli("compile", "tiny_mixed", "--target", "tpu-v9", "-o", out), "tpu-v9")
    assert_usage_error(cli("compile", "tiny_mixed", "--schedules", str(tmp_path / "nodir"), "-o", out), "nodir")
    assert_usage_error(cli("compile", "tiny_mixed", "--input-shape", "input:1,x", "-o", out), "input:1,x")
    assert_usage_error(cli("compile", "tiny_mixed", "--target", "cuda", "--kernel-dtype", "float16", "-o", out),
                       "kernel_dtype 'float16'", "CPU")


def test_unreadable_schedules_directory_is_refused(tmp_path, monkeypatch, capsys):
    """In-process, with the permission check answering 'no' (chmod 0 cannot lock root out, and CI
    runs as root): exit 2 and one line before anything is loaded."""
    from tvm_winograd import cli as cli_module

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(cli_module.os, "access", lambda path, mode: False)
    rc = cli_module.main(["compile", "tiny_mixed", "--schedules", str(locked), "-o", str(tmp_path / "x.so")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not readable" in err[0] and "locked" in err[0], err


def test_cuda_check_bad_input_shape():
    """cuda-check parses --input-shape with the same parser as the other commands (one line, exit 2)."""
    assert_usage_error(cli("cuda-check", "tiny_mixed", "--input-shape", "input:1,x"), "input:1,x")
    assert_usage_error(cli("cuda-check", "tiny_mixed", "--input-shape", "input:1,0,8,8"), "input:1,0,8,8")


def test_debug_shows_traceback(tmp_path):
    proc = cli("layers", str(tmp_path / "missing.onnx"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_accuracy_json_small():
    proc = cli("accuracy", "--dtype", "float32", "--m", "2", "--m", "4", "--channels", "8", "--size", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["dtype"], r["algorithm"]) for r in rows] == [
        ("float32", "direct"), ("float32", "F(2,3)"), ("float32", "F(4,3)"),
        ("float32, fp16 U", "F(2,3)"), ("float32, fp16 U", "F(4,3)")]
    assert all(0 < r["max_rel"] < 1e-4 for r in rows[:3])
    # fp16 U: one rounding of U (2^-11 relative) through the inverse, far above fp32, far below garbage
    assert all(1e-5 < r["max_rel"] < 1e-2 for r in rows[3:])


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compile_cuda_carries_cubin(tmp_path, arch):
    """No GPU here: the CLI loads the driver stand-in, nvcc runs, and the .so holds a cubin for arch."""
    from tvm_winograd.cuda.build import file_cuda_images

    out = tmp_path / f"tiny_{arch}.so"
    proc = cli("compile", "tiny_mixed", "--target", arch, "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    sms = {img.sm for img in file_cuda_images(out) if img.kind == "cubin"}
    assert int(arch[3:]) in sms, sms


def _one_conv_onnx(path: Path, channels: int = 16, size: int = 12) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype("float32")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "l", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_tune_then_compile_in_a_fresh_directory_applies_the_result(tmp_path):
    """The main flow from a directory outside the repository: `tune` writes ./schedules/<target>,
    and `layers` and `compile` in the same directory apply it without being told where it is
    (they used to look next to the package and compile the heuristic's choice)."""
    _one_conv_onnx(tmp_path / "l.onnx")
    proc = cli("tune", "l.onnx", "--trials", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [choices_file] = list((tmp_path / "schedules").glob("*/choices.json"))
    assert "schedules: " + str(choices_file.parent) in proc.stdout
    [choice] = json.loads(choices_file.read_text()).values()
    assert list((tmp_path / "tuning_logs").glob("*/database_tuning_record.json"))

    proc = cli("layers", "l.onnx", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [layer] = json.loads(proc.stdout)
    assert layer["source"] == "tuned", layer
    assert (layer["algorithm"], layer["m"]) == (choice["algorithm"], choice.get("m")), (layer, choice)

    proc = cli("compile", "l.onnx", "-o", "l.so", "--json", "--debug", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["schedules"] == str(choices_file.parent)
    [layer] = summary["layers"]
    assert layer["source"] == "tuned" and (layer["algorithm"], layer["m"]) == (choice["algorithm"], choice.get("m"))
    # The tuned record itself was applied to the compiled function (export logs how many it scheduled).
    assert "applied tuned schedules from" in proc.stderr and " to 1 functions" in proc.stderr, proc.stderr
