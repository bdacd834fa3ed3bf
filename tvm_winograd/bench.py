"""Per-layer CPU benchmark: tuned Winograd (best algorithm by measurement) vs tuned TVM direct conv vs
PyTorch (oneDNN) vs onnxruntime (MLAS), side by side in one run.

For every layer, :func:`tvm_winograd.tune.tuner.tune_layer` tunes direct conv and Winograd F(m, 3) for each
candidate m with the same trial budget (resuming from ``tuning_logs/``), keeps the fastest ("ours") and
the tuned direct conv ("tvm direct").  Then the four competitors are timed in interleaved blocks
(A B C D A B C D ...), each block a call repeated enough to last ~20 ms, after a warm-up; the table
reports medians over ``--repeats`` blocks, with an idle gap after every block (:data:`BLOCK_GAP_S`) so
that no competitor's spinning thread pool steals the cores of the next.  Threads: 2 for everyone, each
in its best configuration (TVM's pool uses the target's cores; ``torch.set_num_threads(2)``;
onnxruntime ``intra_op_num_threads=2`` with spinning, its default: measured 1.6 vs 2.8 ms without on a
64-channel 56x56 layer).  Weights are constant: Winograd's weight transform is done ahead of time,
as onnxruntime/oneDNN pre-pack theirs.

Effective GFLOP/s = direct-convolution FLOPs / time (Winograd can exceed the FMA peak).

Example (the lead's run, ~35 min on 2 idle cores, see the report)::

    tvm-winograd bench --layout NHWC --layers 'vgg_conv2_2,vgg_conv3_2,vgg_conv4_2,resnet_*' \\
        --candidates direct,winograd_m2,winograd_m4 --trials 32 \\
        --out-md bench_layers.md --out-json bench_layers.json --png bench_layers.png

(``python scripts/bench_layers.py`` takes the same arguments.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: The benchmark's columns, in table and chart order.
COMPETITORS = ("ours", "tvm_direct", "torch", "onnxruntime")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``tvm-winograd bench`` and ``scripts/bench_layers.py``)."""
    from tvm_winograd.tune.tasks import BENCH_LAYERS

    p.add_argument("--layers", default=None,
                   help=f"comma-separated globs over: {', '.join(BENCH_LAYERS)} (default: all)")
    p.add_argument("--trials", type=int, default=64, help="trials per algorithm per layer (default 64)")
    p.add_argument("--batch", type=int, choices=(1, 8), default=1)
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NHWC",
                   help="our data layout (default NHWC: K-vectorized GEMM; NCHW vectorizes P, often not a multiple of 16)")
    p.add_argument("--repeats", type=int, default=10, help="timed blocks per competitor (>= 10 for the report)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--candidates", default=None, help="comma-separated subset, e.g. direct,winograd_m4")
    p.add_argument("--work-dir", default=None, help="tuning logs (default ./tuning_logs/<target>)")
    p.add_argument("--schedules-dir", default=None, help="best records + choices (default ./schedules/<target>)")
    p.add_argument("--out-md", default=None, help="write the markdown table here")
    p.add_argument("--out-json", dest="json_out", default=None, help="write the results as JSON here")
    p.add_argument("--png", default=None, help="write a bar chart here")
    p.add_argument("--json", dest="json_stdout", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-progress", action="store_true")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Competitors: each is a zero-argument callable running the layer once on fixed inputs.
# ----------------------------------------------------------------------------------------------

def _tvm_callable(func, target, inputs: list[np.ndarray], out_shape, out_dtype):
    import tvm

    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
    out = tvm.runtime.empty(out_shape, out_dtype, dev)
    fn = ex["main"]

    def result() -> np.ndarray:
        fn(*args, out)
        return out.numpy()

    return lambda: fn(*args, out), result


def _torch_callable(x: np.ndarray, w: np.ndarray, layout: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if layout == "NHWC":  # torch wants NCHW tensors; channels_last memory format is its NHWC
        xt = xt.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        wt = wt.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, padding=1)

    return run, (lambda: run().numpy() if layout == "NCHW" else run().permute(0, 2, 3, 1).numpy())


def _ort_callable(x: np.ndarray, w: np.ndarray, layout: str, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    k = w.shape[0]
    n, _, h, wd = x.shape
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, k, h, wd])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")  # its default; the gap isolates it
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x}

    def run():
        return sess.run(None, feed)[0]

    return run, (lambda: run() if layout == "NCHW" else run().transpose(0, 2, 3, 1))


