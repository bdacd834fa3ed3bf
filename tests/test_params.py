"""Weights outside the library (``compile --params separate``): the library without weights plus a params
file, the weight transforms run once at load, the runtime alone runs it, bad params files are one line.

The model is tiny_mixed with every eligible layer forced to Winograd (four Winograd layers, F(2,3) and
F(2,5) or F(4,5) by the CPU, whose weight transforms move to ``main_transform_params``; four direct convs, stride 2, 1x1,
depthwise, dilated, whose weight packing moves there too).  Nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tvm

from test_export import _ort, model_tolerance
from test_runtime import _env, _tvm_without_compiler, assert_usage_error
from tvm_winograd.contract import kind_of, our_prim_funcs
from tvm_winograd.export import compile_model, export_library, load_vm, prepare_model, run
from tvm_winograd.frontend import load_model
from tvm_winograd.params import lift_weight_transforms, params_path_for
from tvm_winograd.runtime import TRANSFORM_FUNC, check_library

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tvm_winograd.cli"]


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env if env is not None else _env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """tiny_mixed (Winograd forced) compiled by the CLI both ways, in an empty directory (no ./schedules),
    and an input file."""
    root = tmp_path_factory.mktemp("params")
    out = {"root": root}
    for mode in ("embed", "separate"):
        lib = root / f"tiny_{mode}.so"
        proc = cli(root, "compile", "tiny_mixed", "--algo", "winograd", "--params", mode, "-o", str(lib), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[mode] = {"lib": lib, "summary": json.loads(proc.stdout)}
    _, info = load_model("tiny_mixed")
    feed = info.net.input_feed()
    out["feed"], out["info"] = feed, info
    out["x_npy"] = root / "x.npy"
    np.save(out["x_npy"], feed["input"])
    return out


def _cli_output(built: dict, lib: Path, *extra: str, name: str = "y.npy") -> np.ndarray:
    y = built["root"] / name
    proc = cli(built["root"], "run", str(lib), "--input", f"input={built['x_npy']}", "-o", str(y), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(y)


def test_separate_library_is_smaller_and_gives_the_embedded_output(built):
    """The separate build: a library without weights and ``tiny_separate.params`` beside it (every
    weight, in float32, as a TVM param dict), named with its sha256 in the trailer; the default build
    writes no params file and records none.

    Outputs: the two builds run the same PrimFuncs on the same inputs; only the transformed weights
    U = G g G_T differ, by rounding (folded at compile time from the unscheduled weight-transform
    PrimFunc, here computed at load by the scheduled one).  That rounding is part of what the derived
    fp32 bound of test_export.model_tolerance covers for each Winograd layer, so both builds are within
    it of onnxruntime and of each other (bitwise equality is checked on the direct-only build below)."""
    embed, separate = built["embed"], built["separate"]
    assert embed["summary"]["winograd_layers"] == separate["summary"]["winograd_layers"] == 4
    assert separate["summary"]["unscheduled"] == [] and embed["summary"]["params_file"] is None
    params = params_path_for(separate["lib"])
    assert params.name == "tiny_separate.params" and params.is_file()
    assert separate["summary"]["params_file"] == str(params)
    assert not params_path_for(embed["lib"]).exists()
    assert separate["lib"].stat().st_size < embed["lib"].stat().st_size
    weights = tvm.runtime.load_param_dict(params.read_bytes())
    assert all(str(w.dtype) == "float32" for w in weights.values())
    n_weights = sum(int(np.prod(w.shape)) for w in weights.values())
    assert n_weights * 4 <= params.stat().st_size < n_weights * 4 + 4096  # the weights and a small header
    record = check_library(separate["lib"])["params"]
    assert record["file"] == params.name and record["bytes"] == params.stat().st_size
    assert record["names"] == list(weights) and len(record["sha256"]) == 64
    assert "params" not in check_library(embed["lib"])

    y_embed = _cli_output(built, embed["lib"], name="y_embed.npy")
    y_separate = _cli_output(built, separate["lib"], name="y_separate.npy")
    ref = _ort(built["info"], built["feed"])
    tol = model_tolerance([SimpleNamespace(**r) for r in separate["summary"]["layers"]], ref)
    assert tol < 0.05 * np.abs(ref).max()
    for got in (y_embed, y_separate):
        assert np.abs(got - ref).max() <= tol
    assert np.abs(y_separate - y_embed).max() <= tol


def test_direct_only_build_is_bitwise_the_embedded_one(tmp_path):
    """tiny_mixed with every conv direct (our register-tiled PrimFunc with packed weights): the packing is
    pure data movement, so at load it gives exactly the constants folded at compile time, and the
    outputs are bitwise equal."""
    mod, info = load_model("tiny_mixed")
    feed = info.net.input_feed()
    outs = {}
    for mode in ("embed", "separate"):
        ex, report = compile_model(mod, "llvm", tmp_path, algo="direct", params=mode)
        assert not report.unscheduled()
        vm, dev = load_vm(export_library(ex, tmp_path / f"{mode}.so"))
        outs[mode] = run(vm, feed, dev)[0]
    assert np.array_equal(outs["embed"], outs["separate"])


def test_weight_transforms_run_once_at_load(built, monkeypatch, tmp_path):
    """``main`` of the separate build calls no weight transform (all four are in
    ``main_transform_params``, with the direct convs' packing); the runtime fetches and calls
    ``main_transform_params`` once, in ``load_vm``, and every run reuses its results (the Winograd-
    transformed weights: alpha x alpha leading dimensions)."""
    mod, _ = load_model("tiny_mixed")
    prepared, _ = prepare_model(mod, "llvm", tmp_path, "winograd", params="separate")
    lifted, weights = lift_weight_transforms(prepared)
    transforms = {n for n, f in our_prim_funcs(lifted).items() if kind_of(f) == "weight_transform"}
    assert len(transforms) == 4

    def callees(func: str) -> set[str]:
        return {str(call.args[0].name_hint) for call in _calls(lifted[func])}

    assert not callees("main") & transforms and callees(TRANSFORM_FUNC) >= transforms
    assert int(lifted["main"].attrs["num_input"]) == 1 and len(lifted[TRANSFORM_FUNC].params) == 1  # the tuple

    from tvm.runtime.vm import VirtualMachine

    fetched: list[str] = []
    original = VirtualMachine.__getitem__

    def counting(self, key):
        fetched.append(key)
        return original(self, key)

    monkeypatch.setattr(VirtualMachine, "__getitem__", counting)
    vm, dev = load_vm(built["separate"]["lib"])
    assert fetched == [TRANSFORM_FUNC]
    kept = vm._tvm_winograd_weights
    packed = [w for w in kept if w.ndim == 5 and w.shape[0] == w.shape[1]]  # (alpha, alpha, ...) kernel packs
    alphas = sorted(w.shape[0] for w in packed)  # F(2,3) x3 and the 5x5 layer's, the heuristic's tile for
    assert alphas[:3] == [4, 4, 4] and alphas[3] in (6, 8)  # this CPU: F(4,5) on a Zen 4, F(2,5) on a Zen 5
    outputs = [run(vm, built["feed"], dev)[0] for _ in range(3)]
    assert fetched.count(TRANSFORM_FUNC) == 1 and fetched.count("main") == 3
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])


def _calls(func) -> list:
    """The ``call_tir`` calls of a Relax function."""
    from tvm import relax

    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            found.append(expr)

    relax.analysis.post_order_visit(func.body, visit)
    return found


_RUNTIME_ONLY_RUN = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tvm
    from tvm.base import _LOADED_LIBS
    from tvm_winograd.runtime import load_and_run
    y = load_and_run(sys.argv[1], {"input": np.load(sys.argv[2])}, params=sys.argv[3])[0]
    np.save(sys.argv[4], y)
    maps = open("/proc/self/maps").read()
    print(json.dumps({"tvm": tvm.__file__, "libs": sorted(_LOADED_LIBS), "compiler_mapped": "libtvm_compiler" in maps,
                      "relax": sorted(m for m in sys.modules if m.startswith("tvm.relax")),
                      "threads": int(tvm.runtime.num_threads()), "allowed": len(os.sched_getaffinity(0))}))
""")


