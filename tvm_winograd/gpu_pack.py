"""The GPU pack: build here with nvcc, measure on an offline GPU host, import the times (an offline tuning round).

No machine of this project has a GPU.  A GPU host is often a bare node: the NVIDIA driver and Python, no
compiler toolchain, no package index.  :func:`build_pack` therefore builds, on any machine with nvcc, a
self-contained directory::

    DIR/manifest.json        what is in the pack: target, layers, kernels (space, seed), inputs, models,
                             the sha256 of every file
    DIR/traces.json.gz       each kernel's schedule trace (for gpu-import)
    DIR/run.py               the runner (:mod:`tvm_winograd.gpu_pack_run`): imports only numpy and
                             tvm.runtime (TVM_USE_RUNTIME_LIB=1), checks and times every kernel
    DIR/layers/<id>.so       one CUDA library per layer configuration (cubins for the target's arch)
    DIR/models/<name>.so     the whole models, their weights separate (regenerated there from the seed)
    DIR/lib/twmath/          the numpy-only modules of this package the check needs (windows.py,
                             accuracy.py, models.py and what they import)
    DIR/lib/tvm, tvm_ffi     TVM's runtime for the Python versions listed in the manifest (no compiler)

Per layer configuration -- each distinct Winograd-eligible conv (+ epilogue) of the pack's models, at each
batch and dtype -- the library holds: for each tile ``m`` of :data:`TILES` the default CUDA schedule and
``samples`` seeded samples of every design space (SIMT; tensor-core spaces for fp16), and our direct
PrimFunc under the default CUDA schedule a compile gives it (DLight), the baseline and the ``direct``
candidate.  Every kernel passed TVM's GPU verification for the target before it is packed.

The reference.  A full float64 reference of VGG-16's conv1_2 at batch 32 is 118 GFLOP and 411 MB, too
much to carry or to recompute on the GPU host in minutes.  ``run.py`` regenerates the inputs from the
seed (checked against their sha256), computes the float64 error model of a few windows of whole tiles
per layer (:mod:`tvm_winograd.windows`) with the stage dtypes the manifest gives per candidate, and
judges each kernel's output there with :func:`tvm_winograd.accuracy.assess`.

``tvm-winograd gpu-import report.json`` (:mod:`tvm_winograd.tune.gpu_import`) turns the measured kernels
into MetaSchedule tuning records and per-layer algorithm choices that ``compile`` applies.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi

from ._version import __version__
from .accuracy import Precision
from .compute import Epilogue, direct_func, target_config, winograd_func
from .cuda.build import build_cuda, export_cuda, target_sm
from .cuda.check import apply_postprocs_keep_pre_tensorize, design_spaces, sample_space
from .cuda.driver_stub import ensure_cuda_runtime
from .cuda.verify import verify_gpu
from .frontend import load_model
from .gpu_pack_run import file_sha256
from .lowering import build_tir
from .relax_pass import conv_workloads
from .schedule.cuda import cuda_default_schedule, schedule_cuda_default
from .schedule.cuda.context import postprocs_for
from .targets import is_cuda, resolve_target
from .tune.database import trace_to_json
from .workload import Conv2dSpec

__all__ = ["PACK_FORMAT", "PACK_VERSION", "TILES", "MAX_PACK_BYTES", "PackLayer", "pack_layers", "build_pack",
           "RUNNER_MODULE"]

logger = logging.getLogger(__name__)

PACK_FORMAT = "tvm-winograd-gpu-pack"
PACK_VERSION = 1
#: The Winograd tiles packed per layer: F(2,3) and F(4,3) (fp16 storage stops at alpha 6, F(4,3)).
TILES = (2, 4)
#: The pack must fit a small transfer.
MAX_PACK_BYTES = 60 * 2**20
DEFAULT_MODELS = ("resnet18", "vgg16")
DEFAULT_BATCHES = (1, 32)
DEFAULT_DTYPES = ("float32", "float16")
#: Draws per requested sample before a space is given up.  On the large fp16 layers only 5-27 % of the
#: tensor-core spaces' draws pass the postprocessors (VerifyGPUCode: shared memory); with cuda-check's 4
#: draws, 38 of the default pack's 136 tensor-core spaces had no sample.  A draw costs ~0.1 s.
DRAWS_PER_SAMPLE = 48
#: The schedules' traces (for gpu-import), by layer id and kernel symbol: gzipped JSON.
TRACES_FILE = "traces.json.gz"
#: The standalone runner copied into every pack as run.py.
RUNNER_MODULE = Path(__file__).with_name("gpu_pack_run.py")


@dataclass(frozen=True)
class PackLayer:
    """One layer configuration of the pack: a conv (+ epilogue) at one batch and dtype."""

    spec: Conv2dSpec
    epilogue: Epilogue
    sources: tuple[str, ...]  # "model:layer" names it stands for

    @property
    def id(self) -> str:
        return f"{self.spec.key()}_{self.epilogue.tag()}"


def pack_layers(target: object, models: Sequence[str] = DEFAULT_MODELS, batches: Sequence[int] = DEFAULT_BATCHES,
                dtypes: Sequence[str] = DEFAULT_DTYPES, select: Callable[[PackLayer], bool] | None = None
                ) -> list[PackLayer]:
    """The distinct Winograd-eligible convs (spec + epilogue, as the Relax pass lowers them for ``target``) of
    ``models``, each at every batch and dtype; ``select`` keeps a subset."""
    tgt = resolve_target(target)
    distinct: dict[tuple, tuple[Conv2dSpec, Epilogue, list[str]]] = {}
    for name in models:
        mod, _ = load_model(name)
        for work in conv_workloads(mod, tgt, algo="winograd"):
            if work.report.algorithm != "winograd":
                continue
            entry = distinct.setdefault((work.spec.key(), work.epilogue), (work.spec, work.epilogue, []))
            entry[2].append(f"{name}:{work.report.name}")
    layers = [PackLayer(dataclasses.replace(spec, batch=batch, dtype=dtype, out_dtype=dtype), ep, tuple(names))
              for dtype in dtypes for batch in batches for spec, ep, names in distinct.values()]
    return [layer for layer in layers if select is None or select(layer)]


# --------------------------------------------------------------------------------------------------
# Kernels of one layer
# --------------------------------------------------------------------------------------------------

@dataclass
class PackedKernel:
    """One function of a layer's library and what ``gpu-import`` needs to make a record of it."""

    symbol: str
    algorithm: str  # "winograd" | "direct"
    m: int | None
    space: str  # "default", a design space's name, or "dlight" (the direct baseline)
    seed: int | None
    trace: list | None  # the schedule's trace (JSON), None for the DLight direct schedule
    func: tvm.tirx.PrimFunc = dataclasses.field(repr=False)

    def manifest(self) -> dict:
        params = self.func.params
        return {"symbol": self.symbol, "algorithm": self.algorithm, "m": self.m, "space": self.space,
                "seed": self.seed, "trace": self.trace,
                "args": [{"shape": [int(d) for d in p.shape], "dtype": str(p.dtype)} for p in params]}


