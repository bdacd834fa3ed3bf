"""Untuned default schedules per layer: direct vs F(2,3), F(4,3), F(6,3), and the heuristic's pick.

    python scripts/heuristic_sweep.py "resnet_*,vgg_conv3_2,vgg_conv4_2,vgg_conv5_1"   # all cores
    python scripts/heuristic_sweep.py "vgg_*,resnet_*" --cold        # as in a model: weights from DRAM
    LAYOUT=NCHW python scripts/heuristic_sweep.py vgg_conv2_2
    python scripts/heuristic_sweep.py "32x224x16,16x28x32" --cold    # any 3x3 layer: C x H x K[x batch]

Prints a markdown row per layer: median ms of each candidate (interleaved rounds), the fastest, the
heuristic's choice (tvm_winograd.heuristic.choose_algorithm) and the best effective GFLOP/s.

Hot (the default): each candidate is called back to back, so its weights (U for Winograd), input and
output stay in the caches.  ``--cold``: before each call a buffer twice the last-level cache's size is
read, so the weights, input and output come from DRAM -- the situation inside a whole model, whose
weights do not fit the cache (ResNet-18's are 47 MB, VGG-16's 553 MB).  The CPU cost model
(tvm_winograd.heuristic.CpuCostModel) is fitted on the cold table.
"""
import argparse
import os
import statistics
import time

import numpy as np
import tvm

from tvm_winograd.lowering import build_tir
from tvm_winograd.tune.tasks import layer_spec, select_layers, shape_spec
from tvm_winograd.compute import winograd_func, direct_func, target_config
from tvm_winograd.schedule.default import schedule_llvm_default
from tvm_winograd.schedule.direct import schedule_direct_llvm, split_weight_packing
from tvm_winograd.schedule.llvm.base import num_cores
from tvm_winograd.targets import resolve_target
from tvm_winograd.heuristic import choose_algorithm
from tvm_winograd.threads import configure_threads

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("layers", help="layer names or globs (tvm_winograd.tune.tasks) or shapes CxHxK[xN] "
                    "(a 3x3, stride-1, padding-1 layer: C input channels, H x H pixels, K output channels, batch N), "
                    "comma-separated")
parser.add_argument("--cold", action="store_true", help="read 2x the LLC before each call (weights from DRAM)")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--llc-mib", type=int, default=32, help="last-level cache size for --cold")
args = parser.parse_args()

configure_threads()  # every core (TVM's default is half of them on x86); TVM_NUM_THREADS wins
target = resolve_target("llvm")
layout = os.environ.get("LAYOUT", "NHWC")
flush = np.ones(2 * args.llc_mib * 2**20 // 4, dtype="float32")
print(f"{'cold' if args.cold else 'hot'}, {layout}, {args.rounds} interleaved rounds")
print("| layer | direct | F(2,3) | F(4,3) | F(6,3) | fastest | heuristic | best eff. GFLOP/s |")
print("|---|---:|---:|---:|---:|---|---|---:|")


def _layers(text: str) -> list[tuple[str, object]]:
    """``(name, spec)`` for each comma-separated entry: a shape ``CxHxK[xN]`` or a benchmark layer glob."""
    out, names = [], []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        dims = entry.split("x")
        if len(dims) in (3, 4) and all(d.isdigit() for d in dims):
            c, h, k, n = (int(d) for d in dims + ["1"] * (4 - len(dims)))
            out.append((entry, shape_spec(c, h, k, n, layout)))
        else:
            names.append(entry)
    if names:
        out += [(name, layer_spec(name, layout=layout)) for name in select_layers(",".join(names))]
    return out


for name, spec in _layers(args.layers):
    # direct as in a model: weights packed once ahead (random data: the packed weight is just a tensor),
    # large ones streamed for the target's cores
    cands = {"direct": split_weight_packing(schedule_direct_llvm(direct_func(spec), pack_weight=True,
                                                              cores=num_cores(target)))[0]}
    for m in (2, 4, 6):
        cands[f"F{m}"] = schedule_llvm_default(winograd_func(spec, target_config(spec, m, "llvm")))
    fns = {}
    dev = tvm.cpu()
    for k, f in cands.items():
        lib = build_tir(f, target)
        tensors = [tvm.runtime.tensor(np.random.rand(*[int(s) for s in p.shape]).astype("float32"), dev) for p in f.params]
        fns[k] = (lib["main"], lib.mod.time_evaluator("main", dev, number=3, repeat=3, min_repeat_ms=30), tensors)
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, (fn, ev, tensors) in fns.items():
            if not args.cold:
                times[k] += ev(*tensors).results
                continue
            for _ in range(5):
                float(flush.max())
                start = time.perf_counter()
                fn(*tensors)
                times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = min(med, key=med.get)
    h = choose_algorithm(spec, target)
    line = f"| {name} | " + " | ".join(f"{med[k]:.3f}" for k in fns) + f" | {best} | {h[0]} {h[1] or ''} | {spec.flops/med[best]/1e6:.0f} |"
    print(line, flush=True)
