"""The competitors of every benchmark, built from *recipes*: plain dicts naming files, so the same
competitor can be built in this process or in a worker process of its own (``--isolate``).

Recipe kinds (every recipe has ``name``, ``kind``, ``threads``; paths are ``.onnx``, ``.so``, ``.npz``):

- ``tvm_vm``: a library exported by ``tvm-winograd compile`` (``library``), its inputs (``inputs``),
  run by the runtime-only loader;
- ``tvm_func``: a single compiled PrimFunc (``library``, positional ``args`` npz, ``out_shape``,
  ``out_dtype``): one layer;
- ``onnxruntime``: ``onnx``, ``inputs``, ``spin`` (the intra-op pool spinning or not; both are measured
  and the faster is reported: they share the group ``onnxruntime``);
- ``openvino``: ``onnx``, ``inputs``; CPU plugin, ``PERFORMANCE_HINT=LATENCY``,
  ``INFERENCE_NUM_THREADS=threads``, ``INFERENCE_PRECISION_HINT=f32`` (the optional ``openvino`` package);
- ``torch_conv``: ``args`` (x NCHW, w OIHW), ``padding``, ``channels_last``: ``torch.nn.functional.conv2d``,
  eager (its layouts share the group ``torch``: the faster is reported);
- ``torch_builtin``: a built-in model (``model``, ``batch``, ``image_size``) as a PyTorch module, eager.

Every competitor uses ``threads`` threads, TVM's pool included.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from .harness import Competitor, Timing, time_alternating

__all__ = ["build_competitor", "measure", "openvino_available", "conv_onnx", "save_npz", "load_npz",
           "peer_recipes"]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **arrays)
    return str(path)


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def conv_onnx(x_shape: tuple[int, ...], w: np.ndarray, padding: int):
    """A one-Conv ONNX model (NCHW input ``x``, constant OIHW weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, _, h, wd = x_shape
    k, _, kh, kw = w.shape
    oh, ow = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[padding] * 4, kernel_shape=[kh, kw])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, k, oh, ow])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def peer_recipes(onnx_path: str, inputs_npz: str, threads: int, *, torch: dict | None = None,
                 skip: frozenset[str] = frozenset()) -> list[dict]:
    """onnxruntime (spinning on and off), OpenVINO (when installed) and PyTorch (``torch`` recipe fields)
    on one model; names in ``skip`` are left out."""
    out = []
    if "onnxruntime" not in skip:
        out += [{"name": f"onnxruntime[spin={int(spin)}]", "kind": "onnxruntime", "onnx": onnx_path,
                 "inputs": inputs_npz, "threads": threads, "spin": spin} for spin in (True, False)]
    if "openvino" not in skip and openvino_available():
        out.append({"name": "openvino", "kind": "openvino", "onnx": onnx_path, "inputs": inputs_npz,
                    "threads": threads})
    if "torch" not in skip and torch is not None and importlib.util.find_spec("torch") is not None:
        out.append({"name": "torch", "threads": threads, **torch})
    return out


# ----------------------------------------------------------------------------------------------
# Builders: recipe -> (run, output)
# ----------------------------------------------------------------------------------------------

def _tvm_vm(recipe: dict):
    import tvm

    from ..runtime import load_vm

    vm, dev = load_vm(recipe["library"], "cpu", threads=recipe["threads"])  # what `tvm-winograd run` loads
    feed = load_npz(recipe["inputs"])
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in feed.values()]
    main = vm["main"]

    def output() -> np.ndarray:
        out = main(*args)
        return (out[0] if not hasattr(out, "numpy") else out).numpy()

    return (lambda: main(*args)), output, f"TVM runtime, {recipe['threads']} threads"


def _tvm_func(recipe: dict):
    from ..threads import configure_threads

    configure_threads(recipe["threads"])
    import tvm

    dev = tvm.cpu(0)
    fn = tvm.runtime.load_module(recipe["library"])["main"]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in load_npz(recipe["args"]).values()]
    out = tvm.runtime.empty(tuple(recipe["out_shape"]), recipe.get("out_dtype", "float32"), dev)

    def output() -> np.ndarray:
        fn(*args, out)
        return out.numpy()

    return (lambda: fn(*args, out)), output, f"TVM runtime, {recipe['threads']} threads"


def _onnxruntime(recipe: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = recipe["threads"]
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if recipe["spin"] else "0")
    sess = ort.InferenceSession(recipe["onnx"], opts, providers=["CPUExecutionProvider"])
    feed = load_npz(recipe["inputs"])
    return ((lambda: sess.run(None, feed)), (lambda: sess.run(None, feed)[0]),
            f"onnxruntime {ort.__version__}, {recipe['threads']} intra-op threads, spinning {'on' if recipe['spin'] else 'off'}")