def _sampled(func: tvm.tirx.PrimFunc, target, samples: int, seed: int) -> list[tuple[str, int, tvm.s_tir.Schedule]]:
    """``samples`` seeded samples of each design space of ``func``, through the postprocessors (as the
    search draws them); a rejected draw is replaced, up to :data:`DRAWS_PER_SAMPLE` per sample."""
    mod = tvm.IRModule({"main": func})
    postprocs = postprocs_for(target, mod)
    out = []
    for si, (name, space) in enumerate(design_spaces(func, target)):
        kept = 0
        for draw in range(samples * DRAWS_PER_SAMPLE):
            if kept >= samples:
                break
            draw_seed = 1 + seed * 1_000_003 + si * 1_009 + draw
            sch = sample_space(space, mod, draw_seed)
            rejected, _ = apply_postprocs_keep_pre_tensorize(sch, target, postprocs)
            if rejected is None and verify_gpu(sch, target):
                out.append((name, draw_seed, sch))
                kept += 1
        if kept < samples:
            logger.warning("only %d of %d samples of the %s space passed the postprocessors", kept, samples, name)
    return out


def layer_kernels(layer: PackLayer, target, samples: int, seed: int = 0) -> list[PackedKernel]:
    """Every kernel packed for ``layer`` (see the module docstring), each verified for ``target``'s limits."""
    spec, ep = layer.spec, layer.epilogue
    kernels: list[PackedKernel] = []
    for m in TILES:
        if m > min(spec.out_height, spec.out_width):
            continue
        func = winograd_func(spec, target_config(spec, m, "cuda"), ep)
        default = cuda_default_schedule(func, target)
        kernels.append(PackedKernel(f"winograd_m{m}_default", "winograd", m, "default", None,
                                    trace_to_json(default.trace), default.mod["main"]))
        for name, draw_seed, sch in _sampled(func, target, samples, seed):
            kernels.append(PackedKernel(f"winograd_m{m}_{name}_s{draw_seed}", "winograd", m, name, draw_seed,
                                        trace_to_json(sch.trace), sch.mod["main"]))
    direct = schedule_cuda_default(direct_func(spec, ep), target)
    if not verify_gpu(tvm.s_tir.Schedule(direct), target):
        raise RuntimeError(f"{layer.id}: the default CUDA schedule of the direct conv fails GPU verification")
    kernels.append(PackedKernel("direct_dlight", "direct", None, "dlight", None, None, direct))
    return kernels


