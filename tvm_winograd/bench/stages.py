"""Per-stage profile of a Winograd layer on the CPU (``scripts/profile_stages.py``).

A scheduled Winograd PrimFunc runs its stages as consecutive loop nests: at the function's top level
(stage by stage: ``data_pack``, ``bgemm``, then the output with the inverse computed per step) or, in
the fused space, inside the parallel step loop (each step runs all three on its tiles).  Either way
the nests sit in one sequence.  :func:`staged_function` puts each nest under a run-time condition on
a new parameter, so one compiled function runs the first 1, 2 or 3 stages on properly initialized
inputs, and a stage's time is the difference of two counts' times.  (Cutting the later stages out of
the TIR instead is wrong: LLVM then drops much of the GEMM whose result nothing reads; the "GEMM"
ran above the FMA peak.)

Each count is timed *hot* (back-to-back calls: U, input and output stay in the L3 when they fit, as
in ``tvm-winograd bench``) and the whole function also *cold*: each call timed alone after reading a
buffer twice the L3's size, so U, input and output come from DRAM (inside a model every layer's U
does; its input is usually still in the L3, written by the layer before).  Beside each stage: its own
limit (:func:`~tvm_winograd.bench.roofline.winograd_stage_limits`) and where its bytes come from.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from ..contract import BGEMM, DATA_PACK, DATA_PAD, INPUT_TILE, INVERSE, OUTPUT
from ..lowering import build_tir
from .roofline import STAGES, winograd_limit, winograd_stage_limits

logger = logging.getLogger(__name__)

__all__ = ["stage_of_block", "staged_function", "profile_layer", "markdown", "main"]

#: Block-name prefixes of each stage (init and cache blocks carry their stage's name as a prefix).
_STAGE_BLOCKS = {"data_pack": (DATA_PAD, INPUT_TILE, DATA_PACK), "bgemm": (BGEMM,), "inverse": (INVERSE, OUTPUT)}


def stage_of_block(name: str) -> str | None:
    """The stage (:data:`~tvm_winograd.bench.roofline.STAGES`) a block belongs to, by its name."""
    for stage, prefixes in _STAGE_BLOCKS.items():
        if name.startswith(prefixes):
            return stage
    return None


def _children(stmt) -> list:
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return [stmt.block]
    if isinstance(stmt, s_tir.SBlock):
        return [stmt.body] + ([stmt.init] if stmt.init is not None else [])
    if isinstance(stmt, tirx.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    body = getattr(stmt, "body", None)
    return [body] if body is not None else []


def _stages_in(stmt) -> set[str]:
    from tvm import s_tir

    found, pending = set(), [stmt]
    while pending:
        node = pending.pop()
        if isinstance(node, s_tir.SBlock):
            stage = stage_of_block(str(node.name_hint))
            if stage is not None:
                found.add(stage)
        pending.extend(_children(node))
    return found


def _gate(stmt, gates: list, count):
    """``stmt`` with each child of its stage sequence (the first ``SeqStmt`` whose children hold
    different stages) run under ``if count > k``, ``k`` its stage's index (``gates``, per child);
    ``None`` if ``stmt`` holds no such sequence."""
    from tvm import s_tir, tirx

    from ..schedule.common import body_of, with_body

    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([tirx.IfThenElse(count > k, child, None) for child, k in zip(stmt.seq, gates)])
    if isinstance(stmt, (tirx.For, s_tir.SBlockRealize, s_tir.SBlock)):
        body = _gate(body_of(stmt), gates, count)
        return None if body is None else with_body(stmt, body)
    return None


def _stage_sequence(stmt) -> list[set[str]] | None:
    """The stages of each child of the function's stage sequence (see :func:`_gate`)."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.SeqStmt):
        return [_stages_in(child) for child in stmt.seq]
    if isinstance(stmt, (tirx.For, s_tir.SBlock)):
        return _stage_sequence(stmt.body)
    if isinstance(stmt, s_tir.SBlockRealize):
        return _stage_sequence(stmt.block)
    return None


def staged_function(func):
    """``func`` with one more (last) parameter, an int32 ``stages``: a call runs the first ``stages`` of
    :data:`STAGES` and skips the rest (``stages = 3``: the whole layer).  The choice is made at run
    time, so every count runs the same machine code and the compiler cannot drop a stage whose result
    only the skipped ones read.  Raises ``ValueError`` when the stages do not run as one sequence of
    nests in that order (a schedule this profile cannot split)."""
    from tvm import tirx

    sequence = _stage_sequence(func.body)
    if not sequence:
        raise ValueError("the scheduled function has no sequence of stage nests to split")
    order = [next(iter(s)) if len(s) == 1 else None for s in sequence]
    if None in order or set(order) != set(STAGES) or order != sorted(order, key=STAGES.index):
        raise ValueError(f"the stage nests run as {sequence}, not as one nest sequence in the order {STAGES}")
    count = tirx.Var("stages", "int32")
    body = _gate(func.body, [STAGES.index(stage) for stage in order], count)
    return tirx.PrimFunc(list(func.params) + [count], body, func.ret_type, func.attrs)


