#!/usr/bin/env python
"""Per-layer CUDA benchmark: our Winograd vs PyTorch conv2d (cuDNN, benchmark mode) vs TVM direct conv.

Needs a CUDA GPU (and PyTorch built with CUDA for the cuDNN column).  Without one it exits with status 2
and a one-line message: no time is ever invented.

    python scripts/bench_cuda.py --layers resnet --batch 1 32 --dtype float32 float16
    python scripts/bench_cuda.py --schedules-dir schedules/cuda-sm_80   # tuned records, if any

Effective throughput = direct-convolution FLOPs / time (DESIGN section 5), medians of ``--repeat`` runs
after warm-up, interleaved per layer; ratios are ours / competitor (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

LAYER_SETS = {
    # (C, H, K): 3x3, stride 1, pad 1
    "resnet": [(64, 56, 64), (128, 28, 128), (256, 14, 256), (512, 7, 512)],
    "vgg": [(64, 224, 64), (128, 112, 128), (256, 56, 256), (512, 28, 512), (512, 14, 512)],
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="cuda", help="CUDA target: cuda, sm_80, sm_86, sm_89, sm_90 or a TVM tag "
                                                     "(default: the local GPU's arch)")
    p.add_argument("--layers", choices=sorted(LAYER_SETS) + ["all"], default="all")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--dtype", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    p.add_argument("--m", type=int, default=None, help="Winograd tile (default: the heuristic's choice)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--schedules-dir", default=None, help="apply tuned records from this JSONDatabase directory")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/cuDNN column")
    return p.parse_args(argv)


def _no_gpu_reason() -> str | None:
    import tvm

    if not tvm.runtime.enabled("cuda"):
        return "TVM's CUDA runtime is not loaded (no NVIDIA driver)"
    if not tvm.cuda(0).exist:
        return "no CUDA device visible to TVM"
    return None


def _time_tvm(mod, args, dev, repeat: int) -> float:
    evaluator = mod.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=20)
    return float(np.median(evaluator(*args).results))


def _time_torch(fn, repeat: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def _schedule(func, target, database):
    import tvm

    from tvm_winograd.schedule.cuda import schedule_cuda_default

    if database is not None:
        sch = database.query_schedule(tvm.IRModule({"main": func}), target, "main")
        if sch is not None:
            return sch.mod["main"], "tuned"
    return schedule_cuda_default(func, target), "default"


def bench_layer(spec, m: int, target, dev, repeat: int, database, use_torch: bool) -> dict:
    import tvm

    from tvm_winograd.compute import WinogradConfig, direct_func, winograd_func
    from tvm_winograd.cuda.build import build_cuda
    from tvm_winograd.reference import winograd_weight_transform

    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, dev)
    row = {"layer": spec.key(), "m": m, "gflop": spec.flops / 1e9}

    config = WinogradConfig(m=m)
    func, how = _schedule(winograd_func(spec, config), target, database)
    ours = build_cuda(func, target).module
    pack = winograd_weight_transform(w.astype("float64"), m, spec.layout).astype(config.resolved_pack_dtype(spec))
    args = [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(pack, dev), out]
    row["ours_s"], row["ours_schedule"] = _time_tvm(ours, args, dev, repeat), how

    dfunc, dhow = _schedule(direct_func(spec), target, database)
    direct = build_cuda(dfunc, target).module
    row["tvm_direct_s"] = _time_tvm(direct, [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), out], dev, repeat)
    row["tvm_direct_schedule"] = dhow

    if use_torch:
        import torch

        torch.backends.cudnn.benchmark = True
        tx = torch.from_numpy(x).cuda()
        tw = torch.from_numpy(w).cuda()
        if spec.layout == "NHWC":  # torch wants NCHW tensors; channels_last memory format = NHWC
            tx = tx.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            tw = tw.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        pad = spec.padding[0]
        with torch.no_grad():
            row["cudnn_s"] = _time_torch(lambda: torch.nn.functional.conv2d(tx, tw, padding=pad), repeat)
    return row


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING)
    reason = _no_gpu_reason()
    if reason is not None:
        print(f"bench_cuda: no CUDA GPU: {reason}. Run this on a GPU machine (tuning can also measure through "
              "an RPC tracker: tvm-winograd tune ... --rpc-tracker HOST:PORT --rpc-key KEY); "
              "`tvm-winograd cuda-check` verifies the schedules without a GPU.", file=sys.stderr)
        return 2
    import tvm

    from tvm_winograd.targets import resolve_target
    from tvm_winograd.heuristic import choose_algorithm
    from tvm_winograd.workload import make_spec

    dev = tvm.cuda(0)
    target = resolve_target(args.target if args.target != "cuda" else "sm_" + dev.compute_version.replace(".", ""))
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch

            use_torch = torch.cuda.is_available()
        except ImportError:
            use_torch = False
        if not use_torch:
            print("bench_cuda: PyTorch with CUDA not available: the cuDNN column is skipped", file=sys.stderr)
    database = None
    if args.schedules_dir:
        from tvm_winograd.tune.database import open_database

        database = open_database(args.schedules_dir)
    sets = sorted(LAYER_SETS) if args.layers == "all" else [args.layers]
    print(f"device: {dev.device_name} ({target.attrs['arch']}), repeats: {args.repeat}, medians")
    print("| layer | m | ours GFLOP/s | vs cuDNN | vs TVM direct | ours schedule |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtype:
        for batch in args.batch:
            for name in sets:
                for c, h, k in LAYER_SETS[name]:
                    spec = make_spec((batch, c, h, h), (k, c, 3, 3), padding=1, dtype=dtype)
                    m = args.m or (choose_algorithm(spec, "cuda")[1] or 2)
                    start = time.perf_counter()
                    row = bench_layer(spec, m, target, dev, args.repeat, database, use_torch)
                    eff = row["gflop"] / row["ours_s"]
                    vs_cudnn = f"{row['cudnn_s'] / row['ours_s']:.2f}x" if "cudnn_s" in row else "-"
                    vs_direct = f"{row['tvm_direct_s'] / row['ours_s']:.2f}x"
                    print(f"| {row['layer']} | {m} | {eff:.0f} | {vs_cudnn} | {vs_direct} | {row['ours_schedule']} |",
                          flush=True)
                    logging.info("%s took %.1fs", row["layer"], time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