def _library(kernels: Sequence[PackedKernel], target, path: Path) -> list:
    """One CUDA library holding every kernel under its own symbol; its images (a cubin for the arch)."""
    mod = tvm.IRModule({k.symbol: k.func.with_attr("global_symbol", k.symbol) for k in kernels})
    built = build_cuda(mod, target)
    return export_cuda(built.module, path, built.arch)


# --------------------------------------------------------------------------------------------------
# Inputs and the reference of a few windows
# --------------------------------------------------------------------------------------------------

def input_arrays(spec: Conv2dSpec, epilogue: Epilogue) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of the inputs in the order run.py draws them from one generator:
    x, w, then bias and residual when the epilogue has them (standard normal, rounded to the dtype)."""
    arrays = [("x", spec.input_shape, spec.dtype), ("w", spec.weight_shape, spec.dtype)]
    if epilogue.bias:
        arrays.append(("bias", (spec.out_channels,), spec.dtype))
    if epilogue.residual:
        arrays.append(("residual", spec.output_shape, spec.out_dtype))
    return arrays


def make_inputs(spec: Conv2dSpec, epilogue: Epilogue, seed: int) -> dict[str, np.ndarray]:
    """The inputs of :func:`input_arrays`, drawn as run.py draws them."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape, dtype in input_arrays(spec, epilogue)}


def candidate_precisions(spec: Conv2dSpec) -> dict[str, dict]:
    """Per candidate algorithm (``direct``, ``winograd_m<m>``) its ``m`` and the stage dtypes of the
    function a compile builds for CUDA (:class:`~tvm_winograd.accuracy.Precision` fields): what run.py's
    reference windows (:func:`tvm_winograd.windows.window_models`) are modelled with."""
    out = {"direct": {"m": None, "precision": dataclasses.asdict(Precision(out_dtype=spec.out_dtype))}}
    for m in TILES:
        config = target_config(spec, m, "cuda")
        out[f"winograd_m{m}"] = {"m": m, "precision": dataclasses.asdict(Precision(
            acc_dtype=config.acc_dtype, pack_dtype=config.resolved_pack_dtype(spec), out_dtype=spec.out_dtype,
            separable=config.separable))}
    return out


# --------------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------------

#: The seed of the whole models' input (:meth:`tvm_winograd.models.Net.input_feed`).
MODEL_INPUT_SEED = 1


def _weight_recipe(names: Sequence[str], params: dict, net) -> list[dict]:
    """For each of the library's parameters (in ``main_transform_params``' order) the built-in model's
    weight it is -- ``(layer, weight)`` of :class:`~tvm_winograd.models.Net` -- with the permutation of its
    axes and the shape it takes (TVM's ONNX importer transposes a Gemm weight and makes its bias a row; on
    CPUs conv weights are HWIO), so run.py
    regenerates the weights from the model's seed instead of carrying them (VGG-16's are 553 MB)."""
    import itertools

    weights = [(layer.output, key, array) for layer in net.layers for key, array in layer.weights.items()]
    recipe = []
    for name in names:
        value = params[name].numpy()
        match = next(((out, key, list(axes)) for out, key, array in weights if array.size == value.size
                      for axes in itertools.permutations(range(array.ndim))
                      if np.array_equal(array.transpose(axes).reshape(value.shape), value)), None)
        if match is None:
            raise RuntimeError(f"parameter {name} {value.dtype}{list(value.shape)} is none of the model's weights: "
                               "the pack cannot regenerate it")
        recipe.append({"param": name, "layer": match[0], "weight": match[1], "axes": match[2],
                       "shape": list(value.shape), "sha256": hashlib.sha256(value.tobytes()).hexdigest()})
    return recipe


