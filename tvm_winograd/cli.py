"""``tvm-winograd``: inspect, tune, compile, run and benchmark Winograd convolution in TVM models.

Modelled on ``tvmc``: one subcommand per job, ``--help`` with an example on each, plain tables on the
terminal and ``--json`` for machines.  Bad input is one line on stderr and exit code 2 (``--debug``
shows the traceback).  Heavy imports happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["main", "build_parser", "UsageError"]

PROG = "tvm-winograd"
logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """Bad input from the command line (exit code 2)."""


# --------------------------------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------------------------------

def _parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]] | None:
    """``["input:1,3,224,224"]`` -> ``{"input": (1, 3, 224, 224)}``."""
    if not items:
        return None
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape {item!r} is not NAME:D1,D2,... with positive integers")
        shapes[name] = shape
    return shapes


def _parse_inputs(items: Sequence[str] | None) -> dict:
    """``["data=x.npy"]`` -> ``{"data": np.ndarray}``."""
    import numpy as np

    inputs = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--input {item!r} is not NAME=FILE.npy")
        if not Path(path).is_file():
            raise UsageError(f"input file {path!r} (for {name!r}) does not exist")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except Exception as err:  # numpy raises several types for a bad file
            raise UsageError(f"input file {path!r} is not a readable .npy array: {err}") from None
    return inputs


def _target(text: str):
    from .targets import resolve_target

    return resolve_target(text)


def _schedules_dir(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise UsageError(f"schedules directory {path!r} does not exist")
    if not p.is_dir():
        raise UsageError(f"schedules directory {path!r} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UsageError(f"schedules directory {path!r} is not readable")
    return str(p)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(description: str):
    """A transient spinner on stderr for a step that takes seconds to minutes."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=_console(), transient=True, disable=not sys.stderr.isatty())
    progress.add_task(description, total=None)
    return progress


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    Console(width=200).print(table)


def _emit_json(obj: object) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _load(args) -> tuple:
    from .frontend import load_model

    with _progress(f"importing {args.model}"):
        return load_model(args.model, _parse_input_shapes(getattr(args, "input_shape", None)))


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def cmd_layers(args) -> int:
    from .export import prepare_graph
    from .relax_pass import rewrite_winograd

    mod, _info = _load(args)
    target = _target(args.target)
    mod = prepare_graph(mod, target, args.layout)
    _, reports = rewrite_winograd(mod, target, _schedules_dir(args.schedules), args.algo)
    if args.json:
        _emit_json([r.as_dict() for r in reports])
        return 0
    rows = [(r.index, r.name, "x".join(map(str, r.input_shape)), "x".join(map(str, r.weight_shape)),
             f"{r.stride[0]}x{r.stride[1]}", r.groups, r.algorithm, r.m, r.epilogue, r.source, r.reason)
            for r in reports]
    _print_table(f"{args.model}: {sum(r.algorithm == 'winograd' for r in reports)} of {len(reports)} "
                 "convolutions use Winograd",
                 ["#", "layer", "input", "weight", "stride", "groups", "algorithm", "m", "epilogue", "source",
                  "reason"], rows)
    return 0


def cmd_tune(args) -> int:
    from .export import prepare_graph
    from .relax_pass import model_workloads
    from .targets import is_cuda
    from .tune.model import tune_whole_model
    from .tune.paths import schedules_dir, tuning_logs_dir

    mod, _info = _load(args)
    target = _target(args.target)
    for flag, value in (("--trials", args.trials), ("--trials-per-task", args.trials_per_task)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value} must be at least 1")
    tasks = args.tasks
    if tasks == "all" and is_cuda(target):
        logger.warning("on CUDA only the conv layers are tuned (the other functions "
                                            "get DLight's schedules); --tasks convs")
        tasks = "convs"
    functions = []
    if tasks == "all":
        from .model_tasks import function_tasks

        functions = function_tasks(mod, target, args.schedules, args.layout)
    # MetaSchedule's task scheduler logs its tables to stdout (a handler bound to sys.stdout when made):
    # with --json, stdout carries only the JSON
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        # the layers as compile sees them (transposed/dilated convs rewritten, channels padded), in its layout
        layers = model_workloads(prepare_graph(mod, target, args.layout), target, "keep")
        result = tune_whole_model(layers, functions, target,
                                  trials=args.trials, trials_per_task=args.trials_per_task, log_dir=args.log_dir,
                                  schedules_dir=args.schedules, rpc_tracker=args.rpc_tracker,
                                  rpc_key=args.rpc_key, progress=not args.json)
    if args.json:
        _emit_json(result if tasks == "all" else result["layers"])
        return 0
    rows = [(r["key"], r["algorithm"], r.get("m"), ", ".join(f"{k}={v:.3f}" for k, v in sorted(r["times_ms"].items())),
             f"{r['speedup_vs_direct']:.2f}x" if r.get("speedup_vs_direct") else None) for r in result["layers"]]
    _print_table("tuned layers (median ms per candidate)", ["workload", "chosen", "m", "candidates (ms)",
                                                             "vs direct"], rows)
    if result["functions"]:
        def ms(v):
            return f"{v:.4f}" if v is not None else None
        rows = [(r["name"], r["kind"], r["weight"], r["records"], ms(r["default_ms"]), ms(r["tuned_ms"]),
                 "tuned" if r["stored"] else "default", f"{r['speedup']:.2f}x" if r["speedup"] else r["reason"])
                for r in result["functions"]]
        _print_table("other functions (median ms)", ["function", "kind", "calls", "trials", "default", "tuned",
                                                      "uses", "gain / why not"], rows)
    print(f"budget: {result['trials']} trials, at most {result['trials_per_task']} per task; "
          f"wall time {result['wall_s']:.0f} s")
    print(f"tuning logs: {tuning_logs_dir(target, args.log_dir)}")
    print(f"schedules: {schedules_dir(target, args.schedules)} (compile and layers apply them from here)")
    return 0


