"""Each default llvm rule (and our direct conv) on its roofline: one ONNX operator per case, compiled
with ``compile_model``'s defaults, timed side by side with onnxruntime and OpenVINO.

    python scripts/bench_rules.py                        # every case, 2 threads
    python scripts/bench_rules.py --cases silu matmul_1024 --rounds 7

A case is a one-operator (or one fused chain) ONNX model at a shape large enough to be bound by DRAM,
the LLC or the FMA peak, not by call overhead: the memory-bound cases read or write at least one array
larger than the 32 MiB L3.  Two figures per case:

- **the whole model** (what a user of that operator gets, layout transforms at the NHWC boundary
  included) against the faster of onnxruntime and OpenVINO, in alternating blocks;
- **the rule's function**: the PrimFunc that takes most of the time (for the convolutions: our direct
  conv, not the layout transforms around it): its share of the model's time, measured per call by the
  VM's instrument hook (a few microseconds of overhead on millisecond calls), times the model's
  alternating median (the instrumented calls alone drift as much as 2x between runs), with the rule that
  scheduled it (the compile report) and its limit: ``max(2 * MACs / FMA peak, bytes / bandwidth)``
  where the bytes are the function's arguments, each read or written once, at the probed DRAM read
  bandwidth (or the LLC's for an argument that fits in half of it; :func:`~.roofline.op_limit`).
  Writes are counted at the read bandwidth, so a memory-bound limit is optimistic (a store costs a
  line fill and a write-back): 100 % is out of reach for copies.
"""

from __future__ import annotations

import argparse
import collections
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .harness import best_of_groups, paired_ratio
from .models import OUTPUT_TOLERANCE, faster_peer
from .peers import measure, peer_recipes, save_npz
from .roofline import op_limit
from .session import bench_session, write_report

logger = logging.getLogger(__name__)

#: Instrumented model calls per case (the function's share of the model is taken from their medians).
INSTRUMENTED_CALLS = 20


@dataclass(frozen=True)
class RuleCase:
    """One benchmark case: ``build(rng)`` gives the ONNX nodes, the model inputs and the initializers."""

    name: str
    family: str  # what it stands for (the rule's family in #14's list)
    build: Callable[[np.random.Generator], tuple[list, dict[str, np.ndarray], dict[str, np.ndarray]]]
    macs: int = 0  # multiply-adds of the case's main function (0: memory-bound operators)
    main: str | None = None  # what scheduled the case's main function (None: the slowest function)


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype("float32")


def _node(op: str, inputs: list[str], output: str, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, [output], **attrs)


