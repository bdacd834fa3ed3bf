#!/usr/bin/env python3
"""Run a tvm-winograd GPU pack on a GPU host: check and time every kernel; write report.json and report.md.

    python DIR/run.py                     # every layer of the pack
    python DIR/run.py --layers c64_h56    # the layers whose id contains this text (repeatable)

Needs the NVIDIA driver, Python with numpy, and TVM's runtime (``import tvm`` with TVM_USE_RUNTIME_LIB=1:
the compiler library is never loaded).  No network, no pip; PyTorch is used for the cuDNN column if it
is installed with CUDA.  For every kernel of every layer:

* numerics: its output on the GPU at a few windows of whole tiles, judged against their float64 error
  model (``lib/twmath/windows.py``; the project's assessment in ``accuracy.py``: worst-case bound and
  random-rounding model) -- this
  covers what CPU emulation cannot: fragment layouts, barriers, races, dynamic shared memory;
* time: the TVM runtime's ``time_evaluator`` (CUDA events), after a warm-up, the median of repeats;
* cuDNN: PyTorch's ``conv2d`` (+ bias, residual, ReLU as the layer has them) with
  ``cudnn.benchmark = True``, TF32 off for fp32, timed with CUDA events.

Exit status: 0 every kernel passed its check, 1 some failed, 2 no GPU, a damaged pack or bad arguments
(one line on stderr).  This file is copied into every pack by ``tvm-winograd gpu-pack``; it imports nothing
of tvm_winograd but the numpy-only modules the pack carries.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PACK_FORMAT = "tvm-winograd-gpu-pack"
PACK_VERSION = 1
REPORT_FORMAT = "tvm-winograd-gpu-report"


class PackError(ValueError):
    """The pack is damaged or of another format: one line."""


# --------------------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------------------

def use_bundled_runtime(pack: Path, manifest: dict) -> bool:
    """Put the pack's TVM runtime first on ``sys.path`` if it was bundled for this Python version (its
    ``tvm_ffi`` extension is built per version); else an installed TVM is used.  Returns whether it was."""
    runtime = manifest.get("runtime") or {}
    if f"{sys.version_info[0]}.{sys.version_info[1]}" not in runtime.get("pythons", []) or "tvm" in sys.modules:
        return False
    sys.path.insert(0, str(pack / "lib"))
    return True


class CudaDevice:
    """The GPU through TVM's runtime only."""

    def __init__(self) -> None:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # the runtime library only: the compiler is never loaded
        import tvm

        self.tvm = tvm
        self.dev = None

    def unavailable(self) -> str | None:
        """Why no GPU can run the pack here, or ``None``."""
        if not self.tvm.runtime.enabled("cuda"):
            return "TVM's CUDA runtime is not available (no NVIDIA driver: libcuda.so.1 not found)"
        dev = self.tvm.cuda(0)
        if not dev.exist:
            return "no CUDA device is visible"
        self.dev = dev
        return None

    def info(self) -> dict:
        out = {"name": self.dev.device_name, "compute_version": self.dev.compute_version}
        if shutil.which("nvidia-smi"):
            query = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit"
            try:
                line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader", "-i", "0"],
                                      capture_output=True, text=True, timeout=20).stdout.strip()
                out.update(zip(query.split(","), (v.strip() for v in line.split(","))))
            except (OSError, subprocess.SubprocessError):
                pass
        return out

    def load(self, path: Path):
        return self.tvm.runtime.load_module(str(path))

    def put(self, array: np.ndarray):
        return self.tvm.runtime.tensor(array, self.dev)

    def empty(self, shape, dtype: str):
        return self.tvm.runtime.empty(tuple(shape), dtype, self.dev)

    def run(self, module, symbol: str, args) -> None:
        module[symbol](*args)
        self.dev.sync()

    def get(self, tensor) -> np.ndarray | None:
        return tensor.numpy()

    def vm(self, module):
        from tvm.runtime.vm import VirtualMachine

        return VirtualMachine(module, self.dev)

    def time(self, module, symbol: str, args, budget_s: float, max_repeat: int) -> list[float]:
        """Seconds per call: warm-up, then ``repeat`` timings (CUDA events) of ``number`` calls each."""
        probe = module.time_evaluator(symbol, self.dev, number=1, repeat=1)(*args).results[0]
        number = max(1, int(1e-3 / max(probe, 1e-7)))  # each timing >= ~1 ms
        repeat = int(min(max_repeat, max(3, budget_s / max(probe * number, 1e-7))))
        evaluator = module.time_evaluator(symbol, self.dev, number=number, repeat=repeat)
        return [float(t) for t in evaluator(*args).results]