def test_runtime_alone_runs_the_library_with_its_params(built, tmp_path):
    """In a process whose TVM has no libtvm_compiler.so (test_runtime's copy of the package, first on
    PYTHONPATH, TVM_USE_RUNTIME_LIB=1): the separate library and its params file (moved elsewhere and
    given by path) load, transform and run, bitwise equal to the same library run here; no compiler
    library mapped, no Relax Python imported; the pool was sized before the transforms' parallel code
    (one worker per allowed CPU, not TVM's default of half)."""
    site = _tvm_without_compiler(tmp_path)
    moved = tmp_path / "weights" / "renamed.params"
    moved.parent.mkdir()
    moved.write_bytes(params_path_for(built["separate"]["lib"]).read_bytes())
    pythonpath = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])
    out = tmp_path / "y.npy"
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_ONLY_RUN, str(built["separate"]["lib"]), str(built["x_npy"]),
                           str(moved), str(out)], capture_output=True, text=True, timeout=300,
                          env=_env(TVM_USE_RUNTIME_LIB="1", PYTHONPATH=pythonpath), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tvm"].startswith(str(site)) and got["libs"] == ["tvm_runtime"] and not got["compiler_mapped"], got
    assert got["relax"] == [] and got["threads"] == got["allowed"], got
    vm, dev = load_vm(built["separate"]["lib"])
    assert np.array_equal(np.load(out), run(vm, built["feed"], dev)[0])