def _model(nodes: list, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _gelu(x: str, y: str) -> list:
    """GELU as torch exports it below opset 20: x * 0.5 * (1 + erf(x / sqrt 2))."""
    return [_node("Div", [x, "sqrt2"], "g0"), _node("Erf", ["g0"], "g1"), _node("Add", ["g1", "one"], "g2"),
            _node("Mul", [x, "g2"], "g3"), _node("Mul", ["g3", "half"], y)]


_GELU_CONSTS = {"sqrt2": np.array(np.sqrt(2.0), "float32"), "one": np.array(1.0, "float32"),
                "half": np.array(0.5, "float32")}
_BIG = (1, 256, 224, 224)  # 51 MB: more than the 32 MiB L3, so DRAM-bound


def _unary(op: str, **attrs):
    return lambda rng: ([_node(op, ["x"], "y", **attrs)], {"x": _normal(rng, *_BIG)}, {})


def _conv(c: int, k: int, hw: int, kernel: int, stride: int = 1, group: int = 1):
    def build(rng):
        w = _normal(rng, k, c // group, kernel, kernel) / np.float32(np.sqrt(c // group * kernel * kernel))
        node = _node("Conv", ["x", "w"], "y", kernel_shape=[kernel, kernel], strides=[stride, stride],
                     pads=[kernel // 2] * 4, group=group)
        return [node], {"x": _normal(rng, 1, c, hw, hw)}, {"w": w}
    out = (hw + 2 * (kernel // 2) - kernel) // stride + 1
    return build, k * (c // group) * kernel * kernel * out * out


def _cases() -> list[RuleCase]:
    conv1x1, conv1x1_macs = _conv(256, 1024, 56, 1)
    conv_s2, conv_s2_macs = _conv(128, 256, 56, 3, stride=2)
    depthwise, depthwise_macs = _conv(384, 384, 56, 3, group=384)
    grouped, grouped_macs = _conv(256, 256, 56, 3, group=32)
    return [
        RuleCase("silu", "elementwise", lambda rng: (
            [_node("Sigmoid", ["x"], "s"), _node("Mul", ["x", "s"], "y")], {"x": _normal(rng, *_BIG)}, {})),
        RuleCase("tanh", "elementwise", _unary("Tanh")),
        RuleCase("gelu", "elementwise", lambda rng: (_gelu("x", "y"), {"x": _normal(rng, *_BIG)}, _GELU_CONSTS)),
        RuleCase("hardswish", "elementwise", _unary("HardSwish")),
        RuleCase("relu6", "elementwise", lambda rng: (
            [_node("Clip", ["x", "lo", "hi"], "y")], {"x": _normal(rng, *_BIG)},
            {"lo": np.array(0.0, "float32"), "hi": np.array(6.0, "float32")})),
        RuleCase("add", "elementwise", lambda rng: (
            [_node("Add", ["x", "z"], "y")], {"x": _normal(rng, *_BIG), "z": _normal(rng, *_BIG)}, {})),
        RuleCase("concat", "injective", lambda rng: (
            [_node("Concat", ["x", "z"], "y", axis=1)],
            {"x": _normal(rng, 1, 128, 224, 224), "z": _normal(rng, 1, 128, 224, 224)}, {})),
        RuleCase("transpose", "injective", _unary("Transpose", perm=[0, 2, 3, 1])),
        RuleCase("depth_to_space", "injective", lambda rng: (
            [_node("DepthToSpace", ["x"], "y", blocksize=2, mode="CRD")], {"x": _normal(rng, 1, 1024, 112, 112)}, {})),
        RuleCase("resize_nearest", "injective", lambda rng: (
            [_node("Resize", ["x", "", "scales"], "y", mode="nearest")], {"x": _normal(rng, 1, 256, 112, 112)},
            {"scales": np.array([1, 1, 2, 2], "float32")})),
        RuleCase("pad", "injective", lambda rng: (
            [_node("Pad", ["x", "pads"], "y")], {"x": _normal(rng, *_BIG)},
            {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], "int64")})),
        RuleCase("softmax", "reduction", lambda rng: (
            [_node("Softmax", ["x"], "y", axis=-1)], {"x": _normal(rng, 1, 64, 384, 384)}, {})),
        RuleCase("layer_norm", "reduction", lambda rng: (
            [_node("LayerNormalization", ["x", "scale", "bias"], "y", axis=-1, epsilon=1e-6)],
            {"x": _normal(rng, 1, 50176, 256)}, {"scale": _normal(rng, 256), "bias": _normal(rng, 256)})),
        RuleCase("global_avg_pool", "reduction", lambda rng: (
            [_node("GlobalAveragePool", ["x"], "y")], {"x": _normal(rng, 1, 1024, 112, 112)}, {})),
        RuleCase("max_pool_3x3_s2", "reduction", lambda rng: (
            [_node("MaxPool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
            {"x": _normal(rng, *_BIG)}, {})),
        RuleCase("mlp_gelu", "matmul", lambda rng: (
            [_node("MatMul", ["x", "w"], "m"), _node("Add", ["m", "b"], "mb"), *_gelu("mb", "y")],
            {"x": _normal(rng, 1, 196, 384)},
            {"w": _normal(rng, 384, 1536) / np.float32(20), "b": _normal(rng, 1536), **_GELU_CONSTS}),
            macs=196 * 384 * 1536),
        RuleCase("matmul_1024", "matmul", lambda rng: (
            [_node("MatMul", ["x", "w"], "y")], {"x": _normal(rng, 1024, 1024)},
            {"w": _normal(rng, 1024, 1024)}), macs=1024 ** 3),
        RuleCase("batch_matmul", "matmul", lambda rng: (
            [_node("MatMul", ["a", "b"], "y")], {"a": _normal(rng, 12, 384, 64), "b": _normal(rng, 12, 64, 384)}, {}),
            macs=12 * 384 * 64 * 384),
        RuleCase("gemv_classifier", "matmul", lambda rng: (
            [_node("Gemm", ["x", "w", "b"], "y", transB=1)], {"x": _normal(rng, 1, 2048)},
            {"w": _normal(rng, 1000, 2048), "b": _normal(rng, 1000)}), macs=2048 * 1000),
        RuleCase("conv1x1", "direct conv", conv1x1, macs=conv1x1_macs, main="direct"),
        RuleCase("conv3x3_s2", "direct conv", conv_s2, macs=conv_s2_macs, main="direct"),
        RuleCase("depthwise3x3", "direct conv", depthwise, macs=depthwise_macs, main="direct"),
        RuleCase("grouped3x3_g32", "direct conv", grouped, macs=grouped_macs, main="direct"),
    ]


CASES = {case.name: case for case in _cases()}


def _function_times(library: str, inputs: dict[str, np.ndarray], threads: int, calls: int) -> list[dict]:
    """Per PrimFunc of the model (by symbol): median ms per model call and its arguments' bytes."""
    import tvm

    from ..runtime import load_vm

    vm, dev = load_vm(library, "cpu", threads=threads)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs.values()]
    for _ in range(3):
        vm["main"](*args)
    times: dict[str, list[float]] = collections.defaultdict(list)
    nbytes: dict[str, list[int]] = {}
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *call_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            times[symbol].append((time.perf_counter() - started.pop()) * 1e3)
            nbytes[symbol] = [int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                              for a in call_args if hasattr(a, "shape")]
        return 0

    vm.set_instrument(instrument)
    for _ in range(calls):
        vm["main"](*args)
    rows = [{"symbol": s, "ms": statistics.median(v) * (len(v) // calls), "arg_bytes": nbytes[s]}
            for s, v in times.items() if len(v) >= calls]
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total
    return sorted(rows, key=lambda r: -r["ms"])


def bench_case(case: RuleCase, args, threads: int, work: Path, probe) -> dict:
    from ..export import compile_model, export_library
    from ..frontend import from_onnx_model
    from ..targets import resolve_target

    rng = np.random.default_rng(0)
    nodes, feed, inits = case.build(rng)
    model = _model(nodes, feed, inits)
    d = work / case.name
    d.mkdir(parents=True, exist_ok=True)
    onnx_path = d / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    inputs = save_npz(d / "inputs.npz", feed)
    start = time.perf_counter()
    ex, report = compile_model(from_onnx_model(model), resolve_target({"kind": "llvm", "num-cores": threads}))
    library = str(export_library(ex, d / "ours.so"))
    compile_s = time.perf_counter() - start
    recipes = [{"name": "ours", "kind": "tvm_vm", "library": library, "inputs": inputs, "threads": threads},
               *peer_recipes(str(onnx_path), inputs, threads, skip=frozenset(args.skip) | {"torch"})]
    from .peers import build_competitor

    reference = np.asarray(build_competitor(recipes[1]).output(), dtype=np.float64)
    best = best_of_groups(measure(recipes, args.rounds, reference=reference, tolerance=OUTPUT_TOLERANCE,
                                  what=case.name))
    ms = {k: t.median_ms for k, t in best.items()}
    best_peer = faster_peer(ms)
    funcs = _function_times(library, feed, threads, INSTRUMENTED_CALLS)
    by = {f.name: f.scheduled_by for f in report.functions}
    main = next((f for f in funcs if case.main in (None, by.get(f["symbol"]))), funcs[0])
    function_ms = main["share"] * ms["ours"]  # its share of the instrumented calls, of the alternating median
    limit = op_limit(case.macs, main["arg_bytes"], probe)
    return {"case": case.name, "family": case.family, "ms": ms, "best_peer": best_peer,
            "ratio": paired_ratio(best[best_peer], best["ours"]) if best_peer else None,
            "function": main["symbol"], "scheduled_by": by.get(main["symbol"], "?"), "function_ms": function_ms,
            "others_ms": ms["ours"] - function_ms,
            "limit_ms": limit.ms, "bound": limit.bound, "bytes": limit.bytes_moved, "macs": case.macs,
            "fraction": limit.ms / function_ms, "gflops": 2 * case.macs / (function_ms * 1e6) if case.macs else None,
            "gbs": limit.bytes_moved / (function_ms * 1e6), "unscheduled": report.unscheduled(),
            "compile_s": compile_s}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [meta["probe_md"], "", meta["reliability_md"], "",
             f"Command: `{meta['command']}`; {meta['threads']} threads, medians of {meta['rounds']} alternating "
             f"blocks; wall {meta['wall_s']:.0f} s.", "",
             "| case | family | rule (main function) | function ms | limit ms (bound) | % of limit | GFLOP/s | GB/s "
             "| rest of the model ms | ours ms | onnxruntime ms | openvino ms | ours / faster peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peer = lambda k: f"{r['ms'][k]:.3f}" if k in r["ms"] else "-"  # noqa: E731
        ratio = "-" if r["ratio"] is None else f"**{r['ratio']:.2f}x**"
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.0f}"
        lines.append(f"| {r['case']} | {r['family']} | {r['scheduled_by']} | {r['function_ms']:.3f} | "
                     f"{r['limit_ms']:.3f} ({r['bound']}) | **{100 * r['fraction']:.0f} %** | {gflops} | "
                     f"{r['gbs']:.1f} | {r['others_ms']:.3f} | {r['ms']['ours']:.3f} | {peer('onnxruntime')} | "
                     f"{peer('openvino')} | {ratio} |")
    unscheduled = sorted({f for r in rows for f in r["unscheduled"]})
    lines += ["", f"Unscheduled functions: {', '.join(unscheduled) if unscheduled else 'none'}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), help=f"default: all ({', '.join(CASES)})")
    p.add_argument("--threads", type=int, default=None, help="threads for every competitor (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per competitor (default 5)")
    p.add_argument("--skip", nargs="*", default=[], help="peers to leave out: openvino")
    p.add_argument("--out-md", default=None)
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}: one of {', '.join(CASES)}")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds} must be >= 1")
    rows = []
    with bench_session(args.threads, "rules") as session:
        for name in args.cases:
            row = bench_case(CASES[name], args, session.threads, session.work, session.probe)
            rows.append(row)
            print(f"{name}: {row['scheduled_by']} {row['function_ms']:.3f} ms, {100 * row['fraction']:.0f} % of "
                  f"its limit; model ours {row['ms']['ours']:.3f} ms", file=sys.stderr)
    meta = session.meta(rounds=args.rounds)
    md = markdown(rows, meta)
    print(md)
    write_report(md, {"meta": meta, "rows": rows}, args.out_md, args.out_json)
    return 0
