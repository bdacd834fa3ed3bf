"""Untuned default schedules per layer: direct vs F(2,3), F(4,3), F(6,3), and the heuristic's pick.

    python scripts/heuristic_sweep.py "resnet_*,vgg_conv3_2,vgg_conv4_2,vgg_conv5_1"   # all cores
    LAYOUT=NCHW python scripts/heuristic_sweep.py vgg_conv2_2

Prints a markdown row per layer: median ms of each candidate (3 interleaved rounds), the fastest,
the heuristic's choice (tvm_winograd.heuristic.choose_algorithm) and the best effective GFLOP/s.
This is the data the heuristic's weights were fitted on (see heuristic.CpuCostModel).
"""
import os
import statistics
import sys

import numpy as np
import tvm

from tvm_winograd.tune.tasks import layer_spec, select_layers
from tvm_winograd.compute import winograd_func, direct_func, target_config
from tvm_winograd.schedule.default import schedule_llvm_default
from tvm_winograd.schedule.direct import schedule_direct_llvm
from tvm_winograd.targets import resolve_target
from tvm_winograd.heuristic import choose_algorithm
from tvm_winograd.threads import configure_threads

configure_threads()  # every core (TVM's default is half of them on x86); TVM_NUM_THREADS wins
target = resolve_target("llvm")
layout = os.environ.get("LAYOUT", "NHWC")
print("| layer | direct | F(2,3) | F(4,3) | F(6,3) | fastest | heuristic | best eff. GFLOP/s |")
print("|---|---:|---:|---:|---:|---|---|---:|")
for name in select_layers(sys.argv[1]):
    spec = layer_spec(name, layout=layout)
    cands = {"direct": schedule_direct_llvm(direct_func(spec))}
    for m in (2, 4, 6):
        cands[f"F{m}"] = schedule_llvm_default(winograd_func(spec, target_config(spec, m, "llvm")))
    fns = {}
    dev = tvm.cpu()
    for k, f in cands.items():
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        args = [tvm.runtime.tensor(np.random.rand(*[int(s) for s in p.shape]).astype("float32"), dev) for p in f.params]
        fns[k] = (lib.mod.time_evaluator("main", dev, number=3, repeat=3, min_repeat_ms=30), args)
    times = {k: [] for k in fns}
    for _ in range(3):
        for k, (ev, args) in fns.items():
            times[k] += ev(*args).results
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = min(med, key=med.get)
    h = choose_algorithm(spec)
    line = f"| {name} | " + " | ".join(f"{med[k]:.3f}" for k in fns) + f" | {best} | {h[0]} {h[1] or ''} | {spec.flops/med[best]/1e6:.0f} |"
    print(line, flush=True)
