"""Whole-model benchmark: ours vs onnxruntime vs OpenVINO (vs PyTorch, vs ours without Winograd) on
the same ONNX graph and weights, at one or several batch sizes, on the harness of :mod:`.harness`.

    python scripts/bench_models.py                                   # resnet18 resnet50 vgg16, batch 1
    python scripts/bench_models.py --batch 1 8 32 --png batch.png    # the batch sweep

Competitors (the same thread count for all; default: every core this process may use):

- ``ours``: ``tvm-winograd compile``'s library (defaults: Winograd where the tuning records or the
  heuristic say it wins, our direct conv elsewhere, NHWC on CPUs), exported and loaded back with the
  runtime-only loader; ``--schedules`` applies tuning records;
- ``ours-direct`` (``--with-direct``): the same pipeline with every conv direct (what Winograd brings);
- ``ours-fp16u`` (``--with-fp16-kernel``): ``compile --kernel-dtype float16`` (the opt-in fp16 storage
  of U; its ratio beside the default's);
- ``onnxruntime`` (spinning on and off; the faster is reported), ``openvino`` (LATENCY, f32) and
  ``torch`` (eager, built-in models only; ``--skip torch`` to leave it out).

Before timing, every output is compared with onnxruntime's; after it, ``tvm-winograd run`` times the
same library in a process of its own and must agree with the in-harness figure (self-check).  The
report starts with the machine probe and the self-checks; ``UNRELIABLE RUN`` heads a report whose
checks failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .harness import BLOCK_GAP_S, Reliability, best_of_groups, configurations_markdown, paired_ratio, report_head
from .peers import measure, peer_recipes, save_npz
from .session import bench_session, write_report

logger = logging.getLogger(__name__)

COMPETITORS = ("ours", "ours-direct", "ours-fp16u", "onnxruntime", "openvino", "torch")
#: The peers a ratio is taken against (the faster of them).
RATIO_PEERS = ("onnxruntime", "openvino")
#: Outputs must agree with onnxruntime's to this fraction of max|y| (a sanity check: every competitor
#: computes the same function; the accuracy of our kernels is tested against float64 elsewhere).
OUTPUT_TOLERANCE = 1e-3
#: ``ours-fp16u``'s: one fp16 rounding of U per Winograd layer, up to ~1.5e-3 each (ACCURACY.md), over
#: a model's 13 (ResNet-18, VGG-16) to 29 (ResNet-34) layers; wrong results are O(1).
FP16U_OUTPUT_TOLERANCE = 1e-2


def faster_peer(ms: dict[str, float]) -> str | None:
    """The faster of :data:`RATIO_PEERS` in ``ms`` (name -> ms), None if neither was measured."""
    peers = {k: v for k, v in ms.items() if k in RATIO_PEERS}
    return min(peers, key=peers.get) if peers else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg16"],
                   help="built-in names or .onnx files (default: resnet18 resnet50 vgg16)")
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="threads for every competitor (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per competitor (default 5)")
    p.add_argument("--isolate", action="store_true", help="run every competitor's blocks in a process of its own")
    p.add_argument("--skip", nargs="*", default=[], help="competitors to leave out: torch openvino onnxruntime")
    p.add_argument("--with-direct", action="store_true", help="also time ours with every convolution direct")
    p.add_argument("--with-fp16-kernel", action="store_true",
                   help="also time ours compiled with --kernel-dtype float16 (ours-fp16u: U stored in fp16)")
    p.add_argument("--schedules", default=None, help="tuning records to apply (default: none, untuned)")
    p.add_argument("--out-md", default=None)
    p.add_argument("--out-json", default=None)
    p.add_argument("--png", default=None, help="batch sweep chart (speed-up over the faster peer per batch)")


def _compile(name: str, mod, work: Path, algo: str, schedules: str | None, threads: int,
             kernel_dtype: str | None = None) -> tuple[str, dict]:
    from ..export import compile_model, export_library
    from ..targets import resolve_target

    start = time.perf_counter()
    ex, reports = compile_model(mod, resolve_target({"kind": "llvm", "num-cores": threads}), schedules, algo,
                                kernel_dtype=kernel_dtype)
    path = export_library(ex, work / f"{name}-{algo}{'-' + kernel_dtype if kernel_dtype else ''}.so")
    return str(path), {"compile_s": time.perf_counter() - start,
                       "winograd_layers": sum(r.algorithm == "winograd" for r in reports),
                       "conv_layers": len(reports), "size_mb": path.stat().st_size / 1e6}


def _cli_ms(library: str, inputs_npz: str, threads: int, work: Path, repeat: int = 10) -> float:
    """``tvm-winograd run``'s own median latency for ``library`` (a process of its own)."""
    from .peers import load_npz

    args = []
    for name, arr in load_npz(inputs_npz).items():
        path = work / f"cli-{name}.npy"
        np.save(path, arr)
        args += ["--input", f"{name}={path}"]
    proc = subprocess.run([sys.executable, "-m", "tvm_winograd.cli", "run", library, *args, "--repeat", str(repeat),
                           "--threads", str(threads), "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tvm-winograd run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(json.loads(proc.stdout)["median_ms"])


def bench_model(name: str, batch: int, args, threads: int, work: Path, reliability: Reliability) -> dict:
    from ..frontend import load_model
    from ..models import BUILTIN_MODELS

    builtin = name in BUILTIN_MODELS
    shapes = {"input": (batch, 3, args.image_size, args.image_size)} if builtin else None
    mod, info = load_model(name, shapes)
    label = Path(name).stem
    d = work / f"{label}-b{batch}"
    d.mkdir(parents=True, exist_ok=True)
    feed = info.net.input_feed() if builtin else info.random_inputs()
    inputs = save_npz(d / "inputs.npz", feed)
    onnx_path = d / "model.onnx"
    onnx_path.write_bytes(info.onnx_model.SerializeToString())
    ours_lib, compiled = _compile(label, mod, d, "auto", args.schedules, threads)
    if batch > 1 and compiled["winograd_layers"] == 0:
        raise RuntimeError(f"{name} at batch {batch}: no convolution went through Winograd (compile report)")
    recipes = [{"name": "ours", "kind": "tvm_vm", "library": ours_lib, "inputs": inputs, "threads": threads}]
    if args.with_direct:
        lib, _ = _compile(label, mod, d, "direct", args.schedules, threads)
        recipes.append({"name": "ours-direct", "kind": "tvm_vm", "library": lib, "inputs": inputs,
                        "threads": threads})
    if args.with_fp16_kernel:
        lib, _ = _compile(label, mod, d, "auto", args.schedules, threads, kernel_dtype="float16")
        recipes.append({"name": "ours-fp16u", "kind": "tvm_vm", "library": lib, "inputs": inputs,
                        "threads": threads, "tolerance": FP16U_OUTPUT_TOLERANCE})
    torch = ({"kind": "torch_builtin", "model": name, "batch": batch, "image_size": args.image_size,
              "inputs": inputs} if builtin else None)
    recipes += peer_recipes(str(onnx_path), inputs, threads, torch=torch, skip=frozenset(args.skip))
    from .peers import build_competitor

    reference = np.asarray(build_competitor(next(r for r in recipes if r["kind"] == "onnxruntime")
                                            if "onnxruntime" not in args.skip else recipes[0]).output(),
                           dtype=np.float64)
    timings = measure(recipes, args.rounds, isolate=args.isolate, reference=reference,
                      tolerance=OUTPUT_TOLERANCE, what=f"{name} batch {batch}")
    best = best_of_groups(timings)
    ms = {k: t.median_ms for k, t in best.items()}
    repeat = 10 if ms["ours"] < 300 else 3  # batch 32 VGG-16 takes seconds per call
    time.sleep(BLOCK_GAP_S)  # the last competitor's pool stops spinning before `run` starts
    reliability.check_cli(f"{label} batch {batch} ours", ms["ours"], _cli_ms(ours_lib, inputs, threads, d, repeat))
    best_peer = faster_peer(ms)
    return {"model": label, "batch": batch, "ms": ms, "configs": {k: t.config for k, t in best.items()},
            "samples_ms": {k: t.samples_ms for k, t in timings.items()},
            "best_peer": best_peer, "ratio": paired_ratio(best[best_peer], best["ours"]) if best_peer else None,
            "ratio_fp16u": (paired_ratio(best[best_peer], best["ours-fp16u"])
                            if best_peer and "ours-fp16u" in best else None),
            "images_per_s": {k: batch * 1e3 / v for k, v in ms.items()}, **compiled}


def markdown(rows: list[dict], meta: dict) -> str:
    comps = [c for c in COMPETITORS if any(c in r["ms"] for r in rows)]
    tuning = f"tuning records from {meta['schedules']}" if meta["schedules"] else "untuned (no tuning records)"
    lines = report_head(meta, f"{meta['image_size']}x{meta['image_size']}; {tuning}") + [
             "| model | batch | " + " | ".join(f"{c} ms" for c in comps)
             + " | ours / faster of onnxruntime, OpenVINO | ours images/s | Winograd convs | compile s |",
             "|" + "---|" * (len(comps) + 6)]
    for r in rows:
        cells = [f"{r['ms'][c]:.2f}" if c in r["ms"] else "-" for c in comps]
        ratio = "-" if r["ratio"] is None else f"**{r['ratio']:.2f}x** ({r['best_peer']})"
        if r["best_peer"] and "ours-fp16u" in r["ms"]:  # the opt-in fp16 U beside the default
            ratio += f"; fp16 U {r['ratio_fp16u']:.2f}x"
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells)
                     + f" | {ratio} | {r['images_per_s']['ours']:.1f} | {r['winograd_layers']}/{r['conv_layers']}"
                     + f" | {r['compile_s']:.0f} |")
    lines += ["", configurations_markdown(rows)]
    return "\n".join(lines)


def _chart(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["batch"], r["ratio"]) for r in rows if r["model"] == model and r["ratio"]]
        ax.plot([b for b, _ in pts], [q for _, q in pts], marker="o", label=model)
    ax.axhline(1.0, color="k", linewidth=1, linestyle="--")
    ax.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch")
    ax.set_ylabel("ours / faster of onnxruntime, OpenVINO")
    ax.set_title("whole models, speed-up over the faster peer (> 1: ours faster)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or any(b < 1 for b in args.batch):
        raise ValueError(f"--rounds {args.rounds} and --batch {args.batch} must be >= 1")
    rows = []
    with bench_session(args.threads, "models") as session:
        for name in args.models:
            for batch in args.batch:
                row = bench_model(name, batch, args, session.threads, session.work, session.reliability)
                rows.append(row)
                print(f"{row['model']} batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items()),
                      file=sys.stderr)
    meta = session.meta(image_size=args.image_size, rounds=args.rounds, isolate=args.isolate,
                        schedules=args.schedules)
    md = markdown(rows, meta)
    print(md)
    write_report(md, {"meta": meta, "rows": rows}, args.out_md, args.out_json)
    if args.png:
        _chart(rows, args.png)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