#: Idle time after every timed block.  Thread pools keep spinning after a call (PyTorch's OpenMP
#: workers, TVM's pool): on 2 cores the spinning threads of one competitor steal the cores of the next
#: one.  Measured on a 128-channel 112x112 layer: our default schedule alone 10.2 ms, 18.9 ms when its
#: blocks follow PyTorch's, 8.4 ms when they follow onnxruntime's (which does not spin).
BLOCK_GAP_S = 0.25


def _time_interleaved(competitors: dict, repeats: int, block_s: float = 0.02,
                      gap_s: float = BLOCK_GAP_S) -> dict[str, float]:
    """Median ms per call of each competitor, timed in interleaved blocks after a warm-up, with an
    idle gap after every block so that no competitor runs against another's spinning threads."""
    numbers = {}
    for name, fn in competitors.items():
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        numbers[name] = max(1, int(block_s / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in competitors}
    for _ in range(repeats):
        for name, fn in competitors.items():
            n = numbers[name]
            fn()  # wakes the thread pool after the gap (untimed)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n * 1e3)
            time.sleep(gap_s)
    return {name: statistics.median(v) for name, v in samples.items()}


# ----------------------------------------------------------------------------------------------

def bench_layer(name: str, args, target) -> dict:
    from tvm_winograd.compute import Epilogue
    from tvm_winograd.compute import block_kernel_pack, kernel_block_of
    from tvm_winograd.reference import winograd_weight_transform
    from tvm_winograd.tune.tasks import layer_spec
    from tvm_winograd.tune.tuner import apply_best, candidate_func, tune_layer

    spec = layer_spec(name, args.batch, args.layout)
    candidates = args.candidates.split(",") if args.candidates else None
    t0 = time.perf_counter()
    result = tune_layer(spec, target, trials=args.trials, candidates=candidates, work_dir=args.work_dir,
                        schedules_dir=args.schedules_dir, progress=not args.no_progress)
    tune_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    w = rng.standard_normal(spec.weight_shape).astype("float32")
    ref = None
    competitors, outputs = {}, {}
    choice = result.choice
    sched_dir = result.schedules_dir
    if choice is not None:
        cand = "direct" if choice.algorithm == "direct" else f"winograd_m{choice.m}"
        func = apply_best(candidate_func(spec, cand, Epilogue()), target, sched_dir)
        if choice.algorithm == "winograd":
            pack = winograd_weight_transform(w.astype(np.float64), choice.m, spec.layout)
            pack = block_kernel_pack(pack, kernel_block_of(func)).astype("float32")
            inputs = [x, pack]
        else:
            inputs = [x, w]
        competitors["ours"], outputs["ours"] = _tvm_callable(func, target, inputs, spec.output_shape, "float32")
    if "direct" in result.candidates and result.candidates["direct"].median_ms is not None:
        func = apply_best(candidate_func(spec, "direct", Epilogue()), target, sched_dir)
        competitors["tvm_direct"], outputs["tvm_direct"] = _tvm_callable(func, target, [x, w], spec.output_shape,
                                                                         "float32")
    competitors["torch"], outputs["torch"] = _torch_callable(x, w, spec.layout, args.threads)
    competitors["onnxruntime"], outputs["onnxruntime"] = _ort_callable(x, w, spec.layout, args.threads)
    # Everyone computes the same thing (a cheap sanity check, not the accuracy test).
    for comp, get in outputs.items():
        comp_out = np.asarray(get(), dtype=np.float64)
        if ref is None:
            ref = np.asarray(outputs["torch"](), dtype=np.float64)
        rel = float(np.abs(comp_out - ref).max() / np.abs(ref).max())
        if rel > 1e-3:
            raise RuntimeError(f"{name}: {comp} differs from torch by {rel:.2e} (relative)")
    times = _time_interleaved(competitors, args.repeats)
    peer = min(t for c, t in times.items() if c in ("torch", "onnxruntime"))
    row = {
        "layer": name, "spec": spec.key(), "flops": spec.flops, "trials": args.trials,
        "choice": None if choice is None else ("direct" if choice.algorithm == "direct" else f"F({choice.m},3)"),
        "tuned_ms": {c: r.median_ms for c, r in result.candidates.items()},
        "trials_to_90": {c: r.trials_to_90 for c, r in result.candidates.items()},
        "tune_wall_s": tune_s,
        "ms": times,
        "gflops": {c: spec.flops / (t * 1e6) for c, t in times.items()},
        "ratio_vs_best_peer": {c: peer / t for c, t in times.items()},
    }
    return row


def _markdown(rows: list[dict], meta: dict) -> str:
    comps = COMPETITORS
    lines = [f"Machine: {meta['machine']}; threads {meta['threads']}; batch {meta['batch']}; {meta['layout']}; "
             f"trials per algorithm {meta['trials']}; tuning wall {meta['tune_wall_s']:.0f} s; "
             f"medians of {meta['repeats']} interleaved blocks.", "",
             "| layer | choice | " + " | ".join(f"{c} ms" for c in comps) + " | "
             + " | ".join(f"{c} GFLOP/s" for c in comps) + " | ours / best peer | trials to 90% |",
             "|" + "---|" * (2 + 2 * len(comps) + 2)]
    for r in rows:
        ms_cells = [f"{r['ms'][c]:.3f}" if c in r["ms"] else "-" for c in comps]
        gf_cells = [f"{r['gflops'][c]:.0f}" if c in r["gflops"] else "-" for c in comps]
        ratio = r["ratio_vs_best_peer"].get("ours")
        t90 = ", ".join(f"{c}: {v}" for c, v in r["trials_to_90"].items() if v is not None) or "-"
        lines.append(f"| {r['layer']} | {r['choice']} | " + " | ".join(ms_cells) + " | " + " | ".join(gf_cells)
                     + f" | {'-' if ratio is None else f'{ratio:.2f}x'} | {t90} |")
    return "\n".join(lines)


def _chart(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = COMPETITORS
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / len(comps)
    for i, c in enumerate(comps):
        vals = [r["gflops"].get(c, 0.0) for r in rows]
        ax.bar(np.arange(len(rows)) + i * width, vals, width, label=c)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("effective GFLOP/s (direct FLOPs / time)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_bench(args: argparse.Namespace) -> int:
    """Tune and time every selected layer; print (and write) the table, JSON and chart."""
    if args.repeats < 1 or args.trials < 1:
        raise ValueError(f"--repeats {args.repeats} and --trials {args.trials} must be >= 1")
    from tvm_winograd.targets import resolve_target
    from tvm_winograd.tune.tasks import select_layers

    target = resolve_target("llvm")
    names = select_layers(args.layers)
    start = time.perf_counter()
    rows = []
    for name in names:
        logger.info("== %s", name)
        rows.append(bench_layer(name, args, target))
    meta = {
        "machine": f"{platform.processor() or platform.machine()} {target.attrs.get('mcpu')} "
                   f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f} at end",
        "threads": args.threads, "batch": args.batch, "layout": args.layout, "trials": args.trials,
        "repeats": args.repeats, "tune_wall_s": sum(r["tune_wall_s"] for r in rows),
        "total_wall_s": time.perf_counter() - start, "command": " ".join(sys.argv),
    }
    md = _markdown(rows, meta)
    result = {"meta": meta, "rows": rows}
    print(json.dumps(result, indent=1, default=str) if getattr(args, "json_stdout", False) else md)
    if args.out_md:
        Path(args.out_md).write_text(md + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.png:
        _chart(rows, args.png)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_bench(_parse_args(argv))
