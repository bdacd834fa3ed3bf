"""The GPU pack without a GPU: what ``gpu-pack`` writes, ``run.py`` refusing here, the runner's checks on an
emulated device, and ``gpu-import`` -> ``compile`` applying the imported records.

The emulated device runs each packed kernel's TIR serially on the CPU (thread loops made serial, as
``cuda-check`` does) and times it with an injected fake GPU timer: it proves the runner's inputs, weight
transform, argument order, reference windows and assessment end to end; what only a GPU can show (fragment
layouts, races, real times) is what the pack exists to measure.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("gcc") is None,
                                reason="needs nvcc (CUDA toolkit) and gcc")

REPO = Path(__file__).resolve().parents[1]
#: ResNet-18's smallest 3x3 layer (512 channels at 7x7) with conv + bias + ReLU: the cheapest to pack.
LAYER = "c512_h7_w7_k512"


def _select(layer) -> bool:
    return LAYER in layer.id and layer.epilogue.tag() == "br"


#: The packs the tests build: sm_80, ResNet-18's 512@7 layer in fp32 and fp16 (tensor-core spaces);
#: sm_90, tiny_mixed's first layer (8 -> 16 channels at 16x16) at batch 2 (windows in the first and last
#: image) and the whole tiny_mixed model.
PACKS = {
    "sm_80": dict(models=("resnet18",), batches=(1,), dtypes=("float32", "float16"), select=_select,
                  whole_models=False),
    "sm_90": dict(models=("tiny_mixed",), batches=(2,), dtypes=("float32",),
                  select=lambda layer: "c8_h16_w16_k16" in layer.id, whole_models=True),
}


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    from tvm_winograd.cuda import ensure_cuda_runtime
    from tvm_winograd.gpu_pack import build_pack

    ensure_cuda_runtime()
    out = {}
    for arch, kwargs in PACKS.items():
        path = tmp_path_factory.mktemp(f"pack_{arch}")
        out[arch] = (arch, path, build_pack(path, arch, samples=1, **kwargs))
    return out


@pytest.fixture(params=sorted(PACKS))
def pack(request, packs):
    return packs[request.param]


def test_pack_is_complete_and_small(pack):
    """Every layer has a library with a cubin for the arch, the candidates' stage dtypes and kernels of
    every space; the manifest lists every file with its sha256; the pack is far below the 60 MiB limit."""
    from tvm_winograd.cuda.build import file_cuda_images
    from tvm_winograd.gpu_pack import MAX_PACK_BYTES, PACK_FORMAT

    arch, out, manifest = pack
    assert manifest["format"] == PACK_FORMAT and manifest["arch"].startswith(arch)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(manifest["files"])
    assert {"run.py", "traces.json.gz", "lib/twmath/windows.py", "lib/twmath/accuracy.py",
            "lib/twmath/models.py"} <= files
    # TVM's runtime (lib/tvm, lib/tvm_ffi: ~12 MiB) aside: the layers' kernels
    assert sum((out / f).stat().st_size for f in files if not f.startswith(("lib/tvm/", "lib/tvm_ffi/"))) \
        < MAX_PACK_BYTES / 8
    for layer in manifest["layers"]:
        images = file_cuda_images(out / layer["library"])
        assert any(img.kind == "cubin" and f"sm_{img.sm}" == arch for img in images)
        spaces = {(k["algorithm"], k["m"], k["space"]) for k in layer["kernels"]}
        assert {("winograd", 2, "default"), ("winograd", 4, "default"), ("winograd", 2, "shared"),
                ("winograd", 4, "direct"), ("direct", None, "dlight")} <= spaces
        assert ({s for _, _, s in spaces} >= {"tensorcore", "tensorcore_pipelined"}) == ("float16" in layer["id"])
    assert [m["name"] for m in manifest["models"]] == (["tiny_mixed"] if arch == "sm_90" else [])
    for model in manifest["models"]:
        assert any(img.kind == "cubin" for img in file_cuda_images(out / model["library"]))
        assert model["weights"]["params"] and model["tolerance"] > 0 and not list(out.rglob("*.params"))
        with gzip.open(out / "traces.json.gz", "rt") as f:
            traces = json.load(f)[layer["id"]]
        assert all(traces[k["symbol"]] for k in layer["kernels"] if k["algorithm"] == "winograd")
        assert set(layer["candidates"]) == {"direct", "winograd_m2", "winograd_m4"}
        assert {c["precision"]["pack_dtype"] for c in layer["candidates"].values()} \
            == {None, "float16" if "float16" in layer["id"] else "float32"}


def test_run_py_refuses_here_and_on_a_damaged_pack(pack, tmp_path):
    """Started here (no GPU), run.py checks the manifest, then exits 2 with one line; a damaged file is
    named, exit 2."""
    _, out, manifest = pack
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(out / "run.py")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "no GPU" in run.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    lib = damaged / manifest["layers"][0]["library"]
    lib.write_bytes(lib.read_bytes()[:-100])
    run = subprocess.run([sys.executable, str(damaged / "run.py")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 2 and "damaged" in run.stderr and manifest["layers"][0]["library"] in run.stderr


def test_run_py_needs_no_installed_tvm(pack, tmp_path):
    """The pack carries TVM's runtime for this Python (no compiler library): run.py started with no
    site-packages but numpy imports TVM from the pack, with the runtime library only, and reaches the
    GPU check (exit 2, no GPU here)."""
    import numpy

    _, out, manifest = pack
    assert manifest["runtime"]["pythons"][0] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    lib = out / "lib"
    assert (lib / "tvm" / "lib" / "libtvm_runtime.so").is_file() and not list(lib.rglob("libtvm_compiler*"))
    assert sum(p.stat().st_size for p in lib.rglob("*") if p.is_file()) < 16 * 2**20
    only_numpy = tmp_path / "site"
    only_numpy.mkdir()
    (only_numpy / "numpy").symlink_to(Path(numpy.__file__).parent)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(only_numpy), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-S", str(out / "run.py")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 2 and "no GPU" in run.stderr and "CUDA runtime" in run.stderr, run.stderr
    probe = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import tvm, os; "
                            "print(tvm.__file__)", str(lib)], capture_output=True, text=True, env=env, timeout=300)
    assert probe.returncode == 0 and probe.stdout.strip().startswith(str(lib)), probe.stderr


# --------------------------------------------------------------------------------------------------
# The runner on an emulated device, and the import
# --------------------------------------------------------------------------------------------------

class EmulatedDevice:
    """The pack's kernels run serially on the CPU; a fake GPU timer gives each symbol ``times_ms(symbol)``;
    ``scale`` multiplies every output (an injected precision bug)."""

    def __init__(self, modules: dict, times_ms, scale: float = 1.0):
        self.modules, self.times_ms, self.scale = modules, times_ms, scale

    def unavailable(self):
        return None

    def info(self):
        return {"name": "emulated GPU (serial CPU)", "driver_version": "none"}

    def load(self, path):
        return self.modules[Path(path).name]

    def put(self, array):
        return tvm.runtime.tensor(array, tvm.cpu())

    def empty(self, shape, dtype):
        return tvm.runtime.empty(tuple(shape), dtype, tvm.cpu())

    def run(self, module, symbol, args):
        module[symbol](*args)

    def get(self, tensor):
        return (tensor.numpy().astype(np.float64) * self.scale).astype(tensor.numpy().dtype)

    def time(self, module, symbol, args, budget_s, max_repeat):
        return [self.times_ms(symbol) / 1e3] * 3


def _fake_times(symbol: str) -> float:
    """The fake GPU timer: the m=2 shared-space sample is fastest, then the defaults, then direct."""
    if symbol.startswith("winograd_m2_shared"):
        return 0.05
    return 0.2 if symbol.startswith("winograd") else 0.3


@pytest.fixture(scope="module")
def emulated(packs):
    """CPU builds of the fp32 layer's kernels (rebuilt from the same seeds: the same schedules)."""
    from tvm_winograd.cuda.verify import serial_cpu_func
    from tvm_winograd.gpu_pack import layer_kernels, pack_layers
    from tvm_winograd.targets import host_target, resolve_target

    arch, out, manifest = packs["sm_80"]
    target = resolve_target(arch)
    (layer,) = pack_layers(target, ("resnet18",), (1,), ("float32",), _select)
    entry = next(e for e in manifest["layers"] if e["id"] == layer.id)
    kernels = layer_kernels(layer, target, manifest["samples"], manifest["seed"])
    assert [k.symbol for k in kernels] == [k["symbol"] for k in entry["kernels"]]
    host = host_target()
    mod = tvm.IRModule({k.symbol: serial_cpu_func(k.func).with_attr("global_symbol", k.symbol) for k in kernels})
    with host:
        cpu = tvm.tirx.build(mod, target=host)
    return out, entry, {Path(entry["library"]).name: cpu}


