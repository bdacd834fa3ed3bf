"""Step 5 of :func:`tvm_winograd.export.compile_model`: the Relax build pipeline, the CUDA build environment,
and the one-line description of a failed build."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import tvm
from tvm import relax

from .schedule.direct import hoist_weight_packing
from .schedule.llvm import ApplyLlvmRules, default_rules, schedule_table
from .schedule.llvm.rules import Tuned
from .targets import is_cuda

__all__ = ["build_pipeline", "fusion_passes", "cuda_build_env", "describe_compile_failure"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def cuda_build_env(target: tvm.target.Target):
    """CUDA: build with nvcc (NVRTC needs the cuda-bindings package) under ``with target:``."""
    if not is_cuda(target):
        yield
        return
    # without libcuda TVM silently builds CUDA *source* only: load the driver (or its stand-in)
    from .cuda.driver_stub import ensure_cuda_runtime

    ensure_cuda_runtime()
    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    try:
        with target:
            yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The llvm pipeline up to the rules: library dispatch, LegalizeOps, FuseOps, FuseTIR.  The
    functions after these are the ones the rules schedule and whole-model tuning tunes
    (:func:`tvm_winograd.model_tasks.function_tasks` runs exactly these, so records match)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)


def build_pipeline(target: tvm.target.Target, functions: dict | None = None,
                   tuned: Path | None = None) -> tvm.transform.Pass:
    """The Relax build pipeline: TVM's default, except that on CPUs every PrimFunc left unscheduled
    after legalization and fusion gets a default schedule from the llvm rules
    (:class:`~tvm_winograd.schedule.llvm.ApplyLlvmRules`); TVM's llvm pipeline schedules nothing
    (VGG-16's fully connected layer alone took ~0.9 s per image, ConvNeXt-T ran at 0.01x onnxruntime).

    ``functions``, if given, is filled with :func:`~tvm_winograd.schedule.llvm.schedule_table` of the
    scheduled PrimFuncs (what :func:`compile_model` reports).  ``tuned``: a schedules directory whose
    database records come first (:class:`~tvm_winograd.schedule.llvm.rules.Tuned`, whole-model tuning)."""

    @tvm.transform.module_pass(opt_level=0, name="TvmWinogradRecordSchedules")
    def _record(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if functions is not None:
            functions.update(schedule_table(mod))
        return mod

    if target.kind.name != "llvm":
        return tvm.transform.Sequential([relax.get_default_pipeline(target), _record])
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    rules = None
    if tuned is not None and (Path(tuned) / "database_tuning_record.json").is_file():
        from .tune.database import open_database

        rules = [Tuned(open_database(tuned, readonly=True))] + default_rules()

    @tvm.transform.module_pass(opt_level=0, name="TvmWinogradHoistWeightPacking")
    def _hoist(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # the weight packing the rules put in layout-rewrite blocks (the matmul rule's panels of B):
        # out of the functions, folded on constant weights (as compile_model does for the direct convs)
        return hoist_weight_packing(mod)

    @tvm.transform.module_pass(opt_level=0, name="TvmWinogradCpuPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(
                fusion_passes(target)  # the rules see fused functions
                + [ApplyLlvmRules(rules), _record, _hoist]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )(mod)

    return _pipeline


def describe_compile_failure(err: BaseException, layout: str = "auto") -> str:
    """One line for a failure of ``tvm.compile``: TVM's reason (its first sentence) and the operator it
    failed on, parsed from TVM's message (``Offending call: R.nn.conv2d_transpose(...)``, ``Op(...)``)
    where it names one."""
    text = str(err).strip()
    reason = text.splitlines()[0].strip() if text else type(err).__name__
    reason = reason.split(". ")[0].rstrip(".")
    op = None
    call = re.search(r"\bR\.([A-Za-z_][\w.]*)\(", text)
    if call:
        op = "relax." + call.group(1)
    else:
        named = re.search(r"Op\((relax\.[\w.]+)\)", text)
        op = named.group(1) if named else None
    if op is None:
        return f"TVM failed to compile the model: {reason}"
    where = op
    data_layout = re.search(r'data_layout="(\w+)"', text)
    if call and data_layout:
        where += f" (data_layout {data_layout.group(1)})"
    hint = ""
    if call and data_layout and data_layout.group(1) == "NHWC" and layout in ("auto", "NHWC"):
        hint = "; try layout 'keep' (--layout keep), which leaves the model's layout"
    return f"TVM failed to compile {where}: {reason}{hint}"
