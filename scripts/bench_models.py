"""Whole-model latency, batch 1: ours vs the same TVM pipeline without the pass vs PyTorch vs onnxruntime.

    python scripts/bench_models.py                       # resnet18 resnet50 vgg16 at 224, 2 threads
    python scripts/bench_models.py --models resnet18 --image-size 112 --repeats 10

Competitors (same ONNX graph / weights, threads pinned equal):

- ``ours``: the Winograd pass (tuned schedules from ``schedules/<target>/`` when present, else the
  default schedules; Winograd where the measurements or the heuristic say it wins); the other
  convolutions (stride 2, 1x1) run our direct PrimFunc (``ineligible="tir"``);
- ``ours-direct``: the same with ``algo="direct"`` (every conv our direct PrimFunc, same schedule
  effort): isolates what Winograd itself brings;
- ``tvm``: ``relax.get_default_pipeline`` without our pass (TVM's own lowering, unscheduled on llvm);
- ``torch``: PyTorch eager (oneDNN) on the equivalent module, ``torch.set_num_threads``;
- ``onnxruntime``: MLAS, ``intra_op_num_threads``, spinning on (its default and best configuration;
  the idle gap between blocks keeps its spinning from reaching the next competitor).

Each competitor is timed in its own block (an idle gap so the previous one's thread pool stops
spinning, warm-up, then ``--repeats`` timed calls, median), blocks alternate over ``--rounds``
rounds, and the median of the round medians is reported.  Correctness of every TVM output against
onnxruntime is checked before timing.  Output: a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

from tvm_winograd.bench import BLOCK_GAP_S


def _time_block(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    time.sleep(BLOCK_GAP_S)  # the previous competitor's thread pool stops spinning (see bench.py)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _competitors(name: str, image_size: int, threads: int, skip: set[str], schedules_dir: str | None):
    import tvm
    from tvm import relax

    from tvm_winograd.export import compile_model
    from tvm_winograd.frontend import load_model

    mod, info = load_model(name, {"input": (1, 3, image_size, image_size)})
    feed = info.net.input_feed()
    out: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}
    ref = None

    if "onnxruntime" not in skip:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        sess = ort.InferenceSession(info.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feed)[0]
        out["onnxruntime"] = lambda: sess.run(None, feed)

    if "torch" not in skip:
        try:
            import torch

            from tvm_winograd.models import to_torch

            torch.set_num_threads(threads)
            module = to_torch(info.net)
            x = torch.from_numpy(feed["input"])

            def torch_run():
                with torch.no_grad():
                    return module(x)

            out["torch"] = torch_run
        except (ImportError, NotImplementedError) as err:
            notes["torch"] = f"skipped: {err}"

    dev = tvm.cpu(0)
    x_dev = tvm.runtime.tensor(feed["input"], dev)
    variants = [("ours", dict(algo="auto", ineligible="tir")), ("ours-direct", dict(algo="direct", ineligible="tir")),
                ("tvm", dict(rewrite=False))]
    for label, kwargs in variants:
        if label in skip:
            continue
        t0 = time.perf_counter()
        ex, report = compile_model(mod, "llvm", schedules_dir, **kwargs)
        compile_s = time.perf_counter() - t0
        vm = relax.VirtualMachine(ex, dev)
        got = vm["main"](x_dev).numpy()
        if ref is not None:
            err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
            if err > 1e-2:
                raise SystemExit(f"{name} {label}: output differs from onnxruntime (relative {err:.2e})")
        n_wino = sum(r.algorithm == "winograd" for r in report)
        notes[label] = f"compile {compile_s:.0f} s" + (f", {n_wino}/{len(report)} conv Winograd" if report else "")
        out[label] = (lambda vm=vm: vm["main"](x_dev))
    return out, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg16"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="competitors to leave out, e.g. tvm torch")
    parser.add_argument("--schedules-dir", default=None, help="default: the committed schedules/<target>/")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    # TVM's thread pool reads this at first use; set it before anything runs.
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import tvm

    print(f"# Model latency, batch 1, {args.image_size}x{args.image_size}, {args.threads} threads\n")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"llvm mcpu {tvm.target.codegen.llvm_get_system_cpu()}; median of {args.rounds} rounds x "
          f"{args.repeats} repeats\n")
    order = ["ours", "ours-direct", "tvm", "torch", "onnxruntime"]
    rows = []
    for name in args.models:
        runners, notes = _competitors(name, args.image_size, args.threads, set(args.skip), args.schedules_dir)
        per_round: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for label in [k for k in order if k in runners]:
                per_round[label].append(_time_block(runners[label], args.warmup, args.repeats))
        ms = {k: statistics.median(v) for k, v in per_round.items()}
        rows.append((name, ms, notes))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), file=sys.stderr)

    labels = [k for k in order if any(k in ms for _, ms, _ in rows)]
    print("| model | " + " | ".join(f"{k} (ms)" for k in labels) + " | ours vs tvm | ours vs torch | ours vs onnxruntime |")
    print("|---|" + "---|" * (len(labels) + 3))
    for name, ms, _ in rows:
        ratio = lambda other: f"{ms[other] / ms['ours']:.2f}x" if "ours" in ms and other in ms else "-"  # noqa: E731
        cells = [f"{ms[k]:.2f}" if k in ms else "-" for k in labels]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio('tvm')} | {ratio('torch')} | {ratio('onnxruntime')} |")
    print("\nRatios > 1 mean ours is faster.  Notes:")
    for name, _, notes in rows:
        for label, note in notes.items():
            print(f"- {name} {label}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