def _report(out: Path, entry: dict, device) -> dict:
    sys.path.insert(0, str(out))
    try:
        import run as runner  # the pack's own run.py
    finally:
        sys.path.pop(0)
    return runner.run_pack(out, device, select=[entry["id"]], use_torch=False, progress=lambda _line: None)


def test_runner_checks_every_kernel_and_rejects_a_scaled_output(emulated):
    """On the emulated device every kernel of the layer passes the pack's check and is timed by the fake
    timer; with every output scaled by 1 + 1e-3 every kernel is rejected (the check can fail)."""
    out, entry, modules = emulated
    report = _report(out, entry, EmulatedDevice(modules, _fake_times))
    (layer,) = report["layers"]
    assert [k["symbol"] for k in layer["kernels"]] == [k["symbol"] for k in entry["kernels"]]
    assert report["passed"] and all(k["numerics"]["ok"] for k in layer["kernels"]), layer["kernels"]
    assert all(k["median_ms"] == pytest.approx(_fake_times(k["symbol"])) for k in layer["kernels"])
    bad = _report(out, entry, EmulatedDevice(modules, _fake_times, scale=1 + 1e-3))
    assert not bad["passed"] and not any(k["numerics"]["ok"] for k in bad["layers"][0]["kernels"])


def test_gpu_import_then_compile_applies_the_records(emulated, tmp_path):
    """gpu-import stores the checked kernels as tuning records and the layer's choice (F(2,3), the fake
    timer's fastest); a fresh ``compile`` of ResNet-18 for sm_80 applies them: the 512@7 conv + bias + ReLU
    layer runs F(2,3) by measurement and its function is scheduled by the imported record."""
    out, entry, modules = emulated
    report = _report(out, entry, EmulatedDevice(modules, _fake_times))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    sdir, logs = tmp_path / "schedules", tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "tvm_winograd.cli"]
    imp = subprocess.run(cli + ["gpu-import", str(path), "--schedules", str(sdir), "--log-dir", str(logs), "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert imp.returncode == 0, imp.stderr
    result = json.loads(imp.stdout)
    winograd = [k for k in entry["kernels"] if k["algorithm"] == "winograd"]
    assert result["records"] == len(winograd) and result["best"] == 2  # the best of m=2 and of m=4
    (choice,) = result["choices"].values()
    assert (choice["algorithm"], choice["m"]) == ("winograd", 2)
    comp = subprocess.run(cli + ["compile", "resnet18", "--target", "sm_80", "-o", str(tmp_path / "r18.so"),
                                 "--schedules", str(sdir), "--json"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert comp.returncode == 0, comp.stderr
    compiled = json.loads(comp.stdout)
    layers = [row for row in compiled["layers"] if row["key"] == entry["key"]]
    assert len(layers) == 3  # layer4's 512->512 convs: one with bias + ReLU, two with the residual too
    assert all((row["algorithm"], row["m"], row["source"]) == ("winograd", 2, "tuned") for row in layers), layers
    tuned = [f["name"] for f in compiled["functions"] if f["scheduled_by"] == "tuned"]
    assert tuned == [next(row["func"] for row in layers if row["epilogue"] == "br")], compiled["functions"]


def _cpu_device(out: Path):
    """run.py's own device class on the CPU: the whole-model path (weights regenerated, transformed once,
    checked, timed) without a GPU."""
    sys.path.insert(0, str(out))
    try:
        import run as runner
    finally:
        sys.path.pop(0)
    before = os.environ.get("TVM_USE_RUNTIME_LIB")
    device = runner.CudaDevice()  # sets TVM_USE_RUNTIME_LIB for its process (run.py's): not for this one
    if before is None:
        del os.environ["TVM_USE_RUNTIME_LIB"]
    device.dev = tvm.cpu(0)
    return runner, device


def test_whole_model_runs_from_regenerated_weights(packs, tmp_path):
    """A model packed for llvm (tiny_mixed, its 4 eligible layers on Winograd, separate params, no params
    file): run.py regenerates its
    weights from the model's seed, transforms them once and matches the CPU reference within the derived
    tolerance; weights drawn from another seed are recognised (no verdict), a 1 % output error fails."""
    from tvm_winograd.gpu_pack import pack_model

    _, out, _ = packs["sm_90"]  # for its lib/twmath and run.py
    entry = pack_model("tiny_mixed", "llvm", tmp_path, tmp_path / "scratch", algo="winograd")
    assert entry["winograd_layers"] >= 1 and not list(tmp_path.rglob("*.params"))
    runner, device = _cpu_device(out)
    sys.path.insert(0, str(out / "lib"))
    try:
        row = runner.run_model(tmp_path, entry, device, budget_s=0.05, max_repeat=5)
        assert row["check"]["ok"] and row["check"]["top1_same"] and row["median_ms"] > 0, row
        assert row["check"]["max_error"] <= entry["tolerance"] < 1e-3
        other = {**entry, "weights": {**entry["weights"], "seed": 1}}  # not the pack's weights: no verdict
        unknown = runner.run_model(tmp_path, other, device, budget_s=0.05, max_repeat=5)
        assert unknown["check"]["ok"] is None and "drew other" in unknown["check"]["reason"], unknown
        reference = tmp_path / entry["reference"]
        np.save(reference, np.load(reference) * np.float32(1.01))  # a 1 % error in the output is caught
        bad = runner.run_model(tmp_path, entry, device, budget_s=0.05, max_repeat=5)
        assert bad["check"]["ok"] is False and "tolerance" in bad["check"]["reason"], bad
    finally:
        sys.path.remove(str(out / "lib"))


def test_gpu_import_refuses_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"format": "something else"}))
    run = subprocess.run([sys.executable, "-m", "tvm_winograd.cli", "gpu-import", str(bad)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=300)
    assert run.returncode == 2 and "not a GPU pack report" in run.stderr and str(bad) in run.stderr


def test_other_python_versions_get_their_tvm_ffi_extension(tmp_path, monkeypatch, caplog):
    """``extra_pythons``: the extension of tvm_ffi's wheel for that version is added beside this one's (pip
    stands in here: it writes a wheel holding cp312's core module); a version pip cannot fetch is left out
    with a warning naming it."""
    import subprocess as sp
    import zipfile

    from tvm_winograd import gpu_pack

    def fake_pip(cmd, **kwargs):
        version = cmd[cmd.index("--python-version") + 1]
        if version == "3.12":
            with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "apache_tvm_ffi-cp312.whl", "w") as wheel:
                wheel.writestr("tvm_ffi/core.cpython-312-x86_64-linux-gnu.so", b"\x7fELF312")
            return sp.CompletedProcess(cmd, 0, "", "")
        return sp.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(sp, "run", fake_pip)
    assert gpu_pack._add_ffi_extension(tmp_path, "3.12")
    assert (tmp_path / "core.cpython-312-x86_64-linux-gnu.so").read_bytes() == b"\x7fELF312"
    assert not gpu_pack._add_ffi_extension(tmp_path, "3.13")
    assert "3.13" in caplog.text and "No matching distribution" in caplog.text