def cmd_compile(args) -> int:
    from .export import compile_model, export_library
    from .runtime import library_metadata
    from .targets import is_cuda
    from .tune.paths import schedules_dir

    target = _target(args.target)
    sdir = _schedules_dir(args.schedules)
    if not str(args.output).endswith(".so"):
        raise UsageError(f"output {args.output!r} must end in .so")
    mod, info = _load(args)
    start = time.perf_counter()
    with _progress(f"compiling {args.model} for {target.kind.name}"):
        # on CUDA: loads the driver (stand-in), nvcc
        ex, reports = compile_model(mod, target, sdir, args.algo, layout=args.layout, params=args.params,
                                    kernel_dtype=args.kernel_dtype)
        path = export_library(ex, args.output)
    if is_cuda(target):
        from .cuda.build import require_cubin

        require_cubin(path, str(target.attrs.get("arch", "")))
    seconds = time.perf_counter() - start
    params_file = None
    if args.params == "separate":
        from .params import params_path_for

        params_file = params_path_for(path)
    n_wino = sum(r.algorithm == "winograd" for r in reports)
    kernel_dtypes = dict(collections.Counter(r.kernel_dtype for r in reports if r.kernel_dtype))  # U's storage
    records = schedules_dir(target, sdir)
    tuned = records / "database_tuning_record.json"
    summary = {"output": str(path), "target": str(target), "seconds": round(seconds, 2),
               "library_bytes": path.stat().st_size,
               "params_file": str(params_file) if params_file else None,
               "params_bytes": params_file.stat().st_size if params_file else None,
               "schedules": str(records) if tuned.is_file() else None,
               "inputs": {n: {"shape": list(info.input_shapes[n]), "dtype": info.input_dtypes[n]}
                          for n in info.input_names},
               "winograd_layers": n_wino, "conv_layers": len(reports),
               "kernel_dtype": args.kernel_dtype, "winograd_kernel_dtypes": kernel_dtypes,
               "layout_transforms": library_metadata(ex)["layout_transforms"],
               "layout_transform_sites": dict(reports.layout_transforms),
               "layers": [r.as_dict() for r in reports],
               "functions": [f.as_dict() for f in reports.functions],
               "function_counts": reports.counts(), "unscheduled": reports.unscheduled(),
               "fallbacks": reports.fallbacks()}
    # unscheduled functions and simple-schedule fallbacks: warned (by name) by compile_model's log
    if args.json:
        _emit_json(summary)
    else:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s: "
              f"{n_wino} of {len(reports)} convolutions use Winograd, {summary['layout_transforms']} layout transforms "
              f"({reports.layout_transforms['inside']} inside the model)")
        if params_file:
            print(f"weights: {params_file} ({params_file.stat().st_size / 1e6:.1f} MB), transformed at load")
        if args.kernel_dtype != "float32":
            print("Winograd weights U stored as: " + ", ".join(f"{d} in {n} layers" for d, n in kernel_dtypes.items()))
        print("inputs: " + ", ".join(f"{n} {info.input_dtypes[n]}{list(info.input_shapes[n])}" for n in info.input_names))
        print(f"tuning records: {records}" if tuned.is_file() else f"no tuning records in {records}: untuned")
        print(f"{len(reports.functions)} functions, scheduled by: "
              + ", ".join(f"{by} {n}" for by, n in reports.counts().items()))
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from .runtime import load_vm, run  # the TVM runtime alone: no compiler, no Relax Python, no frontend

    inputs = _parse_inputs(args.input)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be at least 1")
    vm, device = load_vm(args.library, args.device, threads=args.threads, params=args.params)
    outputs = _run_checked(vm, inputs, device)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        run(vm, inputs, device)
        times.append((time.perf_counter() - start) * 1e3)
    median = float(np.median(times))
    written = []
    if args.output:
        out = Path(args.output)
        if len(outputs) == 1:
            np.save(out, outputs[0])
            written.append(str(out))
        else:
            for i, arr in enumerate(outputs):
                p = out.with_name(f"{out.stem}_{i}{out.suffix or '.npy'}")
                np.save(p, arr)
                written.append(str(p))
    if args.json:
        import tvm

        _emit_json({"median_ms": median, "repeat": args.repeat, "times_ms": times,
                    "threads": int(tvm.runtime.num_threads()),
                    "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
                    "written": written})
    else:
        for i, o in enumerate(outputs):
            print(f"output {i}: shape {list(o.shape)} {o.dtype}, checksum {float(np.sum(o, dtype=np.float64)):.6g}")
        for p in written:
            print(f"wrote {p}")
        print(f"latency: median {median:.3f} ms over {args.repeat} runs")
    return 0


