"""Per-layer CPU benchmark (``tvm-winograd bench``): ours vs TVM's direct conv vs onnxruntime vs
OpenVINO vs PyTorch, side by side in one run, with the machine probe and the Winograd roofline.

"ours" per layer: with ``--trials 0`` (the default) what ``compile`` gives without tuning records —
the heuristic's algorithm and tile (:func:`~tvm_winograd.heuristic.choose_algorithm`) under the default
schedule; with ``--trials N`` :func:`~tvm_winograd.tune.tuner.tune_layer` tunes direct and each Winograd
tile with N trials and the fastest measured one is kept.  ``tvm_direct`` is our direct convolution
under its default schedule as in a model (register-tiled, weights packed once ahead): TVM's pipeline
schedules nothing by itself on llvm.
Our functions run in ``--layout`` (NHWC by default); the peers get the same data in NCHW (PyTorch
also channels_last: the faster of the two is reported).  Weights are constant: Winograd's weight
transform is done ahead of time, as onnxruntime/oneDNN/OpenVINO pre-pack theirs.

Effective GFLOP/s = direct-convolution FLOPs / time (Winograd can exceed the FMA peak).  "limit" is
:func:`~tvm_winograd.bench.roofline.winograd_limit` (or the direct one) of ours' algorithm.

Example (see BENCHMARKS.md for the published run)::

    tvm-winograd bench --layers 'vgg_*,resnet_*' --out-md layers.md --png layers.png
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from .harness import Timing, best_of_groups, configurations_markdown, paired_ratio, report_head
from .peers import conv_onnx, measure, peer_recipes, save_npz
from .session import bench_session, write_report

logger = logging.getLogger(__name__)

#: Columns of the table, in order (groups merged: the faster configuration).
COMPETITORS = ("ours", "tvm_direct", "onnxruntime", "openvino", "torch")
PEERS = ("onnxruntime", "openvino", "torch")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tvm-winograd bench`` (and ``scripts/bench_layers.py``)."""
    from ..tune.tasks import BENCH_LAYERS

    p.add_argument("--layers", default=None,
                   help=f"comma-separated globs over: {', '.join(BENCH_LAYERS)} (default: all)")
    p.add_argument("--trials", type=int, default=0,
                   help="tuning trials per algorithm per layer; 0 = the untuned default (default 0)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NHWC", help="our data layout (default NHWC)")
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=10,
                   help="timed blocks per competitor (default 10)")
    p.add_argument("--threads", type=int, default=None, help="threads for every competitor (default: all cores)")
    p.add_argument("--isolate", action="store_true", help="run every competitor's blocks in a process of its own")
    p.add_argument("--skip", default="", help="comma-separated competitors to leave out, e.g. torch,tvm_direct")
    p.add_argument("--candidates", default=None, help="with --trials: subset, e.g. direct,winograd_m4")
    p.add_argument("--work-dir", default=None, help="tuning logs (default ./tuning_logs/<target>)")
    p.add_argument("--schedules-dir", default=None, help="best records + choices (default ./schedules/<target>)")
    p.add_argument("--out-md", default=None, help="write the markdown report here")
    p.add_argument("--out-json", dest="json_out", default=None, help="write the results as JSON here")
    p.add_argument("--png", default=None, help="write a bar chart here")
    p.add_argument("--json", dest="json_stdout", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-progress", action="store_true")


def _ours(spec, args, target):
    """(PrimFunc, label, algorithm, m, tune seconds) of ours for ``spec``."""
    from ..compute import target_config, winograd_func
    from ..schedule.default import schedule_llvm_default
    from ..heuristic import choose_algorithm

    if args.trials > 0:
        from ..compute import Epilogue
        from ..tune.candidates import candidate_func, candidate_name
        from ..tune.records import apply_best
        from ..tune.tuner import tune_layer

        start = time.perf_counter()
        result = tune_layer(spec, target, trials=args.trials,
                            candidates=args.candidates.split(",") if args.candidates else None,
                            work_dir=args.work_dir, schedules_dir=args.schedules_dir, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        choice = result.choice
        func = apply_best(candidate_func(spec, candidate_name(choice.algorithm, choice.m), Epilogue()), target,
                          result.schedules_dir)
        return func, f"{choice.algorithm} (tuned)", choice.algorithm, choice.m, seconds
    algorithm, m, _why = choose_algorithm(spec, target)
    if algorithm == "winograd":
        return schedule_llvm_default(winograd_func(spec, target_config(spec, m, "llvm"))), "default", algorithm, m, 0.0
    return _direct_default(spec, target), "default", "direct", None, 0.0


def _direct_default(spec, target):
    """The direct conv as ``compile`` schedules it in a model: register-tiled, weights packed (the
    packing runs once ahead, see :func:`_prepacked`)."""
    from ..schedule.direct import schedule_direct_llvm
    from ..schedule.llvm.base import num_cores
    from ..tune.candidates import candidate_func

    return schedule_direct_llvm(candidate_func(spec, "direct", target_kind="llvm"), pack_weight=True,
                                cores=num_cores(target))


def _prepacked(func, w: np.ndarray) -> tuple:
    """``(func, weight)`` to time: a function that packs its weight is split, and the weight packed once
    here -- in a model the packing is folded on the constant weights at compile time."""
    import tvm

    from ..lowering import build_tir  # compile side: `tvm-winograd run` imports this module runtime-only
    from ..schedule.direct import split_weight_packing

    prepacked, packing = split_weight_packing(func)
    if packing is None:
        return func, w
    packed = tvm.runtime.empty([int(s) for s in packing.params[1].shape], "float32", tvm.cpu())
    pack = build_tir(packing, "llvm")["main"]
    pack(tvm.runtime.tensor(w), packed)
    return prepacked, packed.numpy()


def _export_func(func, target, path: Path) -> str:
    from ..lowering import build_tir

    build_tir(func, target).export_library(str(path))
    return str(path)


def _nchw(a: np.ndarray, layout: str, weight: bool = False) -> np.ndarray:
    if layout == "NCHW":
        return a
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1) if weight else a.transpose(0, 3, 1, 2))