def _flush_buffer(probe) -> np.ndarray:
    return np.ones(2 * probe.llc_bytes // 4, dtype="float32")


def profile_layer(name: str, batch: int, threads: int, probe, work: Path, rounds: int) -> dict:
    """Hot time of the first 1, 2, 3 stages and cold time of the whole, for the default schedule of the
    layer ``name`` (NHWC, the heuristic's tile), in alternating blocks."""
    import tvm

    from ..compute import block_kernel_pack, kernel_block_of, target_config, winograd_func
    from ..heuristic import choose_algorithm
    from ..reference import conv2d_direct, winograd_weight_transform
    from ..schedule.default import default_decisions, schedule_llvm_default
    from ..targets import resolve_target
    from ..tune.tasks import layer_spec
    from .harness import Competitor, time_alternating

    spec = layer_spec(name, batch, "NHWC")
    target = resolve_target({"kind": "llvm", "num-cores": threads})
    algorithm, m, _why = choose_algorithm(spec, target)
    m = m if algorithm == "winograd" else 4  # profile Winograd even where the heuristic picks direct
    unscheduled = winograd_func(spec, target_config(spec, m, "llvm"))
    fused = default_decisions(unscheduled).get("fused.tiles")
    func = schedule_llvm_default(unscheduled)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    w = rng.standard_normal(spec.weight_shape).astype("float32")
    u = block_kernel_pack(winograd_weight_transform(w.astype(np.float64), m, "NHWC"), kernel_block_of(func))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype="float32"), dev) for a in (x, u)]
    args.append(tvm.runtime.empty(spec.output_shape, "float32", dev))
    flush = _flush_buffer(probe)
    fn = build_tir(staged_function(func), target)["main"]
    comps = [Competitor(f"hot:{stage}", (lambda n=i + 1: fn(*args, n))) for i, stage in enumerate(STAGES)]

    def whole() -> None:
        fn(*args, len(STAGES))

    whole()
    reference = conv2d_direct(x.transpose(0, 3, 1, 2).astype(np.float64), w.transpose(3, 2, 0, 1).astype(np.float64),
                              padding=1).transpose(0, 2, 3, 1)
    err = float(np.max(np.abs(args[2].numpy() - reference)) / np.max(np.abs(reference)))
    if err > 1e-3:  # a sanity check that the profiled function is the layer; accuracy is tested elsewhere
        raise RuntimeError(f"{name}: the profiled function's output differs from the reference by {err:.2e}")

    cold_ms: list[float] = []

    def cold() -> None:  # read a buffer twice the L3's size (clean lines: no write-back), then time one call
        float(flush.max())
        start = time.perf_counter()
        whole()
        cold_ms.append((time.perf_counter() - start) * 1e3)

    comps.append(Competitor("cold", cold))
    timings = {k: t.median_ms for k, t in time_alternating(comps, rounds).items()}
    hot, before = {}, 0.0
    for stage in STAGES:
        hot[stage] = timings[f"hot:{stage}"] - before
        before = timings[f"hot:{stage}"]
    limits = winograd_stage_limits(spec, m, probe)
    total = winograd_limit(spec, m, probe)
    alpha = m + 2
    tiles = spec.batch * -(-spec.out_height // m) * -(-spec.out_width // m)
    return {
        "layer": name, "spec": spec.key(), "m": m, "algorithm": algorithm, "fused_step": fused[1] if fused else None,
        "stage_ms": hot, "hot_ms": before, "cold_ms": statistics.median(cold_ms[2:]),
        "stage_limit_ms": {s: limits[s].ms for s in STAGES}, "limit_ms": total.ms,
        "u_mb": alpha * alpha * spec.in_channels * spec.out_channels * 4 / 1e6,
        "v_mb": alpha * alpha * tiles * spec.in_channels * 4 / 1e6,
        "m_mb": alpha * alpha * tiles * spec.out_channels * 4 / 1e6,
        "io_mb": (np.prod(spec.input_shape) + np.prod(spec.output_shape)) * 4 / 1e6,
        "gflops_hot": spec.flops / (before * 1e6),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    from .harness import report_head

    lines = report_head(meta, f"batch {meta['batch']}; NHWC; untuned default schedules")
    lines += ["| layer | F(m,3) | fused step | data_pack ms (% of its limit) | bgemm ms (%) | inverse + output ms (%) "
              "| hot ms (% of limit) | cold ms | cold - hot | U MB | V MB | M MB | input + output MB |",
              "|" + "---|" * 13]
    for r in rows:
        cells = [f"{r['stage_ms'][s]:.3f} ({r['stage_limit_ms'][s] / r['stage_ms'][s]:.0%})"
                 if r["stage_ms"][s] > 0 else f"{r['stage_ms'][s]:.3f}" for s in STAGES]
        lines.append(f"| {r['layer']} | F({r['m']},3){'' if r['algorithm'] == 'winograd' else ' *'} "
                     f"| {r['fused_step'] or '-'} | " + " | ".join(cells)
                     + f" | {r['hot_ms']:.3f} ({r['limit_ms'] / r['hot_ms']:.0%}) | {r['cold_ms']:.3f}"
                     + f" | {r['cold_ms'] - r['hot_ms']:+.3f} | {r['u_mb']:.1f} | {r['v_mb']:.1f} | {r['m_mb']:.1f}"
                     + f" | {r['io_mb']:.1f} |")
    lines += ["", "Stage times are differences of the times of the first 1, 2, 3 stages (hot); `*`: the heuristic picks direct for this "
              "layer, profiled at F(4,3). Cold: each call after touching a buffer twice the L3's size (as in a "
              "model: U, input and output from DRAM)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..tune.tasks import select_layers
    from .session import bench_session, write_report

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=None, help="comma-separated globs over the benchmark layers (default: all)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-md", default=None)
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        raise SystemExit(f"--rounds {args.rounds} and --batch {args.batch} must be >= 1")
    rows = []
    with bench_session(args.threads, "stages") as session:
        for name in select_layers(args.layers):
            logger.info("== %s", name)
            rows.append(profile_layer(name, args.batch, session.threads, session.probe, session.work, args.rounds))
    meta = session.meta(batch=args.batch, rounds=args.rounds, isolate=False)
    md = markdown(rows, meta)
    print(md)
    write_report(md, {"meta": meta, "rows": rows}, args.out_md, args.out_json)
    return 0