def pack_model(name: str, target, out: Path, scratch: Path, algo: str = "auto") -> dict:
    """Compile built-in model ``name`` for ``target`` with separate params into ``out/models`` (untuned:
    the heuristic's choices, or ``algo``), the recipe that regenerates its weights, and the CPU reference of its
    output on the seeded input (TVM's direct convolution on llvm) with the derived tolerance of both."""
    from .accuracy import model_tolerance
    from .export import compile_model, export_library
    from .models import build_net
    from .params import params_path_for
    from .runtime import check_library

    mod, info = load_model(name)
    net = build_net(name)
    (out / "models").mkdir(parents=True, exist_ok=True)
    ex, report = compile_model(mod, target, scratch / "schedules", algo=algo, params="separate")
    library = export_library(ex, out / "models" / f"{name}.so")
    record = check_library(library)["params"]
    params_file = params_path_for(library)
    recipe = _weight_recipe(record["names"], tvm.runtime.load_param_dict_from_file(str(params_file)), net)
    params_file.unlink()  # regenerated on the GPU host from the seed
    feed = net.input_feed(MODEL_INPUT_SEED)
    ref_ex, ref_report = compile_model(mod, "llvm", scratch / "schedules", algo="direct")
    reference = np.asarray(tvm.runtime.vm.VirtualMachine(ref_ex, tvm.cpu())["main"](
        tvm.runtime.tensor(feed["input"])).numpy(), dtype=np.float32)
    np.save(out / "models" / f"{name}.reference.npy", reference)

    def convs(rows):  # (m, r, C r^2 / groups) per conv; weights OIHW on CUDA, HWIO after the CPU's NHWC
        out = []
        for r in rows:
            kh, kw = (int(v) for v in r.kernel.split("x"))
            ws = tuple(int(v) for v in r.weight_shape)
            fan_in = int(np.prod(ws)) // (ws[0] if ws[2:] == (kh, kw) else ws[3])
            out.append((r.m if r.algorithm == "winograd" else None, kh, fan_in))
        return out

    scale = float(np.abs(reference).max())
    return {"name": name, "library": f"models/{name}.so", "reference": f"models/{name}.reference.npy",
            "input": {"name": "input", "shape": list(net.input_shape), "dtype": "float32", "seed": MODEL_INPUT_SEED,
                      "sha256": hashlib.sha256(feed["input"].tobytes()).hexdigest()},
            "weights": {"model": name, "seed": 0, "params": recipe},
            "tolerance": model_tolerance(convs(report), scale) + model_tolerance(convs(ref_report), scale),
            "winograd_layers": sum(r.algorithm == "winograd" for r in report), "conv_layers": len(report)}


# --------------------------------------------------------------------------------------------------
# The pack
# --------------------------------------------------------------------------------------------------