def bench_layer(name: str, args, target, threads: int, probe, work: Path) -> dict:
    from ..compute import block_kernel_pack, kernel_block_of
    from ..reference import conv2d_direct, winograd_weight_transform
    from ..tune.tasks import layer_spec
    from .roofline import direct_limit, winograd_limit

    spec = layer_spec(name, args.batch, args.layout)
    skip = frozenset(s.strip() for s in args.skip.split(",") if s.strip())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    w = rng.standard_normal(spec.weight_shape).astype("float32")
    func, label, algorithm, m, tune_s = _ours(spec, args, target)
    if algorithm == "winograd":
        pack = winograd_weight_transform(w.astype(np.float64), m, spec.layout)
        ours_args = [x, block_kernel_pack(pack, kernel_block_of(func)).astype("float32")]
    else:
        func, packed = _prepacked(func, w)
        ours_args = [x, packed]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    out_shape = list(spec.output_shape)
    recipes = [{"name": "ours", "kind": "tvm_func", "threads": threads, "out_shape": out_shape,
                "library": _export_func(func, target, d / "ours.so"),
                "args": save_npz(d / "ours.npz", {f"a{i}": a for i, a in enumerate(ours_args)})}]
    if "tvm_direct" not in skip:
        direct, packed = _prepacked(_direct_default(spec, target), w)
        recipes.append({"name": "tvm_direct", "kind": "tvm_func", "threads": threads, "out_shape": out_shape,
                        "library": _export_func(direct, target, d / "direct.so"),
                        "args": save_npz(d / "direct.npz", {"a0": x, "a1": packed})})
    x_nchw, w_oihw = _nchw(x, spec.layout), _nchw(w, spec.layout, weight=True)
    onnx_path = d / "conv.onnx"
    onnx_path.write_bytes(conv_onnx(x_nchw.shape, w_oihw, 1).SerializeToString())
    peer_inputs = save_npz(d / "x.npz", {"x": x_nchw})
    torch_args = save_npz(d / "torch.npz", {"x": x_nchw, "w": w_oihw})
    recipes += peer_recipes(str(onnx_path), peer_inputs, threads, skip=skip,
                            torch={"kind": "torch_conv", "args": torch_args, "padding": 1})
    if "torch" not in skip and any(r["name"] == "torch" for r in recipes):
        recipes.append({**next(r for r in recipes if r["name"] == "torch"), "name": "torch[channels_last]",
                        "channels_last": True})
    reference = conv2d_direct(x_nchw.astype(np.float64), w_oihw.astype(np.float64), padding=1)
    # Outputs are compared in NCHW: ours in NHWC is transposed by the check.
    ours_ref = reference if spec.layout == "NCHW" else reference.transpose(0, 2, 3, 1)
    timings = _measure_split(recipes, ours_ref, reference, args)
    best = best_of_groups(timings)
    ms = {k: t.median_ms for k, t in best.items()}
    peers = {k: v for k, v in ms.items() if k in PEERS}
    best_peer = min(peers, key=peers.get) if peers else None
    limit = winograd_limit(spec, m, probe) if algorithm == "winograd" else direct_limit(spec, probe)
    return {
        "layer": name, "spec": spec.key(), "flops": spec.flops, "trials": args.trials, "tune_wall_s": tune_s,
        "choice": f"F({m},3)" if algorithm == "winograd" else "direct", "schedule": label,
        "ms": ms, "configs": {k: t.config for k, t in best.items()},
        "gflops": {k: spec.flops / (v * 1e6) for k, v in ms.items()},
        "best_peer": best_peer, "ratio_vs_best_peer": paired_ratio(best[best_peer], best["ours"]) if best_peer else None,
        "limit_ms": limit.ms, "limit_bound": limit.bound, "pct_of_limit": limit.ms / ms["ours"],
        "stage_mb": limit.stage_bytes / 1e6,
    }