def _openvino(recipe: dict):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(recipe["onnx"], "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(recipe["threads"]),
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = load_npz(recipe["inputs"])
    arrays = [feed[p.get_any_name()] if p.get_any_name() in feed else list(feed.values())[i]
              for i, p in enumerate(compiled.inputs)]

    def output() -> np.ndarray:
        request.infer(arrays)
        return np.array(request.get_output_tensor(0).data)

    return ((lambda: request.infer(arrays)), output,
            f"OpenVINO {ov.__version__}, CPU, LATENCY, {recipe['threads']} threads, f32")


def _torch_conv(recipe: dict):
    import torch

    torch.set_num_threads(recipe["threads"])
    args = load_npz(recipe["args"])
    x, w = torch.from_numpy(args["x"]), torch.from_numpy(args["w"])
    if recipe.get("channels_last"):
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, padding=recipe["padding"])

    return run, (lambda: run().contiguous().numpy()), \
        f"PyTorch {torch.__version__} eager (oneDNN), {recipe['threads']} threads" \
        + (", channels_last" if recipe.get("channels_last") else "")


def _torch_builtin(recipe: dict):
    import torch

    from ..models import build_net, to_torch

    torch.set_num_threads(recipe["threads"])
    module = to_torch(build_net(recipe["model"], batch=recipe["batch"], image_size=recipe["image_size"]))
    x = torch.from_numpy(next(iter(load_npz(recipe["inputs"]).values())))

    def run():
        with torch.no_grad():
            return module(x)

    return run, (lambda: run().numpy()), f"PyTorch {torch.__version__} eager (oneDNN), {recipe['threads']} threads"


_BUILDERS: dict[str, Callable] = {"tvm_vm": _tvm_vm, "tvm_func": _tvm_func, "onnxruntime": _onnxruntime,
                                  "openvino": _openvino, "torch_conv": _torch_conv, "torch_builtin": _torch_builtin}


#: Competitor kinds measured in several configurations, of which the faster is reported.
_GROUPS = {"onnxruntime": "onnxruntime", "torch_conv": "torch", "torch_builtin": "torch"}


def _group(recipe: dict) -> str | None:
    return _GROUPS.get(recipe["kind"])


def build_competitor(recipe: dict) -> Competitor:
    """The :class:`Competitor` a recipe describes (built in this process)."""
    if recipe["kind"] not in _BUILDERS:
        raise ValueError(f"unknown competitor kind {recipe['kind']!r}: one of {', '.join(_BUILDERS)}")
    run, output, config = _BUILDERS[recipe["kind"]](recipe)
    return Competitor(recipe["name"], run, config, _group(recipe), output)


def check_outputs(competitors: list[Competitor], reference: np.ndarray, tolerance: float, what: str,
                  own: dict[str, float] | None = None) -> None:
    """Every competitor's first output equals ``reference`` within ``tolerance`` x max|reference|
    (``own[name]`` instead, for a competitor that computes with less precision on purpose)."""
    scale = max(float(np.abs(reference).max()), 1e-30)
    for comp in competitors:
        got = np.asarray(comp.output(), dtype=np.float64).reshape(reference.shape)
        err = float(np.abs(got - reference).max()) / scale
        limit = (own or {}).get(comp.name, tolerance)
        if not err <= limit:
            raise RuntimeError(f"{what}: {comp.name} differs from the reference by {err:.2e} (relative to max|y|, "
                               f"tolerance {limit:.0e})")


def measure(recipes: list[dict], rounds: int, *, isolate: bool = False, reference: np.ndarray | None = None,
            tolerance: float = 1e-3, what: str = "", **timing) -> dict[str, Timing]:
    """Time the recipes' competitors (:func:`~.harness.time_alternating`), all in this process or
    (``isolate``) each block in a worker process of its own; every output is first compared with
    ``reference`` (in this process), within a recipe's own ``"tolerance"`` where it has one."""
    if not isolate or reference is not None:
        competitors = [build_competitor(r) for r in recipes]
        if reference is not None:
            own = {r["name"]: r["tolerance"] for r in recipes if "tolerance" in r}
            check_outputs(competitors, reference, tolerance, what, own)
        if not isolate:
            return time_alternating(competitors, rounds, **timing)
        del competitors
    samples: dict[str, list[float]] = {r["name"]: [] for r in recipes}
    info: dict[str, dict] = {}
    for _ in range(rounds):
        for recipe in recipes:
            result = _run_worker(recipe, timing)
            samples[recipe["name"]] += result["samples_ms"]
            info[recipe["name"]] = result
    return {r["name"]: Timing(r["name"], samples[r["name"]], info[r["name"]]["calls_per_block"],
                              info[r["name"]]["config"] + " (own process)", _group(r)) for r in recipes}


def _run_worker(recipe: dict, timing: dict) -> dict:
    import json
    import subprocess
    import sys

    payload = json.dumps({"recipe": recipe, "timing": timing})
    proc = subprocess.run([sys.executable, "-m", "tvm_winograd.bench.worker", payload], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"worker for {recipe['name']} failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(payload: str) -> dict:
    """One block of one competitor, in this (fresh) process: what ``--isolate`` runs per round."""
    import json

    data = json.loads(payload)
    comp = build_competitor(data["recipe"])
    timing = time_alternating([comp], 1, **data.get("timing", {}))[comp.name]
    return {"samples_ms": timing.samples_ms, "calls_per_block": timing.calls_per_block, "config": comp.config}