def _run_checked(vm, inputs: dict, device) -> list:
    """Run once; no input at all names the model's inputs (the rest is checked by ``runtime.run``:
    names, dtypes and shapes, each a one-line ValueError)."""
    from .runtime import input_names, run

    if not inputs:
        names = input_names(vm)
        raise UsageError(f"no --input given: the model takes {', '.join(names)}")
    return run(vm, inputs, device)


def cmd_bench(args) -> int:
    from .bench import run_bench

    if not args.debug:
        logging.getLogger("tvm_winograd").setLevel(logging.INFO)
    return run_bench(args)


def cmd_accuracy(args) -> int:
    from .accuracy import accuracy_markdown
    from .accuracy_report import measure_accuracy

    if not 2 <= args.r <= 7:
        raise UsageError(f"--r {args.r} must be in 2..7")
    ms = tuple(args.m) if args.m else tuple(m for m in range(2, 9) if m + args.r - 1 <= 14)
    bad = [m for m in ms if not 2 <= m <= 8 or m + args.r - 1 > 14]
    if bad:
        raise UsageError(f"--m {bad[0]} is out of range for r={args.r} (2 <= m <= 8, m + r - 1 <= 14)")
    dtypes = tuple(args.dtype) if args.dtype else ("float32", "float16")
    with _progress("measuring Winograd errors"):
        rows = measure_accuracy(ms=ms, r=args.r, dtypes=dtypes, shape=(1, args.channels, args.size, args.size))
    if args.json:
        _emit_json(rows)
    else:
        print(accuracy_markdown(rows))
    return 0


def cmd_cuda_check(args) -> int:
    """0 iff every row passed; the layers are the model's conv layers as a compile lowers them (Winograd
    layers with their design spaces, the others as our direct PrimFunc under its default schedule)."""
    from .cuda.check import cuda_check, format_checks, passed
    from .relax_pass import conv_workloads

    mod, _info = _load(args)
    workloads = conv_workloads(mod, args.target, ineligible="tir")
    rows = cuda_check(workloads, args.target, samples=args.samples, seed=args.seed) if workloads else []
    if args.json:
        _emit_json({"passed": passed(rows), "rows": [r.as_dict() for r in rows]})
    else:
        print(format_checks(rows))
    return 0 if passed(rows) else 1


