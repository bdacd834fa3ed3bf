"""The run a user gets: thread pool sized from the allowed CPUs, damaged libraries refused before
loading, one-line messages for bad inputs and for compiles that fail inside TVM (all in subprocesses,
as a user runs them).  Nothing here is timed: thread counts are read back from TVM."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tvm_winograd.runtime import TRAILER_MAGIC, check_library

CLI = [sys.executable, "-m", "tvm_winograd.cli"]
SHAPE = (1, 16, 20, 20)


def _env(**extra: str) -> dict:
    """The environment without the user's thread settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    return {**env, **extra}


#: An empty directory to run the commands in (set per module by :func:`_empty_cwd`): not the
#: repository, whose live ./schedules (the default schedules directory) would apply its records.
_CWD: list[Path] = []
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _empty_cwd(tmp_path_factory):
    _CWD[:] = [tmp_path_factory.mktemp("cwd")]
    yield
    _CWD.clear()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env if env is not None else _env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, cwd=_CWD[0], env=env)


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    for frag in fragments:
        assert frag in err[0], (frag, err[0])


def _conv_onnx(path: Path) -> Path:
    """One 3x3 convolution (16 -> 16 channels, padding 1) on a 1x16x20x20 input named ``x``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(7).standard_normal((16, 16, 3, 3)).astype("float32") * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _unet_onnx(path: Path) -> Path:
    """Conv -> Conv(stride 2) -> ConvTranspose(stride 2) -> Concat with the first conv (a U-Net step)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    inits = {"w1": (8, 4, 3, 3), "w2": (8, 8, 3, 3), "wt": (8, 4, 2, 2)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("ConvTranspose", ["b", "wt"], ["c"], strides=[2, 2]),
             helper.make_node("Concat", ["a", "c"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "unet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 16, 16])],
        [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype("float32"), n) for n, s in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def conv(tmp_path_factory) -> dict:
    """The one-conv model, compiled by the CLI (Winograd forced) with its trailer, and an input."""
    root = tmp_path_factory.mktemp("runtime")
    model = _conv_onnx(root / "conv.onnx")
    lib = root / "conv.so"
    proc = cli("compile", str(model), "--algo", "winograd", "-o", str(lib), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["winograd_layers"] == 1
    x = np.random.default_rng(9).standard_normal(SHAPE).astype("float32")
    np.save(root / "x.npy", x)
    return {"root": root, "model": model, "lib": lib, "x": x, "x_npy": root / "x.npy"}


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    allowed = len(os.sched_getaffinity(0))
    {load}
    import tvm
    print(json.dumps({{"threads": int(tvm.runtime.num_threads()), "allowed": allowed,
                      "main_affinity": len(os.sched_getaffinity(0)),
                      "modules": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm_winograd")))}}))
""")


def _probe(load: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(load=load)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _allowed() -> int:
    return len(os.sched_getaffinity(0))


def test_load_vm_uses_every_allowed_cpu(conv):
    """No TVM_NUM_THREADS/OMP_NUM_THREADS: after load_vm and one run, TVM has one worker per allowed
    CPU, and the main thread may still run on all of them (TVM's default pins it to CPU 0)."""
    load = (f"from tvm_winograd.export import load_vm, run\n"
            f"vm, dev = load_vm({str(conv['lib'])!r})\n"
            f"run(vm, {{'x': np.load({str(conv['x_npy'])!r})}}, dev)")
    got = _probe(load, _env())
    assert got["threads"] == got["allowed"] == _allowed()
    assert got["main_affinity"] == got["allowed"]


def test_threads_keyword_and_user_setting(conv):
    load = (f"from tvm_winograd.export import load_and_run\n"
            f"load_and_run({str(conv['lib'])!r}, {{'x': np.load({str(conv['x_npy'])!r})}}, threads=1)")
    got = _probe(load, _env())
    assert got["threads"] == 1
    assert got["main_affinity"] == got["allowed"]  # one worker, but the caller is not narrowed to one CPU
    load = (f"from tvm_winograd.export import load_and_run\n"
            f"load_and_run({str(conv['lib'])!r}, {{'x': np.load({str(conv['x_npy'])!r})}})")
    assert _probe(load, _env(TVM_NUM_THREADS="1"))["threads"] == 1  # the user's setting is kept


def test_numpy_api_configures_threads():
    """tvm_winograd.conv2d sizes the pool before its first compiled call."""
    load = ("import tvm_winograd as tw\n"
            "tw.conv2d(np.ones((1, 4, 8, 8), 'float32'), np.ones((4, 4, 3, 3), 'float32'), m=2)")
    got = _probe(load, _env())
    assert got["threads"] == got["allowed"] == _allowed()
    assert got["main_affinity"] == got["allowed"]


def test_cli_run_threads_and_runtime_only_imports(conv):
    """`tvm-winograd run`'s path with the TVM runtime library alone (TVM_USE_RUNTIME_LIB=1): no Relax,
    no compile-side module of ours; default threads = allowed CPUs, --threads 1 gives 1."""
    for extra, want in (([], _allowed()), (["--threads", "1"], 1)):
        args = ["run", str(conv["lib"]), "--input", f"x={conv['x_npy']}"] + extra
        load = f"from tvm_winograd.cli import main\nassert main({args!r}) == 0"
        got = _probe(load, _env(TVM_USE_RUNTIME_LIB="1"))
        assert got["threads"] == want
        assert got["main_affinity"] == got["allowed"]
        compile_side = {"tvm_winograd.export", "tvm_winograd.frontend", "tvm_winograd.relax_pass"}
        assert not [m for m in got["modules"] if m.startswith("tvm.relax") or m in compile_side], got["modules"]
    proc = cli("run", str(conv["lib"]), "--input", f"x={conv['x_npy']}", "--threads", "2", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["threads"] == 2, proc.stderr
    assert_usage_error(cli("run", str(conv["lib"]), "--input", f"x={conv['x_npy']}", "--threads", "0"),
                       "--threads 0")


# --------------------------------------------------------------------------------------------------
# The trailer and damaged libraries
# --------------------------------------------------------------------------------------------------

def test_trailer_metadata_and_output(conv):
    """The library carries the trailer (format, versions, target, inputs) and still loads and gives
    onnxruntime's output: one fp32 F(m,3) conv of 16*9 taps, relative error a few 1e-6 (accuracy.py's
    float32 bound for F(4,3) is ~1e-5 of the output scale; 1e-4 leaves room for any m <= 6)."""
    import onnxruntime as ort

    from tvm_winograd.export import load_and_run

    meta = check_library(conv["lib"])
    assert meta["format"] == "tvm-winograd-library" and meta["format_version"] == 1
    assert meta["inputs"] == [{"name": "x", "shape": list(SHAPE), "dtype": "float32"}]
    assert "llvm" in meta["target"] and meta["package_version"] and meta["tvm_version"]
    assert conv["lib"].read_bytes().endswith(TRAILER_MAGIC)
    got = load_and_run(conv["lib"], {"x": conv["x"]})[0]
    sess = ort.InferenceSession(str(conv["model"]), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": conv["x"]})[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def _tvm_without_compiler(root: Path) -> Path:
    """A copy of TVM's Python package under ``root`` without ``libtvm_compiler.so``: the top-level
    modules copied (``libinfo`` finds the libraries beside its own ``__file__``), the subpackages
    linked, ``lib/`` holding links to the runtime libraries only.  Returns the directory to put
    first on PYTHONPATH."""
    import shutil

    import tvm

    src = Path(tvm.__file__).parent
    dst = root / "site" / "tvm"
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name == "lib":
            (dst / "lib").mkdir()
            for lib in entry.iterdir():
                if "compiler" not in lib.name:
                    (dst / "lib" / lib.name).symlink_to(lib)
        elif entry.is_dir():
            (dst / entry.name).symlink_to(entry, target_is_directory=True)
        else:
            shutil.copy2(entry, dst / entry.name)
    return dst.parent


_RUNTIME_ONLY_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tvm
    from tvm.base import _LOADED_LIBS
    from tvm_winograd.runtime import load_and_run
    y = load_and_run(sys.argv[1], {"x": np.load(sys.argv[2])})[0]
    np.save(sys.argv[3], y)
    maps = open("/proc/self/maps").read()
    print(json.dumps({"tvm": tvm.__file__, "libs": sorted(_LOADED_LIBS), "compiler_mapped": "libtvm_compiler" in maps}))
""")


def test_exported_library_runs_where_the_compiler_library_cannot_load(conv, tmp_path):
    """The exported library in a process whose TVM has no libtvm_compiler.so at all (a copy of TVM's
    package without it, first on PYTHONPATH, and TVM_USE_RUNTIME_LIB=1): it loads, runs, and gives
    onnxruntime's output (the bound of test_trailer_metadata_and_output); the compiler library is
    neither loaded nor mapped."""
    import onnxruntime as ort

    site = _tvm_without_compiler(tmp_path)
    assert not list(site.rglob("libtvm_compiler*"))
    pythonpath = os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1]),
                                  os.environ.get("PYTHONPATH", "")])
    out = tmp_path / "y.npy"
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_ONLY_RUN, str(conv["lib"]), str(conv["x_npy"]), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env=_env(TVM_USE_RUNTIME_LIB="1", PYTHONPATH=pythonpath), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tvm"].startswith(str(site)), got
    assert got["libs"] == ["tvm_runtime"] and not got["compiler_mapped"], got
    sess = ort.InferenceSession(str(conv["model"]), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": conv["x"]})[0]
    np.testing.assert_allclose(np.load(out), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_plain_tvm_library_without_trailer_loads(conv, tmp_path):
    """A library as TVM's export_library writes it (the trailer cut off at its start) passes the ELF check."""
    data = conv["lib"].read_bytes()
    (length,) = struct.unpack("<Q", data[-56:-48])
    plain = tmp_path / "plain.so"
    plain.write_bytes(data[:len(data) - 56 - length])
    assert check_library(plain) is None
    proc = cli("run", str(plain), "--input", f"x={conv['x_npy']}", "-o", str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.load(_run_y(conv, tmp_path)))
    # without a trailer a wrong dtype falls back to TVM's own check (its last line), still one line
    x64 = tmp_path / "x64.npy"
    np.save(x64, conv["x"].astype("float64"))
    assert_usage_error(cli("run", str(plain), "--input", f"x={x64}"), "'x'", "float64", "float32")


def _run_y(conv, tmp_path) -> Path:
    out = tmp_path / "y_trailer.npy"
    proc = cli("run", str(conv["lib"]), "--input", f"x={conv['x_npy']}", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_truncated_and_flipped_libraries_are_refused(conv, tmp_path):
    data = conv["lib"].read_bytes()
    half = tmp_path / "half.so"
    half.write_bytes(data[:len(data) // 2])
    assert_usage_error(cli("run", str(half), "--input", f"x={conv['x_npy']}"), "half.so", "truncated")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    flip = tmp_path / "flip.so"
    flip.write_bytes(bytes(flipped))
    assert_usage_error(cli("run", str(flip), "--input", f"x={conv['x_npy']}"), "flip.so", "damaged", "sha256")
    cut = tmp_path / "cut.so"  # the magic and digest gone, the JSON left behind the ELF
    cut.write_bytes(data[:-40])
    assert_usage_error(cli("run", str(cut), "--input", f"x={conv['x_npy']}"), "cut.so", "damaged", "cut")
    with pytest.raises(ValueError, match="half.so"):
        check_library(half)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_input_and_the_signature(conv, tmp_path):
    x64 = tmp_path / "x64.npy"
    np.save(x64, conv["x"].astype("float64"))
    assert_usage_error(cli("run", str(conv["lib"]), "--input", f"x={x64}"),
                       "input 'x' is float64[1,16,20,20]; the model takes float32[1,16,20,20]")
    rank3 = tmp_path / "rank3.npy"
    np.save(rank3, conv["x"][0])
    assert_usage_error(cli("run", str(conv["lib"]), "--input", f"x={rank3}"),
                       "input 'x' is float32[16,20,20]; the model takes float32[1,16,20,20]")
    assert_usage_error(cli("run", str(conv["lib"]), "--input", f"image={conv['x_npy']}"),
                       "'image'", "model's inputs ['x']")


def test_input_shape_for_an_unknown_name(conv, tmp_path):
    assert_usage_error(cli("compile", str(conv["model"]), "--input-shape", "nope:1,16,20,20",
                           "-o", str(tmp_path / "o.so")), "'nope'", "conv.onnx", "'x'")
    assert_usage_error(cli("layers", str(conv["model"]), "--input-shape", "nope:1,16,20,20"), "'nope'", "'x'")


def test_unet_compiles_by_default_and_failures_inside_tvm_are_one_line(tmp_path):
    """ConvTranspose: its 2x2 stride-2 form compiles by default as a 1x1 conv and a depth-to-space (the
    transposes: the input's, the depth-to-space's interleave, the output's).  TVM 0.27 lowers
    conv2d_transpose itself in NCHW only: one forced into NHWC has no lowering (VM codegen error):
    CompileError, one line naming the op and the layout."""
    from tvm import relax

    from tvm_winograd.export import CompileError, compile_model

    model = _unet_onnx(tmp_path / "unet.onnx")
    proc = cli("compile", str(model), "-o", str(tmp_path / "u.so"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["layout_transforms"] == 3
    x = relax.Var("x", relax.TensorType((1, 8, 8, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d_transpose(x, relax.const(np.ones((4, 2, 2, 2), "float32")),
                                                              strides=2, data_layout="NHWC", kernel_layout="IOHW"))
        bb.emit_func_output(out)
    with pytest.raises(CompileError) as err:
        compile_model(bb.get(), "llvm", tmp_path, layout="keep")
    assert str(err.value).startswith("TVM failed to compile relax.nn.conv2d_transpose (data_layout NHWC): ")
    assert "\n" not in str(err.value)


def test_symbolic_dimensions_match_any_size():
    from tvm_winograd.runtime import check_inputs

    signature = [{"name": "x", "shape": ["n", 16, "h", "w"], "dtype": "float32"}]
    check_inputs(signature, {"x": np.zeros((3, 16, 7, 9), "float32")})
    with pytest.raises(ValueError, match=r"input 'x' is float32\[3,8,7,9\]; the model takes float32\[n,16,h,w\]"):
        check_inputs(signature, {"x": np.zeros((3, 8, 7, 9), "float32")})
    with pytest.raises(ValueError, match=r"is float16\[1,16,2,2\]; the model takes float32"):
        check_inputs(signature, {"x": np.zeros((1, 16, 2, 2), "float16")})


def test_tuning_runner_workers_use_every_allowed_cpu(monkeypatch):
    """MetaSchedule's local runner evaluates candidates in worker processes on threads of their own:
    without the initializer they measured on TVM's default pool (half the cores on x86), so the tuner
    chose schedules for one core of two (fails without the initializer: 1 worker)."""
    import tvm

    from tvm_winograd.targets import host_target
    from tvm_winograd.tune.measure import make_runner

    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    runner = make_runner(host_target())
    # num_threads() sizes the worker thread's pool as a candidate's first parallel call would.
    assert runner.pool.submit(tvm.runtime.num_threads).result() == len(os.sched_getaffinity(0))