# --------------------------------------------------------------------------------------------------
# The pack
# --------------------------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_pack(pack: Path) -> dict:
    """The manifest, after checking its format and the sha256 of every file it lists."""
    path = pack / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PackError(f"{path} cannot be read: {err}") from None
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") != PACK_VERSION:
        raise PackError(f"{path} is not a {PACK_FORMAT} version {PACK_VERSION} manifest")
    for name, digest in manifest.get("files", {}).items():
        file = pack / name
        if not file.is_file():
            raise PackError(f"the pack is incomplete: {name} is missing")
        if file_sha256(file) != digest:
            raise PackError(f"the pack is damaged: {name} does not match its sha256")
    for entry in manifest["layers"] + manifest.get("models", []):
        if entry["library"] not in manifest["files"]:
            raise PackError(f"the manifest names {entry['library']} but does not list it")
    return manifest


def make_inputs(entry: dict) -> tuple[dict[str, np.ndarray], bool]:
    """The layer's inputs from the pack's seed, and whether each matches the pack's sha256 (another numpy
    could draw other numbers: then the reference does not apply)."""
    rng = np.random.default_rng(entry["inputs"]["seed"])
    arrays, same = {}, True
    for a in entry["inputs"]["arrays"]:
        arrays[a["name"]] = rng.standard_normal(tuple(a["shape"])).astype(a["dtype"])
        same = same and hashlib.sha256(arrays[a["name"]].tobytes()).hexdigest() == a["sha256"]
    return arrays, same


def kernel_args(kernel: dict, data: dict[str, np.ndarray], put) -> list:
    """The inputs of one kernel on the device: x, then U (winograd: the float64 weight transform rounded to
    the kernel's pack dtype) or w (direct), then bias and residual as the layer has them.  ``put(key,
    make)`` uploads ``make()`` once per key: a layer's kernels share the device's copies (x is 411 MB for
    VGG-16's conv1_2 at batch 32)."""
    from twmath.reference import winograd_weight_transform

    specs = kernel["args"][:-1]
    if kernel["algorithm"] == "winograd":
        m, dtype = kernel["m"], specs[1]["dtype"]
        second = (f"u{m}.{dtype}", lambda: winograd_weight_transform(data["w"].astype(np.float64), m,
                                                                     "NCHW").astype(dtype))
    else:
        second = ("w", lambda: data["w"])
    keyed = [("x", lambda: data["x"]), second] + [(k, lambda k=k: data[k]) for k in ("bias", "residual") if k in data]
    args = [put(key, make) for key, make in keyed]
    for (key, _), arg, spec in zip(keyed, args, specs):
        if [int(d) for d in arg.shape] != spec["shape"] or str(arg.dtype) != spec["dtype"]:
            raise PackError(f"{kernel['symbol']}: input {key} is {arg.dtype}{list(arg.shape)}, the kernel takes "
                            f"{spec['dtype']}{spec['shape']}")
    return args


class References:
    """A layer's reference windows per candidate algorithm, computed once from the regenerated inputs
    (``lib/twmath/windows.py``: float64 error models of whole-tile windows, with the stage dtypes the
    manifest gives per candidate)."""

    def __init__(self, entry: dict, data: dict[str, np.ndarray]) -> None:
        from twmath.workload import spec_from_dict

        self.entry, self.data, self.spec = entry, data, spec_from_dict(entry["spec"])
        self.models: dict = {}

    def assess(self, got: np.ndarray, name: str) -> dict:
        """The verdict of the pack's check on ``got`` (the full output) for candidate ``name``."""
        from twmath.accuracy import Precision
        from twmath.accuracy import assess as assess_model
        from twmath.windows import window_models

        if name not in self.models:
            candidate, ep = self.entry["candidates"][name], self.entry["epilogue"]
            self.models[name] = window_models(self.data, self.spec, candidate["m"],
                                              Precision(**candidate["precision"]), relu=ep["relu"],
                                              activation=ep["activation"])
        index, model = self.models[name]
        verdict = assess_model(np.asarray(got).ravel()[index].astype(np.float64), model)  # index first: 411 MB outputs
        return {"ok": verdict.ok, "reason": verdict.reason, "worst": verdict.worst, "outputs": verdict.outputs,
                "max_relative_error": verdict.max_relative_error}