def _measure_split(recipes, ours_ref, nchw_ref, args) -> dict[str, Timing]:
    """Check outputs (ours and tvm_direct against the layout's reference, peers against NCHW), then time."""
    from .harness import time_alternating
    from .peers import build_competitor, check_outputs

    tol = 1e-3  # a sanity check that everyone computes the same thing; accuracy is tested elsewhere
    comps = [build_competitor(r) for r in recipes]
    check_outputs([c for c in comps if c.name in ("ours", "tvm_direct")], ours_ref, tol, "layer")
    check_outputs([c for c in comps if c.name not in ("ours", "tvm_direct")], nchw_ref, tol, "layer")
    if args.isolate:
        del comps  # each block is timed in a worker process of its own
        return measure(recipes, args.rounds, isolate=True)
    return time_alternating(comps, args.rounds)


def markdown(rows: list[dict], meta: dict) -> str:
    tuning = "untuned defaults" if not meta["trials"] else f"{meta['trials']} trials per algorithm"
    lines = report_head(meta, f"batch {meta['batch']}; ours in {meta['layout']}; {tuning}") + [
             "| layer | ours | " + " | ".join(f"{c} ms" for c in COMPETITORS)
             + " | best peer | ours / best peer | ours GFLOP/s | best peer GFLOP/s | limit ms (bound) | % of limit |",
             "|" + "---|" * (len(COMPETITORS) + 8)]
    for r in rows:
        cells = [f"{r['ms'][c]:.3f}" if c in r["ms"] else "-" for c in COMPETITORS]
        bp = r["best_peer"]
        ratio = "-" if bp is None else f"{r['ratio_vs_best_peer']:.2f}x"
        peer_gf = "-" if bp is None else f"{r['gflops'][bp]:.0f}"
        lines.append(f"| {r['layer']} | {r['choice']} | " + " | ".join(cells)
                     + f" | {bp or '-'} | {ratio} | {r['gflops']['ours']:.0f} | {peer_gf}"
                     + f" | {r['limit_ms']:.3f} ({r['limit_bound']}) | {r['pct_of_limit']:.0%} |")
    lines += ["", configurations_markdown(rows)]
    return "\n".join(lines)


def _chart(rows: list[dict], path: str, peak: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in COMPETITORS if any(c in r["gflops"] for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    width = 0.8 / len(comps)
    for i, c in enumerate(comps):
        ax.bar(np.arange(len(rows)) + i * width, [r["gflops"].get(c, 0.0) for r in rows], width, label=c)
    ax.axhline(peak, color="k", linestyle="--", linewidth=1, label=f"FMA peak {peak:.0f}")
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("effective GFLOP/s (direct FLOPs / time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_bench(args: argparse.Namespace) -> int:
    """Probe the machine, then time every selected layer; print (and write) the report."""
    from ..targets import resolve_target
    from ..tune.tasks import select_layers

    if args.rounds < 1 or args.trials < 0:
        raise ValueError(f"--rounds {args.rounds} must be >= 1 and --trials {args.trials} >= 0")
    names = select_layers(args.layers)
    rows = []
    with bench_session(args.threads, "layers") as session:
        target = resolve_target({"kind": "llvm", "num-cores": session.threads})
        for name in names:
            logger.info("== %s", name)
            rows.append(bench_layer(name, args, target, session.threads, session.probe, session.work))
    meta = session.meta(batch=args.batch, layout=args.layout, trials=args.trials, rounds=args.rounds,
                        isolate=args.isolate)
    md = markdown(rows, meta)
    result = {"meta": meta, "rows": rows}
    print(json.dumps(result, indent=1, default=str) if args.json_stdout else md)
    write_report(md, result, args.out_md, args.json_out)
    if args.png:
        _chart(rows, args.png, session.probe.fma_gflops)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bench_arguments(p)
    return run_bench(p.parse_args(argv))