def _csv(text: str, convert=str) -> tuple:
    try:
        values = tuple(convert(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not a comma-separated list") from None
    if not values:
        raise UsageError(f"{text!r} is empty")
    return values


def cmd_gpu_pack(args) -> int:
    """Build the GPU pack; print each layer as it is built, then the pack's size."""
    from .gpu_pack import build_pack

    models, batches, dtypes = _csv(args.models), _csv(args.batch, int), _csv(args.dtype)
    bad = [d for d in dtypes if d not in ("float32", "float16")]
    if bad:
        raise UsageError(f"dtype {bad[0]!r} must be float32 or float16")
    if any(b < 1 for b in batches):
        raise UsageError(f"batch {min(batches)} must be positive")
    select = (lambda layer: any(t in layer.id for t in args.layers)) if args.layers else None
    manifest = build_pack(args.output, args.target, samples=args.samples, seed=args.seed, models=models,
                          batches=batches, dtypes=dtypes, select=select, whole_models=not args.no_models,
                          extra_pythons=tuple(v.strip() for v in args.python.split(",") if v.strip()),
                          progress=None if args.json else (lambda line: print(line, flush=True)))
    size = sum(p.stat().st_size for p in Path(args.output).rglob("*") if p.is_file())
    kernels = sum(len(layer["kernels"]) for layer in manifest["layers"])
    if args.json:
        _emit_json({"output": str(args.output), "arch": manifest["arch"], "layers": len(manifest["layers"]),
                    "kernels": kernels, "bytes": size, "seconds": manifest["built_s"]})
    else:
        print(f"wrote {args.output}: {len(manifest['layers'])} layers, {kernels} kernels for {manifest['arch']}, "
              f"{size / 2**20:.1f} MiB in {manifest['built_s']} s")
        print(f"on the GPU host: python {Path(args.output) / 'run.py'}   then here: tvm-winograd gpu-import "
              f"{Path(args.output) / 'report.json'}")
    return 0


def cmd_gpu_import(args) -> int:
    from .tune.gpu_import import format_import, import_report

    result = import_report(args.report, args.schedules, args.log_dir)
    if args.json:
        _emit_json({"gpu": result.gpu, "target": result.target, "records": result.records, "best": result.best,
                    "schedules": result.schedules_dir, "log_dir": result.log_dir, "skipped": result.skipped,
                    "choices": {k: {"algorithm": c.algorithm, "m": c.m, "times_ms": c.times_ms}
                                for k, c in result.choices.items()}})
    else:
        print(format_import(result))
    return 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

MODEL_HELP = "a .onnx file, a torch.export program (.pt2) or a built-in name: resnet18, resnet50, vgg16, tiny_mixed"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2,...",
                   help="fix an input's shape, e.g. input:1,3,224,224 (repeatable)")


def _add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=("auto", "NCHW", "NHWC", "keep"), default="auto",
                   help="conv layout to compile in: auto = NHWC on CPUs, the model's on GPUs (default)")


def _add_target(p: argparse.ArgumentParser, default: str = "llvm") -> None:
    p.add_argument("--target", default=default,
                   help="llvm (this CPU), cuda, sm_80/sm_86/sm_89/sm_90, a TVM tag or a JSON dict "
                        f"(default {default})")