# --------------------------------------------------------------------------------------------------
# cuDNN through PyTorch
# --------------------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def time_cudnn(torch, entry: dict, data: dict[str, np.ndarray], budget_s: float, max_repeat: int) -> float:
    """Median seconds of PyTorch's conv2d (+ bias, residual, ReLU) on the layer, cudnn.benchmark on, TF32 off."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    spec, ep = entry["spec"], entry["epilogue"]
    t = {k: torch.from_numpy(v).cuda() for k, v in data.items()}
    pt, pl, pb, pr = spec["padding"]
    x = torch.nn.functional.pad(t["x"], (pl, pr, pt, pb)) if (pt, pl) != (pb, pr) else t["x"]
    padding = 0 if (pt, pl) != (pb, pr) else (pt, pl)

    def layer():
        y = torch.nn.functional.conv2d(x, t["w"], t.get("bias"), stride=tuple(spec["stride"]), padding=padding,
                                       dilation=tuple(spec["dilation"]), groups=spec["groups"])
        if "residual" in t:
            y = y + t["residual"]
        return torch.relu(y) if ep["relu"] else y

    with torch.no_grad():
        for _ in range(3):
            layer()
        torch.cuda.synchronize()
        times = []
        deadline = time.perf_counter() + budget_s
        while len(times) < max_repeat and (len(times) < 3 or time.perf_counter() < deadline):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            layer()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def run_layer(pack: Path, entry: dict, device, budget_s: float, max_repeat: int, torch, traces: dict) -> dict:
    """Check and time every kernel of one layer (``traces``: its kernels' schedule traces, by symbol)."""
    module = device.load(pack / entry["library"])
    data, same_inputs = make_inputs(entry)
    references = References(entry, data)
    out_spec = entry["kernels"][0]["args"][-1]
    uploaded: dict = {}

    def put(key, make):
        if key not in uploaded:
            uploaded[key] = device.put(make())
        return uploaded[key]

    rows = []
    for kernel in entry["kernels"]:
        row = {k: kernel[k] for k in ("symbol", "algorithm", "m", "space", "seed")}
        row["trace"] = traces.get(kernel["symbol"])  # for gpu-import
        try:
            args = kernel_args(kernel, data, put) + [device.empty(out_spec["shape"], out_spec["dtype"])]
            device.run(module, kernel["symbol"], args)
            got = device.get(args[-1])
            name = "direct" if kernel["algorithm"] == "direct" else f"winograd_m{kernel['m']}"
            if got is None:
                row["numerics"] = {"ok": None, "reason": "the device returned no output"}
            elif not same_inputs:
                row["numerics"] = {"ok": None, "reason": f"numpy {np.__version__} drew other inputs than the pack's"}
            else:
                row["numerics"] = references.assess(got, name)
            times = device.time(module, kernel["symbol"], args, budget_s, max_repeat)
            row.update(median_ms=float(np.median(times)) * 1e3, runs=len(times), times_ms=[t * 1e3 for t in times])
        except PackError:
            raise
        except Exception as err:  # noqa: BLE001 - a kernel that fails to launch is a failed kernel, not a crash
            text = str(err).strip().splitlines()
            row.update(numerics={"ok": False, "reason": f"failed to run: {text[-1] if text else type(err).__name__}"},
                       median_ms=None)
        rows.append(row)
    out = {k: entry[k] for k in ("id", "key", "spec", "epilogue", "flops", "sources")}
    out["kernels"] = rows
    if torch is not None:
        try:
            out["cudnn_ms"] = time_cudnn(torch, entry, data, budget_s, max_repeat) * 1e3
        except Exception as err:  # noqa: BLE001 - the comparison column is optional
            out["cudnn_error"] = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
    return out


def model_weights(entry: dict) -> list[np.ndarray]:
    """The library's parameters, regenerated from the built-in model's seed (``lib/twmath/models.py``), in
    the order ``main_transform_params`` takes them."""
    from twmath.models import build_net

    recipe = entry["weights"]
    net = build_net(recipe["model"], seed=recipe["seed"])
    weights = {(layer.output, key): array for layer in net.layers for key, array in layer.weights.items()}
    return [np.ascontiguousarray(weights[p["layer"], p["weight"]].transpose(p["axes"]).reshape(p["shape"]))
            for p in recipe["params"]]


def run_model(pack: Path, entry: dict, device, budget_s: float, max_repeat: int) -> dict:
    """A whole model with separate params: its weights regenerated, transformed once on the device
    (``main_transform_params``), its output on the seeded input against the CPU reference within the
    derived tolerance, and its time (``time_evaluator`` of ``main``)."""
    row = {k: entry[k] for k in ("name", "tolerance", "winograd_layers", "conv_layers")}
    try:
        vm = device.vm(device.load(pack / entry["library"]))
        spec = entry["input"]
        x = np.random.default_rng(spec["seed"]).standard_normal(tuple(spec["shape"]), dtype=spec["dtype"])
        raw = model_weights(entry)
        same_input = hashlib.sha256(x.tobytes()).hexdigest() == spec["sha256"] and all(
            hashlib.sha256(w.tobytes()).hexdigest() == p["sha256"] for w, p in zip(raw, entry["weights"]["params"]))
        weights = list(vm["main_transform_params"]([device.put(w) for w in raw]))
        args = [device.put(x)] + weights
        got = device.get(vm["main"](*args))
        reference = np.load(pack / entry["reference"]).astype(np.float64)
        if got is None or not same_input:
            row["check"] = {"ok": None, "reason": "no output" if got is None else
                            f"numpy {np.__version__} drew other inputs or weights than the pack's"}
        else:
            error = float(np.abs(np.asarray(got, dtype=np.float64) - reference).max())
            ok = error <= entry["tolerance"]
            row["check"] = {"ok": ok, "max_error": error,
                            "reason": "" if ok else f"max error {error:.3g} > tolerance {entry['tolerance']:.3g}",
                            "top1_same": bool(np.array_equal(np.argmax(got, -1), np.argmax(reference, -1)))}
        times = device.time(vm, "main", args, budget_s, max_repeat)  # a VM has time_evaluator as a module does
        row.update(median_ms=float(np.median(times)) * 1e3, runs=len(times))
    except Exception as err:  # noqa: BLE001 - a model that fails to load or run is a failed row
        text = str(err).strip().splitlines()
        row.update(check={"ok": False, "reason": f"failed: {text[-1] if text else type(err).__name__}"}, median_ms=None)
    return row


def run_pack(pack: Path, device, *, select: list[str] | None = None, budget_ms: float = 100.0,
             max_repeat: int = 50, use_torch: bool = True, progress=print) -> dict:
    """Check and time the pack on ``device``; the report (also written as report.json / report.md by main)."""
    start = time.perf_counter()
    manifest = verify_pack(pack)
    sys.path.insert(0, str(pack / "lib"))
    layers = [e for e in manifest["layers"] if not select or any(s in e["id"] for s in select)]
    if not layers and not any(not select or any(s in m["name"] for s in select) for m in manifest.get("models", [])):
        raise PackError(f"no layer of the pack matches {select}")
    torch = _torch() if use_torch else None
    with gzip.open(pack / "traces.json.gz", "rt") as f:
        traces = json.load(f)
    tvm = sys.modules.get("tvm")
    report = {"format": REPORT_FORMAT, "version": 1, "pack": {k: manifest[k] for k in (
        "arch", "target", "package_version", "tvm_version", "samples", "seed", "tiles")},
        "tvm": {"version": getattr(tvm, "__version__", None), "from": str(Path(getattr(tvm, "__file__", "")).parent)},
        "gpu": device.info(), "host": {"python": platform.python_version(), "numpy": np.__version__,
                                       "torch": getattr(torch, "__version__", None)},
        "layers": []}
    progress(f"GPU: {report['gpu'].get('name')} (driver {report['gpu'].get('driver_version', '?')}, SM clock "
             f"{report['gpu'].get('clocks.sm', '?')}); {len(layers)} layers, "
             f"{sum(len(e['kernels']) for e in layers)} kernels")
    for i, entry in enumerate(layers):
        t0 = time.perf_counter()
        row = run_layer(pack, entry, device, budget_ms / 1e3, max_repeat, torch, traces.get(entry["id"], {}))
        report["layers"].append(row)
        failed = sum(k["numerics"].get("ok") is False for k in row["kernels"])
        progress(f"[{i + 1}/{len(layers)}] {entry['id']}: {len(row['kernels'])} kernels, {failed} failed, "
                 f"{time.perf_counter() - t0:.1f} s (elapsed {time.perf_counter() - start:.0f} s)")
    report["models"] = []
    for entry in manifest.get("models", []):
        if select and not any(s in entry["name"] for s in select):
            continue
        t0 = time.perf_counter()
        row = run_model(pack, entry, device, budget_ms / 1e3, max_repeat)
        report["models"].append(row)
        progress(f"model {entry['name']}: {'ok' if row['check'].get('ok') else row['check'].get('reason')}, "
                 f"{_fmt(row.get('median_ms'))} ms, {time.perf_counter() - t0:.1f} s")
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    report["passed"] = (all(k["numerics"].get("ok") is not False for r in report["layers"] for k in r["kernels"])
                        and all(m["check"].get("ok") is not False for m in report["models"]))
    return report


def _fmt(ms) -> str:
    return "-" if ms is None else f"{ms:.3f}"


def report_markdown(report: dict) -> str:
    """One row per layer: the best of ours, our default, the direct baseline, cuDNN, and the checks."""
    gpu = report["gpu"]
    lines = [f"# GPU pack report: {gpu.get('name')} ({report['pack']['arch']}), "
             f"driver {gpu.get('driver_version', '?')}",
             "", f"elapsed {report['elapsed_s']} s; times are medians in ms; ratio = cuDNN / ours (> 1: ours faster)",
             "", "| layer | best of ours | ms | default F(m) ms | TVM direct ms | cuDNN ms | ratio | checks ok |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["layers"]:
        timed = [k for k in row["kernels"] if k.get("median_ms") is not None and k["numerics"].get("ok") is not False]
        best = min(timed, key=lambda k: k["median_ms"], default=None)
        defaults = [k["median_ms"] for k in timed if k["space"] == "default"]
        direct = next((k["median_ms"] for k in timed if k["algorithm"] == "direct"), None)
        ok = sum(k["numerics"].get("ok") is True for k in row["kernels"])
        cudnn = row.get("cudnn_ms")
        ratio = f"{cudnn / best['median_ms']:.2f}x" if cudnn and best else "-"
        name = "-" if best is None else f"{best['algorithm']} m={best['m']} {best['space']}"
        lines.append(f"| {row['key']} | {name} | {_fmt(best and best['median_ms'])} | "
                     f"{_fmt(min(defaults) if defaults else None)} | {_fmt(direct)} | {_fmt(cudnn)} | {ratio} | "
                     f"{ok}/{len(row['kernels'])} |")
    if report.get("models"):
        lines += ["", "| model | Winograd layers | ms | max error | tolerance | same top-1 | check |",
                  "|---|---|---|---|---|---|---|"]
        for row in report["models"]:
            check = row["check"]
            error = f"{check['max_error']:.3g}" if "max_error" in check else "-"
            verdict = "ok" if check.get("ok") else check.get("reason")
            lines.append(f"| {row['name']} | {row['winograd_layers']}/{row['conv_layers']} | "
                         f"{_fmt(row.get('median_ms'))} | {error} | {row['tolerance']:.3g} | "
                         f"{check.get('top1_same', '-')} | {verdict} |")
    lines += ["", f"overall: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, device=None) -> int:
    pack = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=pack, help="the pack directory (default: this file's)")
    parser.add_argument("--out", type=Path, default=None, help="where report.json/.md go (default: the pack)")
    parser.add_argument("--layers", action="append", metavar="TEXT", help="only layers whose id contains TEXT")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="timing budget per kernel (default 100)")
    parser.add_argument("--max-repeat", type=int, default=50)
    parser.add_argument("--no-torch", action="store_true", help="skip the cuDNN column")
    args = parser.parse_args(argv)
    try:
        manifest = verify_pack(args.pack)
        if device is None:
            use_bundled_runtime(args.pack, manifest)
            device = CudaDevice()
        reason = device.unavailable()
        if reason is not None:
            print(f"run.py: no GPU: {reason}; run the pack on a machine with an NVIDIA GPU", file=sys.stderr)
            return 2
        report = run_pack(args.pack, device, select=args.layers, budget_ms=args.budget_ms,
                          max_repeat=args.max_repeat, use_torch=not args.no_torch)
    except PackError as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"run.py: {err}: this host needs numpy and TVM's runtime (apache-tvm)", file=sys.stderr)
        return 2
    out = args.out or args.pack
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(report_markdown(report))
    print(report_markdown(report))
    print(f"wrote {out / 'report.json'} and report.md in {report['elapsed_s']} s")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
