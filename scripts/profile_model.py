"""Per-PrimFunc time of a compiled model (llvm), the way ``compile_model`` builds it.

    python scripts/profile_model.py                                    # resnet18, algo auto, all cores
    python scripts/profile_model.py --model resnet50 --algo direct --calls 10
    python scripts/profile_model.py --model resnet50 --batch 8 --calls 5
    python scripts/profile_model.py --model mobilenet_v2.onnx                # an ONNX file: its own input shapes

Every VM call instruction is timed by a ``VirtualMachine.set_instrument`` callback (wall clock
around the call, a few microseconds of overhead per call); the table lists, per function and argument
shapes, the median per model run, and the share of the instrumented total. Timings on a shared machine
are noisy: compare variants in one run.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1, help="batch of a built-in model (an ONNX file keeps its own)")
    parser.add_argument("--algo", default="auto", choices=["auto", "winograd", "direct"])
    parser.add_argument("--threads", type=int, default=None, help="TVM's pool size (default: all cores)")
    parser.add_argument("--calls", type=int, default=10, help="instrumented model runs")
    parser.add_argument("--min-ms", type=float, default=0.05, help="hide rows below this")
    parser.add_argument("--kernel-dtype", default=None, choices=["float32", "float16"],
                        help="storage of the Winograd layers' U (as compile --kernel-dtype)")
    args = parser.parse_args(argv)
    from tvm_winograd.threads import configure_threads

    print(f"threads {configure_threads(args.threads)}")
    import tvm
    from tvm import relax

    from tvm_winograd.export import compile_model
    from tvm_winograd.frontend import load_model

    builtin = not args.model.endswith((".onnx", ".pt2"))
    mod, info = load_model(args.model, {"input": (args.batch, 3, args.image_size, args.image_size)} if builtin else None)
    feed = info.net.input_feed() if info.net is not None else info.random_inputs()
    t0 = time.perf_counter()
    ex, _ = compile_model(mod, "llvm", algo=args.algo, kernel_dtype=args.kernel_dtype)
    print(f"compile {time.perf_counter() - t0:.0f} s")
    dev = tvm.cpu(0)
    x = [tvm.runtime.tensor(feed[name], dev) for name in info.input_names]
    vm = relax.VirtualMachine(ex, dev)
    for _ in range(3):
        vm["main"](*x)
    runs = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        vm["main"](*x)
        runs.append((time.perf_counter() - t0) * 1e3)

    times: dict[tuple, list[float]] = collections.defaultdict(list)
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *call_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            shapes = tuple(tuple(a.shape) for a in call_args if hasattr(a, "shape"))
            times[(symbol, shapes)].append((time.perf_counter() - started.pop()) * 1e3)
        return 0

    vm.set_instrument(instrument)
    for _ in range(args.calls):
        vm["main"](*x)
    rows = []
    for (symbol, shapes), values in times.items():
        per_run = len(values) // args.calls
        rows.append((statistics.median(values) * per_run, symbol, per_run, shapes))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"\n{args.model} algo={args.algo}: model run median {statistics.median(runs):.2f} ms "
          f"(uninstrumented), instrumented sum {total:.2f} ms\n")
    print("| ms / run | share | calls | function | argument shapes |\n|---:|---:|---:|---|---|")
    for ms, symbol, calls, shapes in rows:
        if ms >= args.min_ms:
            print(f"| {ms:.3f} | {100 * ms / total:.1f}% | {calls} | `{symbol}` | {' '.join(map(str, shapes[:2]))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