def _cmd(sub, name: str, func: Callable, help_: str, example: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=f"{help_}\n\nexample:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Winograd convolution for Apache TVM: inspect, tune, compile and run models.",
        epilog="example:\n  tvm-winograd compile resnet18 -o resnet18.so\n"
               "  tvm-winograd run resnet18.so --input input=x.npy -o y.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _cmd(sub, "layers", cmd_layers, "list the conv layers, their eligibility and chosen algorithm",
             "tvm-winograd layers resnet18 --target llvm")
    _add_model_args(p)
    _add_target(p)
    p.add_argument("--schedules", metavar="DIR", help="tuning results to apply (default ./schedules, where tune writes)")
    p.add_argument("--algo", choices=("auto", "winograd", "direct"), default="auto")
    _add_layout(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "tune", cmd_tune, "tune every task of a model by measurement: each conv layer's algorithm "
             "(direct vs Winograd m=2,4,6) and, on CPUs, every other function",
             "tvm-winograd tune resnet18 --target llvm --trials 2000")
    _add_model_args(p)
    _add_target(p)
    p.add_argument("--trials", type=int, help="measured trials for the whole model (default: 64 per task)")
    p.add_argument("--trials-per-task", type=int, metavar="N",
                   help="at most N trials per task (a conv candidate or a function; default: --trials spread evenly)")
    p.add_argument("--tasks", choices=("all", "convs"), default="all",
                   help="all: conv layers and the model's other functions (default); convs: conv layers only")
    p.add_argument("--log-dir", metavar="DIR", help="tuning log root (default ./tuning_logs)")
    p.add_argument("--schedules", metavar="DIR", help="where the best records and choices go (default ./schedules)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on the servers of a TVM RPC tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="device key of the RPC servers")
    _add_layout(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "compile", cmd_compile, "compile a model into one deployable shared library",
             "tvm-winograd compile resnet18 --target llvm -o resnet18.so")
    _add_model_args(p)
    _add_target(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.so", help="the library to write")
    p.add_argument("--schedules", metavar="DIR", help="tuning results to apply (default ./schedules, where tune writes)")
    p.add_argument("--algo", choices=("auto", "winograd", "direct"), default="auto",
                   help="auto: measured choice, else heuristic (default)")
    _add_layout(p)
    p.add_argument("--params", choices=("embed", "separate"), default="embed",
                   help="embed: the weights, transformed at compile time, inside the library (default); "
                        "separate: the library without weights plus OUT.params beside it (the model's weights "
                        "in its dtype), transformed once at load on the device")
    p.add_argument("--kernel-dtype", choices=("float32", "float16"), default="float32",
                   help="storage of the Winograd layers' transformed weights U (CPUs): float32 (default) or "
                        "float16, opt-in: half the bytes the deep layers read, fp32 data and accumulation, "
                        "~1e-3 relative error per layer (ACCURACY.md)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "run", cmd_run, "run a compiled library with the TVM runtime on .npy inputs",
             "tvm-winograd run resnet18.so --input input=x.npy -o y.npy --repeat 10")
    p.add_argument("library", help="the .so written by `tvm-winograd compile`")
    p.add_argument("--params", metavar="FILE.params",
                   help="the params file of a library compiled with --params separate (default: the file its "
                        "trailer names, in the library's directory: OUT.params beside OUT.so)")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input (repeatable)")
    p.add_argument("-o", "--output", metavar="Y.npy", help="write the output(s) here")
    p.add_argument("--repeat", type=int, default=1, help="timed runs after one warm-up (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU worker threads (default: TVM_NUM_THREADS if set, else every CPU this process may use)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "bench", cmd_bench,
             "per-layer benchmark: ours vs TVM direct, onnxruntime, OpenVINO, PyTorch (probe, roofline, self-checks)",
             "tvm-winograd bench --layers 'resnet_*' --png bench.png")
    from .bench import add_bench_arguments

    add_bench_arguments(p)

    p = _cmd(sub, "accuracy", cmd_accuracy, "error table of Winograd F(m, r) vs float64 direct convolution",
             "tvm-winograd accuracy --r 3")
    p.add_argument("--r", type=int, default=3, help="kernel size (default 3)")
    p.add_argument("--channels", type=int, default=64, help="input channels (default 64)")
    p.add_argument("--size", type=int, default=32, help="input height = width (default 32)")
    p.add_argument("--dtype", action="append", choices=("float32", "float16"), help="(repeatable; default both)")
    p.add_argument("--m", action="append", type=int, help="tile sizes to measure (repeatable; default 2..8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "cuda-check", cmd_cuda_check,
             "verify sampled CUDA schedules without a GPU: nvcc, GPU limits, ptxas resources, numerics",
             "tvm-winograd cuda-check resnet18 --target sm_80 --samples 4")
    _add_model_args(p)
    _add_target(p, default="sm_80")
    p.add_argument("--samples", type=int, default=8, help="sampled schedules per design space (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "gpu-pack", cmd_gpu_pack,
             "build a self-contained pack of CUDA kernels to check and time on an offline GPU host (run.py there)",
             "tvm-winograd gpu-pack --target sm_90 -o pack_sm90")
    _add_target(p, default="sm_90")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the pack directory (new or empty)")
    p.add_argument("--models", default="resnet18,vgg16", help="built-in models whose 3x3 layers are packed")
    p.add_argument("--batch", default="1,32", help="batch sizes (default 1,32)")
    p.add_argument("--dtype", default="float32,float16", help="dtypes (default float32,float16)")
    p.add_argument("--layers", action="append", metavar="TEXT", help="only layers whose id contains TEXT")
    p.add_argument("--samples", type=int, default=1,
                   help="sampled schedules per design space (default 1: the default pack stays under 60 MiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-models", action="store_true", help="pack the layers only, not the whole models")
    p.add_argument("--python", default="3.12,3.13", metavar="X.Y,...",
                   help="other Python versions the pack's TVM runtime serves besides this one (tvm_ffi's "
                        "extension fetched with pip; default 3.12,3.13; '' for none)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _cmd(sub, "gpu-import", cmd_gpu_import,
             "store a GPU pack report's measured kernels as tuning records and algorithm choices",
             "tvm-winograd gpu-import pack_sm90/report.json")
    p.add_argument("report", help="report.json written by the pack's run.py on the GPU host")
    p.add_argument("--schedules", metavar="DIR", help="where the best records and choices go (default ./schedules)")
    p.add_argument("--log-dir", metavar="DIR", help="tuning log root for every record (default ./tuning_logs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _version() -> str:
    from ._version import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, NotImplementedError, FileNotFoundError, ConnectionError) as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
