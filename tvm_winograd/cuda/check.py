"""``cuda-check``: prove the CUDA design spaces without a GPU, per layer.

For every Winograd layer, every design space MetaSchedule generates from our rules, and ``samples``
seeded samples of each (drawn as the search draws them: the space's trace replayed without its
decisions, then MetaSchedule's CUDA postprocessors), plus the fixed default schedule; and for every
layer a model runs as our direct PrimFunc (1x1, stride 2, depthwise, grouped, or direct by choice:
space ``direct``, m 0), the default CUDA schedule a compile gives it (DLight's GPU rules):

(a) TVM's GPU verification for the target's limits (``VerifyGPUCode``; samples the postprocessors
    reject are counted as ``rejected`` -- the search never measures them -- and replaced),
(b) an nvcc build for the target's ``sm_XX`` that must hold a cubin for it,
(c) ptxas's registers, spills and shared memory per kernel, and a static occupancy estimate,
(d) numerics: the schedule run serially on the CPU against the float64 reference (the shared check of
    :mod:`tvm_winograd.verify`: worst-case bound and random-rounding model),
(e) for the ``tensorcore`` / ``tensorcore_pipelined`` spaces: the generated CUDA source really issues
    tensor-core instructions (``wmma::mma_sync`` or ``mma.sync``).

A row passes only if every candidate in it passed (a)-(b)-(d)-(e); ``passed(rows)`` is the overall verdict.

What (d) verifies for the tensor-core spaces.  Tensor-core intrinsics cannot run on a CPU.  The check
therefore runs the candidate as it is *just before* MetaSchedule's last postprocessor,
``RewriteTensorize``: every other postprocessor has been applied (cooperative fetch, unbound blocks,
unrolling, reduction decomposition, GPU verification), and the blocks that ``RewriteTensorize`` then
replaces (wmma fill / load_a / load_b / sync / store, each annotated ``meta_schedule.auto_tensorize``)
are still plain TIR.  ``tensorize`` only succeeds on a block that is structurally equal to the
intrinsic's *description* (its ``desc`` PrimFunc: a 16x16x16 fp16 x fp16 -> fp32 multiply-accumulate,
a 16x16 copy between shared memory and a fragment, a 16x16 zero fill), so the program run on the CPU
computes what the tensorized program computes *if* TVM's wmma implementations match their descriptions.
Verified this way: tiling, re-indexing (NCHW's transposed kernel_pack), ``pad_einsum`` padding of K, C
and P to multiples of 16, the shared / ``wmma.*`` fragment buffers (made global) and their index maps,
fp16 operands with fp32 accumulation, and the fused transforms and epilogue around the GEMM.  Not
verified: that TVM's wmma ``impl`` functions and nvcc's ``nvcuda::wmma`` implement those descriptions
(fragment layouts, ``ldm`` strides, fragment indexing), races and barriers, and dynamic shared memory
sizing -- those need a GPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import tvm
from tvm.s_tir.schedule import Trace
from tvm.target import Target

from ..compute import Epilogue, WinogradConfig, direct_func, winograd_func
from ..schedule.cuda import schedule_cuda_default, space_generator
from ..schedule.cuda.context import apply_postproc, light_tune_context, postprocs_for
from ..schedule.cuda.simt import BGEMM_SPACES
from ..schedule.cuda.tensorcore import (TENSORCORE_PIPELINED_SPACE, TENSORCORE_SPACE, TENSORCORE_SPACES,
                                        is_tensorcore_schedule)
from ..targets import is_cuda, resolve_target
from ..heuristic import choose_algorithm
from ..workload import Conv2dSpec, check_winograd
from .build import SourceOnlyModuleError, build_cuda, target_sm
from .driver_stub import ensure_cuda_runtime
from .verify import check_numerics, occupancy, verify_gpu

logger = logging.getLogger(__name__)

__all__ = ["CandidateCheck", "LayerCheck", "design_spaces", "sample_space", "cuda_check", "passed",
           "format_checks", "winograd_layers", "direct_layers", "apply_postprocs_keep_pre_tensorize",
           "TENSOR_CORE_MARKERS"]

#: Draw at most this many samples per requested one before giving up on a space.
MAX_DRAWS_PER_SAMPLE = 4


@dataclass
class CandidateCheck:
    """One schedule: its seed, decisions and what each check found."""

    seed: int | None
    decisions: str
    gpu_verified: bool = False
    compiled: bool = False
    cubin: str = ""
    registers: int = 0  # max over the kernels
    spills: int = 0  # bytes, summed over kernels (stores + loads)
    shared_bytes: int = 0  # max over the kernels, static (ptxas) + dynamic (launch size)
    occupancy: float | None = None  # min over the kernels
    numerics_ok: bool | None = None
    error_ratio: float | None = None  # the numerics' worst statistic over its limit (<= 1 passes)
    error: str = ""
    #: tensorcore space only: the CUDA source issues wmma::mma_sync / mma.sync (None: not applicable)
    tensor_core: bool | None = None

    @property
    def passed(self) -> bool:
        return (self.gpu_verified and self.compiled and self.numerics_ok is not False and self.tensor_core is not False
                and not self.error)


@dataclass
class LayerCheck:
    """The verdict for one (layer, design space): the row ``cuda-check`` prints."""

    layer: str
    m: int
    space: str
    target: str
    candidates: list[CandidateCheck] = field(default_factory=list)
    rejected: int = 0  # samples the postprocessors (incl. VerifyGPUCode) rejected and replaced
    requested: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return len(self.candidates) >= self.requested > 0 and all(c.passed for c in self.candidates)

    @property
    def compile_ok(self) -> bool:
        return bool(self.candidates) and all(c.compiled for c in self.candidates)

    @property
    def numerics_ok(self) -> bool | None:
        vals = [c.numerics_ok for c in self.candidates if c.numerics_ok is not None]
        return all(vals) if vals else None

    @property
    def max_registers(self) -> int:
        return max((c.registers for c in self.candidates), default=0)

    @property
    def max_spills(self) -> int:
        return max((c.spills for c in self.candidates), default=0)

    @property
    def max_shared_bytes(self) -> int:
        return max((c.shared_bytes for c in self.candidates), default=0)

    @property
    def min_occupancy(self) -> float | None:
        vals = [c.occupancy for c in self.candidates if c.occupancy is not None]
        return min(vals) if vals else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(passed=self.passed, compile_ok=self.compile_ok, numerics_ok=self.numerics_ok,
                   max_registers=self.max_registers, max_spills=self.max_spills,
                   max_shared_bytes=self.max_shared_bytes, min_occupancy=self.min_occupancy)
        return out


def passed(rows: Iterable[LayerCheck]) -> bool:
    """The overall verdict: every row passed (and there was at least one)."""
    rows = list(rows)
    return bool(rows) and all(r.passed for r in rows)


# --------------------------------------------------------------------------------------------------
# Design spaces and samples
# --------------------------------------------------------------------------------------------------

#: Order of the rows of one layer.
_SPACE_ORDER = BGEMM_SPACES + TENSORCORE_SPACES

#: Instructions that only tensor cores execute, as nvcc sees them in TVM's CUDA source.
TENSOR_CORE_MARKERS = ("wmma::mma_sync", "mma.sync")


def _space_name(sch) -> str:
    annotations = [str(inst.attrs) for inst in sch.trace.insts if inst.kind.name == "Annotate"]
    if any("meta_schedule.auto_tensorize" in a for a in annotations):
        pipelined = any("software_pipeline_stage" in a for a in annotations)
        return TENSORCORE_PIPELINED_SPACE if pipelined else TENSORCORE_SPACE
    return "shared" if any("meta_schedule.cooperative_fetch" in a for a in annotations) else "direct"


def design_spaces(func: tvm.tirx.PrimFunc, target: Target) -> list[tuple[str, tvm.s_tir.Schedule]]:
    """The design spaces :func:`tvm_winograd.schedule.cuda.space_generator` generates for ``func`` and
    ``target``, named by their bgemm space (``shared`` / ``direct`` / ``tensorcore`` / ``tensorcore_pipelined``;
    the last two for fp16 packs on sm_75+ only, see :func:`tvm_winograd.schedule.cuda.bgemm_spaces`)."""
    mod = tvm.IRModule({"main": func})
    ctx = light_tune_context(mod, target, space_generator())
    with target:  # the custom rules read the arch from the current target
        spaces = ctx.space_generator.generate_design_space(mod)
    named = sorted(((_space_name(s), s) for s in spaces), key=lambda t: _SPACE_ORDER.index(t[0]))
    return named


def apply_postprocs_keep_pre_tensorize(sch: tvm.s_tir.Schedule, target: Target, postprocs
                                       ) -> tuple[str | None, tvm.s_tir.Schedule | None]:
    """Apply ``postprocs`` in order like :func:`~tvm_winograd.schedule.cuda.context.apply_postprocs` (a postprocessor
    that raises rejects, as in MetaSchedule's search); also return a
    copy of the schedule taken just before ``RewriteTensorize`` when that postprocessor has blocks to
    tensorize (the CPU-runnable form of a tensorcore candidate; None otherwise)."""
    snapshot = None
    for p in postprocs:
        if type(p).__name__ == "RewriteTensorize" and is_tensorcore_schedule(sch):
            snapshot = sch.copy()
        if not apply_postproc(p, sch):
            return type(p).__name__, None
    return None, snapshot


def sample_space(space: tvm.s_tir.Schedule, mod: tvm.IRModule, seed: int) -> tvm.s_tir.Schedule:
    """Replay the space's trace with fresh decisions from ``seed`` (as the search's initial population)."""
    sch = tvm.s_tir.Schedule(mod, seed=seed)
    Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
    return sch


def _decisions(sch: tvm.s_tir.Schedule) -> str:
    parts = []
    for value in sch.trace.decisions.values():
        if isinstance(value, (list, tuple, tvm.ir.Array)):
            parts.append("x".join(str(int(v)) for v in value))
        else:
            parts.append(str(int(value)))
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Checking one candidate
# --------------------------------------------------------------------------------------------------

def _check_candidate(sch: tvm.s_tir.Schedule, target: Target, spec: Conv2dSpec, config: WinogradConfig | None,
                     epilogue: Epilogue, seed: int | None, numerics: bool, gpu_verified: bool,
                     numerics_sch: tvm.s_tir.Schedule | None = None, tensor_core: bool = False) -> CandidateCheck:
    """Checks (b)-(e) of one candidate.  ``numerics_sch`` is what runs on the CPU instead of ``sch`` (the
    pre-``RewriteTensorize`` form of a tensorcore candidate); ``tensor_core`` requires tensor-core
    instructions in the CUDA source.  ``config`` None: a direct function."""
    cand = CandidateCheck(seed=seed, decisions=_decisions(sch), gpu_verified=gpu_verified)
    func = sch.mod["main"]
    try:
        built = build_cuda(func, target)
    except SourceOnlyModuleError:
        raise  # not a property of the schedule: the environment is wrong; stop the whole check
    except Exception as err:  # a schedule that does not compile is a failed candidate
        cand.error = f"nvcc build failed: {str(err).splitlines()[-1][:300] if str(err) else err}"
        return cand
    cand.compiled = True
    cand.cubin = ", ".join(f"{i.kind} sm_{i.sm}" for i in built.images)
    kernels = built.kernels
    cand.registers = max((k.registers for k in kernels), default=0)
    cand.spills = sum(k.spills for k in kernels)
    cand.shared_bytes = max((k.total_shared_bytes for k in kernels), default=0)  # static + dynamic
    sm = int(built.arch[3:].rstrip("a"))
    occ = [o for o in (occupancy(k, sm) for k in kernels) if o is not None]
    cand.occupancy = min(occ) if occ else None
    if tensor_core:
        cand.tensor_core = any(marker in built.source for marker in TENSOR_CORE_MARKERS)
        if not cand.tensor_core:
            cand.error = "tensorcore space: no wmma::mma_sync / mma.sync in the CUDA source"
    if numerics:
        cpu_func = func if numerics_sch is None else numerics_sch.mod["main"]
        try:
            result = check_numerics(cpu_func, spec, config, epilogue, seed=0 if seed is None else seed)
            cand.numerics_ok, cand.error_ratio = result.ok, result.worst_ratio
            if not result.ok:
                cand.error = f"numerics: {result.reason[:300]}"
        except Exception as err:
            cand.numerics_ok = False
            cand.error = f"CPU execution failed: {str(err).splitlines()[-1][:300] if str(err) else err}"
    return cand


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def winograd_layers(workloads: Iterable) -> list[tuple[Conv2dSpec, int, Epilogue]]:
    """``(spec, m, epilogue)`` of each distinct Winograd layer (the first of each spec) among a model's
    workloads as :func:`tvm_winograd.relax_pass.conv_workloads` returns them (each with ``spec``,
    ``epilogue`` and ``report.algorithm`` / ``report.m``): the specs come from the pass itself, with their
    stride, dilation and groups."""
    out, seen = [], set()
    for work in workloads:
        if work.report.algorithm != "winograd" or work.spec.key() in seen:
            continue
        seen.add(work.spec.key())
        out.append((work.spec, int(work.report.m), work.epilogue))
    return out


def direct_layers(workloads: Iterable) -> list[tuple[Conv2dSpec, Epilogue]]:
    """``(spec, epilogue)`` of each distinct layer among a model's workloads (as for
    :func:`winograd_layers`) that runs as our direct PrimFunc: every one not chosen for Winograd."""
    out, seen = [], set()
    for work in workloads:
        if isinstance(work, Conv2dSpec) or work.report.algorithm == "winograd" or work.spec.key() in seen:
            continue
        seen.add(work.spec.key())
        out.append((work.spec, work.epilogue))
    return out


def _layers(layers: object, m: int | None, epilogue: Epilogue | None) -> list[tuple[Conv2dSpec, int, Epilogue]]:
    items = [layers] if isinstance(layers, Conv2dSpec) else list(layers)
    if not items:
        raise ValueError("cuda_check needs at least one layer")
    if not any(isinstance(s, Conv2dSpec) for s in items):
        return winograd_layers(items)
    if not all(isinstance(s, Conv2dSpec) for s in items):
        raise TypeError("cuda_check takes Conv2dSpecs or a model's ConvWorkloads, not a mixture")
    out = []
    for spec in items:
        if m is None:
            algo, tile, why = choose_algorithm(spec, "cuda")
            if algo != "winograd":
                raise ValueError(f"layer {spec.key()} is not a Winograd layer ({why}): pass m= to force a tile")
        else:
            tile = m
        check_winograd(spec, tile)
        out.append((spec, int(tile), epilogue if epilogue is not None else Epilogue(bias=True, relu=True)))
    return out


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------

def cuda_check(layers: object, target: object = "sm_80", samples: int = 4, seed: int = 0, *,
               m: int | None = None, epilogue: Epilogue | None = None, numerics: bool = True,
               include_default: bool = True, spaces: Sequence[str] | None = None,
               direct: bool = True) -> list[LayerCheck]:
    """Check the CUDA design spaces of every Winograd layer, and the direct layers' default, without a GPU.

    Parameters
    ----------
    layers
        A :class:`~tvm_winograd.workload.Conv2dSpec`, a list of them, or a model's workloads from
        :func:`tvm_winograd.relax_pass.conv_workloads` (its Winograd layers as the Relax pass chooses them,
        :func:`winograd_layers`; the caller runs the pass: this module sits below it).
    target
        A CUDA target (``"sm_80"``, ``"sm_90"``, a tag, ...).
    samples
        Sampled schedules per design space (>= 1).
    seed
        Base seed; sample ``i`` of space ``j`` of layer ``l`` draws with a seed derived from all four.
    m
        The tile for Conv2dSpec inputs (default: the heuristic's choice).
    epilogue
        The fused epilogue for Conv2dSpec inputs (default: bias + ReLU, to exercise the fusion).
    numerics
        Run the CPU numerics check (d).
    include_default
        Also check :func:`~tvm_winograd.schedule.cuda.schedule_cuda_default` (space ``"default"``).
    spaces
        Check only these generated design spaces (e.g. ``["tensorcore"]``); default: all of them.  A
        requested space the generator did not produce for a layer gives a row with no candidates (failed).
    direct
        For a model's workloads: also check the default CUDA schedule of each layer that runs as our
        direct PrimFunc (space ``"direct"``, checks (a), (b), (c), (d)).

    Returns
    -------
    list[LayerCheck]
        One row per (layer, design space); see :func:`passed` and :func:`format_checks`.
    """
    tgt = _checked_target(target, samples, seed)
    rows: list[LayerCheck] = []
    items = [layers] if isinstance(layers, Conv2dSpec) else list(layers)
    winograd = _layers(items, m, epilogue)
    if direct:
        rows.extend(_direct_row(spec, ep, tgt, numerics) for spec, ep in direct_layers(items))
    for li, (spec, tile, ep) in enumerate(winograd):
        config = WinogradConfig(m=tile)
        func = winograd_func(spec, config, ep)
        if include_default:
            rows.append(_default_row(func, tgt, spec, config, ep, numerics))
        generated = design_spaces(func, tgt)
        if spaces is not None:
            rows.extend(_missing_rows(generated, spaces, spec, tile, tgt, samples))
        for si, (name, space) in enumerate(generated):
            if spaces is not None and name not in spaces:
                continue
            draw_base = 1 + seed * 1_000_003 + li * 10_007 + si * 1_009
            rows.append(_space_row(name, space, func, tgt, spec, config, ep, samples, draw_base, numerics))
    return rows


def _checked_target(target: object, samples: int, seed: int) -> Target:
    """The CUDA target after checking the arguments; loads TVM's CUDA runtime (with the driver stand-in)."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples {samples!r} must be a positive integer")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    tgt = resolve_target(target)
    if not is_cuda(tgt):
        raise ValueError(f"cuda_check needs a CUDA target, not {tgt.kind.name!r} ({target!r})")
    target_sm(tgt)
    ensure_cuda_runtime()
    return tgt


def _default_row(func: tvm.tirx.PrimFunc, target: Target, spec: Conv2dSpec, config: WinogradConfig,
                 epilogue: Epilogue, numerics: bool) -> LayerCheck:
    """The row of :func:`~tvm_winograd.schedule.cuda.schedule_cuda_default` (space ``"default"``)."""
    start = time.perf_counter()
    row = LayerCheck(spec.key(), config.m, "default", str(target.attrs["arch"]), requested=1)
    sch = tvm.s_tir.Schedule(schedule_cuda_default(func, target))
    row.candidates.append(_check_candidate(sch, target, spec, config, epilogue, None, numerics,
                                           verify_gpu(sch, target)))
    row.seconds = time.perf_counter() - start
    return row


def _direct_row(spec: Conv2dSpec, epilogue: Epilogue, target: Target, numerics: bool) -> LayerCheck:
    """The row of a direct layer: the default CUDA schedule a compile gives our direct PrimFunc."""
    start = time.perf_counter()
    row = LayerCheck(spec.key(), 0, "direct", str(target.attrs["arch"]), requested=1)
    sch = tvm.s_tir.Schedule(schedule_cuda_default(direct_func(spec, epilogue), target))
    row.candidates.append(_check_candidate(sch, target, spec, None, epilogue, None, numerics,
                                           verify_gpu(sch, target)))
    row.seconds = time.perf_counter() - start
    return row


def _missing_rows(generated: Sequence[tuple[str, tvm.s_tir.Schedule]], spaces: Sequence[str], spec: Conv2dSpec,
                  tile: int, target: Target, samples: int) -> list[LayerCheck]:
    """A failed row (no candidates) for each requested space the generator did not produce."""
    arch = str(target.attrs["arch"])
    rows = []
    for name in spaces:
        if name not in {n for n, _ in generated}:
            logger.warning("%s: no %s design space generated for %s", spec.key(), name, arch)
            rows.append(LayerCheck(spec.key(), tile, name, arch, requested=samples))
    return rows


def _space_row(name: str, space: tvm.s_tir.Schedule, func: tvm.tirx.PrimFunc, target: Target, spec: Conv2dSpec,
               config: WinogradConfig, epilogue: Epilogue, samples: int, draw_base: int,
               numerics: bool) -> LayerCheck:
    """``samples`` seeded samples of one design space (seeds ``draw_base + draw``), each through the
    postprocessors (rejected ones are counted and replaced, up to :data:`MAX_DRAWS_PER_SAMPLE` draws per
    sample) and :func:`_check_candidate`."""
    start = time.perf_counter()
    mod = tvm.IRModule({"main": func})
    row = LayerCheck(spec.key(), config.m, name, str(target.attrs["arch"]), requested=samples)
    postprocs = postprocs_for(target, mod)
    tensor_core = name in TENSORCORE_SPACES
    for draw in range(samples * MAX_DRAWS_PER_SAMPLE):
        if len(row.candidates) >= samples:
            break
        draw_seed = draw_base + draw
        sch = sample_space(space, mod, draw_seed)
        rejected_by, pre_tensorize = apply_postprocs_keep_pre_tensorize(sch, target, postprocs)
        if rejected_by is not None:
            logger.info("%s %s seed %d rejected by %s", spec.key(), name, draw_seed, rejected_by)
            row.rejected += 1
            continue
        if tensor_core and pre_tensorize is None:
            raise RuntimeError(f"{spec.key()}: a tensorcore candidate had no block to tensorize")
        row.candidates.append(_check_candidate(sch, target, spec, config, epilogue, draw_seed, numerics, True,
                                               numerics_sch=pre_tensorize, tensor_core=tensor_core))
    row.seconds = time.perf_counter() - start
    logger.info("%s %s: %d/%d passed (%d rejected) in %.1fs", spec.key(), name,
                sum(c.passed for c in row.candidates), samples, row.rejected, row.seconds)
    return row


def format_checks(rows: Sequence[LayerCheck]) -> str:
    """The ``cuda-check`` table (markdown) and the overall verdict."""
    lines = ["| layer | m | space | arch | samples | rejected | compile | regs | spills | smem | occupancy "
             "| numerics (worst stat/limit) | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = [c.error_ratio for c in r.candidates if c.error_ratio is not None]
        num = "-" if r.numerics_ok is None else ("ok" if r.numerics_ok else "FAIL")
        if ratios:
            num += f" ({max(ratios):.2g})"
        occ = "-" if r.min_occupancy is None else f"{r.min_occupancy:.0%}"
        lines.append(f"| {r.layer} | {r.m} | {r.space} | {r.target} | {len(r.candidates)}/{r.requested} | {r.rejected} "
                     f"| {'ok' if r.compile_ok else 'FAIL'} | {r.max_registers} | {r.max_spills} | {r.max_shared_bytes} "
                     f"| {occ} | {num} | {'PASS' if r.passed else 'FAIL'} |")
        for c in r.candidates:
            if c.error:
                lines.append(f"|  | | seed {c.seed} | | | | | | | | | {c.error} | FAIL |")
    lines.append("")
    lines.append(f"overall: {'PASS' if passed(rows) else 'FAIL'} ({sum(r.passed for r in rows)}/{len(rows)} rows)")
    return "\n".join(lines)