def _math_modules() -> list[Path]:
    """windows.py (the reference windows and, through accuracy.py, the check), models.py (the built-in
    models' weights) and every module of this package they import, transitively (numpy-only)."""
    package = Path(__file__).parent
    todo, seen = ["windows", "models"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo.extend([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("tvm", "tvm_ffi") for a in node.names):
                raise RuntimeError(f"{name}.py imports TVM: the GPU pack's check must stay numpy-only")
    return [package / f"{name}.py" for name in sorted(seen)]


_RUNTIME_PROBE = """
import json, os, sys
os.environ["TVM_USE_RUNTIME_LIB"] = "1"
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine  # noqa: F401
dev = tvm.cpu(0)
lib = tvm.runtime.load_module(sys.argv[1])
args = [tvm.runtime.tensor(np.ones(64, "float32"), dev), tvm.runtime.empty((64,), "float32", dev)]
lib.time_evaluator("double", dev, number=1, repeat=2)(*args)
args[-1].numpy()
tvm.runtime.enabled("cuda")
print(json.dumps(sorted({os.path.realpath(m.__file__) for n, m in list(sys.modules.items())
                         if n.split(".")[0] in sys.argv[2].split(",") and getattr(m, "__file__", None)})))
"""
#: What run.py needs besides numpy (checked: ``import tvm`` with TVM_USE_RUNTIME_LIB=1 and only these on
#: the path, no site-packages); the optional imports tvm_ffi tries (torch, ml_dtypes) are left out.
_RUNTIME_PACKAGES = ("tvm", "tvm_ffi", "typing_extensions")


def _add_ffi_extension(directory: Path, version: str) -> bool:
    """Add tvm_ffi's extension module for Python ``version`` (e.g. ``"3.12"``) to ``directory``, from the
    wheel of the same tvm_ffi release (``pip download``: the package index is needed here, at build time).
    Python picks the extension of its own version, so several sit side by side; the rest of tvm_ffi and
    TVM's runtime are the same for every version.  ``False`` (with a warning) when it cannot be fetched."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        fetch = subprocess.run([sys.executable, "-m", "pip", "download", f"apache-tvm-ffi=={tvm_ffi.__version__}",
                                "--python-version", version, "--only-binary=:all:", "--no-deps", "--quiet",
                                "-d", tmp], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if fetch.returncode != 0 or not wheels:
            logger.warning("tvm_ffi %s for Python %s could not be fetched (%s): the pack's runtime serves the "
                           "other versions only", tvm_ffi.__version__, version,
                           (fetch.stderr.strip().splitlines() or ["no wheel"])[-1])
            return False
        tag = "cpython-" + version.replace(".", "")
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = [n for n in wheel.namelist() if n.startswith("tvm_ffi/core.") and tag in n]
            if not names:
                logger.warning("the tvm_ffi wheel for Python %s holds no %s extension", version, tag)
                return False
            (directory / Path(names[0]).name).write_bytes(wheel.read(names[0]))
    return True


def _bundle_runtime(out: Path, extra_pythons: Sequence[str] = ()) -> dict:
    """Copy into ``out/lib`` what ``run.py`` needs of TVM for this Python: the modules of
    :data:`_RUNTIME_PACKAGES` a runtime-only process loads (found by running one: loading a library,
    timing it, asking for CUDA), TVM's runtime libraries (``libtvm_runtime*.so``, not the 250 MB
    compiler) and tvm_ffi's.  ``run.py`` puts it first on ``sys.path`` when the GPU host's Python has the same
    version (``tvm_ffi``'s extension is built per version: ``extra_pythons`` adds those of other versions,
    :func:`_add_ffi_extension`); otherwise it uses an installed TVM."""
    import subprocess
    import sys
    import tempfile

    from tvm import te

    site = Path(tvm.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        a = te.placeholder((64,), name="a")
        double = te.create_prim_func([a, te.compute((64,), lambda i: a[i] * 2, name="b")])
        library = Path(tmp) / "double.so"
        build_tir(tvm.IRModule({"double": double.with_attr("global_symbol", "double")}),
                  "llvm").export_library(str(library))
        probe = subprocess.run([sys.executable, "-c", _RUNTIME_PROBE, str(library), ",".join(_RUNTIME_PACKAGES)],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    if probe.returncode != 0:
        raise RuntimeError(f"the runtime-only probe failed: {probe.stderr.strip().splitlines()[-1:]}")
    files = [Path(f) for f in json.loads(probe.stdout.strip().splitlines()[-1])]
    tvm_lib, ffi_lib = Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent / "lib"
    files += sorted(tvm_lib.glob("libtvm_runtime*.so")) + sorted(ffi_lib.glob("*.so"))
    for file in files:
        target = out / "lib" / file.resolve().relative_to(site)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    pythons = [f"{sys.version_info[0]}.{sys.version_info[1]}"]
    for version in extra_pythons:
        if version not in pythons and _add_ffi_extension(out / "lib" / "tvm_ffi", version):
            pythons.append(version)
    return {"pythons": pythons, "tvm": tvm.__version__,
            "tvm_ffi": tvm_ffi.__version__, "files": len(files)}


def _copy_runtime_files(out: Path) -> None:
    shutil.copyfile(RUNNER_MODULE, out / "run.py")
    lib = out / "lib" / "twmath"
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "__init__.py").write_text('"""numpy-only modules of tvm_winograd, copied by gpu-pack for run.py."""\n')
    for path in _math_modules():
        shutil.copyfile(path, lib / path.name)


def build_pack(out: str | Path, target: object = "sm_90", *, samples: int = 1, seed: int = 0,
               models: Sequence[str] = DEFAULT_MODELS, batches: Sequence[int] = DEFAULT_BATCHES,
               dtypes: Sequence[str] = DEFAULT_DTYPES, select: Callable[[PackLayer], bool] | None = None,
               whole_models: bool = True, bundle_runtime: bool = True, extra_pythons: Sequence[str] = (),
               progress: Callable[[str], None] | None = None) -> dict:
    """Build the GPU pack for ``target`` in ``out`` (created; it must be empty or absent); returns the manifest.

    Raises ``ValueError`` for a non-CUDA target, a non-empty ``out``, ``samples`` < 0 or a pack over
    :data:`MAX_PACK_BYTES`; :class:`~tvm_winograd.cuda.build.SourceOnlyModuleError` where nvcc is missing.
    """
    tgt = resolve_target(target)
    if not is_cuda(tgt):
        raise ValueError(f"gpu-pack needs a CUDA target (sm_80, sm_86, sm_89, sm_90), not {tgt.kind.name!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise ValueError(f"samples {samples!r} must be a non-negative integer")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {str(out)!r} is not empty")
    ensure_cuda_runtime()
    arch = target_sm(tgt)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    layers = pack_layers(tgt, models, batches, dtypes, select)
    if not layers:
        raise ValueError("no layer selected for the pack")
    entries = []
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        kernels = layer_kernels(layer, tgt, samples, seed)
        images = _library(kernels, tgt, out / "layers" / f"{layer.id}.so")
        data = make_inputs(layer.spec, layer.epilogue, seed)
        entries.append({
            "id": layer.id, "key": layer.spec.key(), "sources": list(layer.sources),
            "spec": _spec_json(layer.spec), "epilogue": dataclasses.asdict(layer.epilogue),
            "flops": int(layer.spec.flops), "library": f"layers/{layer.id}.so",
            "cubin": [f"{img.kind} sm_{img.sm}" for img in images],
            "inputs": {"seed": seed, "arrays": [{"name": n, "shape": list(s), "dtype": d,
                                                 "sha256": hashlib.sha256(data[n].tobytes()).hexdigest()}
                                                for n, s, d in input_arrays(layer.spec, layer.epilogue)]},
            "candidates": candidate_precisions(layer.spec),
            "kernels": [k.manifest() for k in kernels],
        })
        if progress is not None:
            progress(f"[{i + 1}/{len(layers)}] {layer.id}: {len(kernels)} kernels in {time.perf_counter() - t0:.1f} s")
    model_entries = []
    if whole_models:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            for name in models:
                t0 = time.perf_counter()
                model_entries.append(pack_model(name, tgt, out, Path(scratch)))
                if progress is not None:
                    progress(f"model {name}: separate params, {model_entries[-1]['winograd_layers']} Winograd layers, "
                             f"{time.perf_counter() - t0:.1f} s")
    _copy_runtime_files(out)
    traces = {e["id"]: {k["symbol"]: k.pop("trace") for k in e["kernels"]} for e in entries}
    with gzip.open(out / TRACES_FILE, "wt") as f:  # a trace is ~20 kB of JSON that compresses ~10x
        json.dump(traces, f, separators=(",", ":"))
    runtime = _bundle_runtime(out, extra_pythons) if bundle_runtime else None
    manifest = {"format": PACK_FORMAT, "version": PACK_VERSION, "package_version": __version__,
                "tvm_version": tvm.__version__, "numpy_version": np.__version__, "arch": arch,
                "target": json.loads(str(tgt)), "samples": samples, "seed": seed,
                "tiles": list(TILES), "runtime": runtime, "built_s": round(time.perf_counter() - start, 1),
                "layers": entries, "models": model_entries}
    manifest["files"] = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if size > MAX_PACK_BYTES:
        raise ValueError(f"the pack is {size / 2**20:.1f} MiB, over the {MAX_PACK_BYTES / 2**20:.0f} MiB limit: "
                         "fewer samples or layers")
    return manifest


def _spec_json(spec: Conv2dSpec) -> dict:
    out = dataclasses.asdict(spec)
    out.update(input_shape=list(spec.input_shape), weight_shape=list(spec.weight_shape),
               output_shape=list(spec.output_shape))
    return out