def test_bad_params_files_are_one_line_and_exit_2(built, tmp_path):
    """A missing params file (the library copied without it), a truncated one, one with a flipped byte,
    another model's, a params file given for a library with its weights inside: one line naming the
    file, exit 2.  ``--params`` finds a renamed one."""
    import shutil

    lib = tmp_path / "alone.so"
    shutil.copy(built["separate"]["lib"], lib)
    x = f"input={built['x_npy']}"
    assert_usage_error(cli(tmp_path, "run", str(lib), "--input", x),
                       "alone.so' takes its weights from", "tiny_separate.params", "does not exist", "--params")
    assert_usage_error(cli(tmp_path, "run", str(lib), "--params", str(tmp_path / "nope.params"), "--input", x),
                       "params file", "nope.params", "does not exist")
    data = params_path_for(built["separate"]["lib"]).read_bytes()
    cases = {"cut.params": (data[:len(data) // 2], "truncated"),
             "flip.params": (data[:-7] + bytes([data[-7] ^ 0xFF]) + data[-6:], "sha256")}
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_usage_error(cli(tmp_path, "run", str(lib), "--params", str(tmp_path / name), "--input", x),
                           f"params file '{tmp_path / name}'", "does not belong to library", why)
    # another model's params file: the same model with other weights (same names, shapes and size)
    weights = tvm.runtime.load_param_dict(data)
    other = tvm.runtime.save_param_dict({n: tvm.runtime.tensor(w.numpy() * 2) for n, w in weights.items()})
    (tmp_path / "other.params").write_bytes(bytes(other))
    assert len(bytes(other)) == len(data)
    assert_usage_error(cli(tmp_path, "run", str(lib), "--params", str(tmp_path / "other.params"), "--input", x),
                       "other.params", "does not belong", "sha256")
    assert_usage_error(cli(tmp_path, "run", str(built["embed"]["lib"]), "--params", str(tmp_path / "other.params"),
                           "--input", x), "tiny_embed.so", "has its weights inside")
    (tmp_path / "renamed.params").write_bytes(data)
    assert np.array_equal(_cli_output(built, lib, "--params", str(tmp_path / "renamed.params"), name="y_renamed.npy"),
                          _cli_output(built, built["separate"]["lib"], name="y_beside.npy"))


def test_compile_params_option_is_documented_and_checked(built):
    help_text = cli(built["root"], "compile", "--help").stdout
    assert "--params {embed,separate}" in help_text and "transformed once at load" in help_text
    assert "--params FILE.params" in cli(built["root"], "run", "--help").stdout
    with pytest.raises(ValueError, match="params 'both' is not one of embed, separate"):
        prepare_model(load_model("tiny_mixed")[0], "llvm", built["root"], params="both")


def test_cuda_build_with_separate_params_carries_cubins(tmp_path):
    """No GPU here: ``compile --target sm_80 --params separate`` builds with nvcc (driver stand-in), the
    library holds a cubin, and ``main_transform_params``' weight transforms were scheduled for the GPU
    (an unscheduled GPU function fails the build).  With the model's layout kept on GPUs the params file
    is the model's own initializers (a Gemm's weight transposed, as TVM's ONNX importer folds it)."""
    from onnx import numpy_helper

    from tvm_winograd.cuda.build import file_cuda_images

    lib = tmp_path / "tiny_sm80.so"
    proc = cli(tmp_path, "compile", "tiny_mixed", "--target", "sm_80", "--algo", "winograd", "--params", "separate",
               "-o", str(lib), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["winograd_layers"] == 4 and summary["unscheduled"] == []
    assert summary["function_counts"]["weight_transform"] == 4
    assert 80 in {img.sm for img in file_cuda_images(lib) if img.kind == "cubin"}
    weights = [w.numpy() for w in tvm.runtime.load_param_dict(params_path_for(lib).read_bytes()).values()]
    _, info = load_model("tiny_mixed")
    inits = [numpy_helper.to_array(t) for t in info.onnx_model.graph.initializer]
    assert len(weights) == len(inits)
    for w in weights:
        assert any(np.array_equal(w, i) or (w.ndim == 2 and np.array_equal(w, i.T)) for i in inits), w.shape
