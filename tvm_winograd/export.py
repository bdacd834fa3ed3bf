"""Compile a model with the Winograd pass, export one shared library, load it and run it.

``compile_model`` runs, in order:

1. on CPUs, transposed convs as stride-1 convs + depth-to-space and dilated convs as batches of
   undilated ones (:mod:`~tvm_winograd.relax_conv_forms`), the conv layout (NHWC) and whole vectors of output
   channels (:mod:`~tvm_winograd.relax_channels`); then :func:`~tvm_winograd.relax_pass.rewrite_winograd`
   (all of step 1 skipped with ``rewrite=False``: the same TVM pipeline without our pass, the baseline);
2. ``FoldConstant`` (evaluates the weight transforms on the constant weights) and
   ``DeadCodeElimination`` (drops the then unused weight-transform PrimFuncs);
3. the tuned schedules of ``schedules/<target_dirname>/`` (MetaSchedule JSONDatabase), if any;
4. a default schedule for every still-unscheduled PrimFunc of ours: ``schedule_llvm_default`` for
   Winograd on llvm, ``schedule_direct_llvm`` (register-tiled, weights packed) for our direct
   PrimFunc on llvm, whose weight packing ``hoist_weight_packing`` then folds at compile time, and
   ``tvm_winograd.schedule.cuda.schedule_cuda_default`` on CUDA;
5. :func:`build_pipeline` and ``tvm.compile`` (CUDA: under ``with target:`` with nvcc as the
   compiler, see DESIGN section 3): on llvm TVM's CPU pipeline with our default-schedule rules
   (:mod:`tvm_winograd.schedule.llvm`) after legalization and fusion, on CUDA TVM's default.  A
   failure inside TVM raises :class:`CompileError`, one line naming the operator where TVM's message
   names one.

The returned :class:`~tvm_winograd.compile_report.CompileReport` lists the convolutions' decisions
and, per PrimFunc, what scheduled it (``unscheduled`` ones are also logged as a warning).

With ``params="separate"`` the weights stay out of the library: step 2 leaves them parameters of
``main`` (:func:`tvm_winograd.params.weights_as_inputs`) and before step 5 Relax's
``LiftTransformParams`` moves the weight transforms into ``main_transform_params``, which the runtime
runs once at load (:mod:`tvm_winograd.params`).

``export_library`` appends the integrity trailer of :mod:`tvm_winograd.runtime` (format version,
versions, target, ``main``'s inputs; with separate params the params file's name and sha256) and
writes the params file beside the library.  Loading and running live in :mod:`tvm_winograd.runtime`
(runtime only); ``load_vm``, ``load_and_run`` and ``run`` are re-exported here (the documented API).

Steps 3-4 live in :mod:`tvm_winograd.module_schedules`, step 5's pipeline and build environment in
:mod:`tvm_winograd.pipeline`; this module strings them together, reports and writes the library.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tvm
from tvm import relax

from ._version import __version__
from .compile_report import CompileReport, FunctionReport
from .contract import FALLBACK_REASON_ATTR, UNSCHEDULED, func_attr, kind_of, our_prim_funcs
from .frontend import model_signature
from .lowering import TIR_PIPELINE
from .module_schedules import apply_database, default_schedules
from .params import check_params_mode, lift_weight_transforms, params_path_for, weights_as_inputs, write_params
from .pipeline import build_pipeline, cuda_build_env, describe_compile_failure
from .relax_layout import layout_transform_sites, remove_dead_code
from .relax_pass import LayerReport, convert_conv_layout, rewrite_winograd
from .runtime import append_trailer, load_and_run, load_vm, run  # noqa: F401 (load/run re-exported)
from .relax_channels import pad_output_channels
from .relax_conv_forms import rewrite_conv_forms
from .schedule.default import default_schedule_path
from .schedule.direct import hoist_weight_packing
from .targets import is_cuda, resolve_target
from .tune.paths import schedules_dir as schedules_dir_for

__all__ = [
    "CompileError",
    "compile_model",
    "prepare_graph",
    "prepare_model",
    "rewrite_model",
    "schedule_model",
    "export_library",
    "load_and_run",
    "load_vm",
    "run",
]

logger = logging.getLogger(__name__)

#: The attribute of a compiled Executable that carries what ``export_library`` writes into the trailer.
_METADATA_ATTR = "_tvm_winograd_metadata"
#: The attribute of a compiled Executable holding its separate weights (name -> numpy array), if any.
_WEIGHTS_ATTR = "_tvm_winograd_weights"


class CompileError(NotImplementedError):
    """TVM could not build the model (e.g. an operator it has no lowering for); one line."""


def prepare_model(
    mod: tvm.IRModule,
    target: object = "llvm",
    schedules_dir: str | os.PathLike | None = None,
    algo: str = "auto",
    *,
    rewrite: bool = True,
    ineligible: str = "tir",
    layout: str = "auto",
    params: str = "embed",
    kernel_dtype: str | None = None,
) -> tuple[tvm.IRModule, list[LayerReport]]:
    """Steps 1-4 of :func:`compile_model`: the scheduled Relax module, before the build pipeline."""
    tgt = resolve_target(target)
    mod, reports = rewrite_model(mod, tgt, schedules_dir, algo, rewrite=rewrite, ineligible=ineligible,
                                 layout=layout, params=params, kernel_dtype=kernel_dtype)
    return schedule_model(mod, tgt, schedules_dir), reports


def prepare_graph(mod: tvm.IRModule, target: tvm.target.Target, layout: str = "auto", *,
                  rewrite: bool = True) -> tvm.IRModule:
    """The graph the Winograd pass sees (what ``compile``, ``tune`` and ``layers`` all start from): on
    CPUs transposed and dilated convs rewritten into convs our schedules tile
    (:func:`~tvm_winograd.relax_conv_forms.rewrite_conv_forms`), the conv layout
    (:func:`~tvm_winograd.relax_pass.convert_conv_layout`), and on CPUs whole vectors of output channels
    (:func:`~tvm_winograd.relax_channels.pad_output_channels`); with ``rewrite=False`` the layout only."""
    cpu = rewrite and not is_cuda(target)
    if cpu:
        mod = rewrite_conv_forms(mod)
    mod = convert_conv_layout(mod, target, layout)
    if cpu:
        mod = pad_output_channels(relax.transform.FoldConstant()(mod))
    return mod


def rewrite_model(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    schedules_dir: str | os.PathLike | None = None,
    algo: str = "auto",
    *,
    rewrite: bool = True,
    ineligible: str = "tir",
    layout: str = "auto",
    params: str = "embed",
    kernel_dtype: str | None = None,
) -> tuple[tvm.IRModule, list[LayerReport]]:
    """Steps 1-2: the conv layout, the channel padding, the Winograd pass and the constant folding; our
    PrimFuncs are not scheduled yet (what the schedules database is queried with).  ``params="separate"``:
    the weights become parameters of ``main`` before the folding (their transforms stay in the module)."""
    check_params_mode(params)
    reports: list[LayerReport] = []
    mod = prepare_graph(mod, target, layout, rewrite=rewrite)
    if rewrite:
        mod, reports = rewrite_winograd(mod, target, schedules_dir, algo, ineligible=ineligible,
                                        kernel_dtype=kernel_dtype)
    if params == "separate":  # the weight transforms stay, to be lifted into main_transform_params
        mod = weights_as_inputs(mod)
    mod = relax.transform.FoldConstant()(mod)
    mod = remove_dead_code(mod)
    leftover = [n for n, f in our_prim_funcs(mod).items() if kind_of(f) == "weight_transform"]
    if leftover and params == "embed":
        # Only a non-constant weight can leave one; rewrite_winograd never plans that.
        logger.warning("weight transforms left at run time (weights not constant?): %s", leftover)
    return mod, reports


def schedule_model(mod: tvm.IRModule, target: tvm.target.Target,
                   schedules_dir: str | os.PathLike | None = None) -> tvm.IRModule:
    """Steps 3-4: tuned records, then the defaults, for our PrimFuncs; the direct convs' weight packing
    folded at compile time on CPUs."""
    mod = apply_database(mod, target, schedules_dir_for(target, schedules_dir))
    mod = default_schedules(mod, target)
    if not is_cuda(target):  # the direct convs' weight packing, once at compile time (constant weights)
        mod = hoist_weight_packing(mod)
    return mod


def _function_reports(table: dict, mod: tvm.IRModule) -> list[FunctionReport]:
    """The compile report's function table (with the path each of our default schedules took, see
    :func:`~tvm_winograd.schedule.default.default_schedule_path`); warns naming the functions left unscheduled
    and those whose Winograd default fell back to the simple schedule."""
    ours = our_prim_funcs(mod)
    out = []
    for name, entry in table.items():
        func = ours.get(name)
        notes = {}
        path = None if func is None else default_schedule_path(func)
        if path is not None:
            notes["default_schedule"] = path
            if func_attr(func, FALLBACK_REASON_ATTR) is not None:
                notes["fallback_reason"] = str(func_attr(func, FALLBACK_REASON_ATTR))
        out.append(FunctionReport(name, entry["scheduled_by"], kind_of(func) if func is not None else None,
                                  entry.get("rule_errors"), notes))
    missing = [f.name for f in out if f.scheduled_by == UNSCHEDULED]
    if missing:
        logger.warning("%d functions reach the build unscheduled (scalar, one thread): %s", len(missing),
                       ", ".join(missing))
    slow = [f.name for f in out if f.notes.get("default_schedule") == "fallback"]
    if slow:
        logger.warning("%d Winograd functions fell back to the simple schedule (slower): %s", len(slow),
                       ", ".join(slow))
    return out


def compile_model(
    mod: tvm.IRModule,
    target: object = "llvm",
    schedules_dir: str | os.PathLike | None = None,
    algo: str = "auto",
    *,
    rewrite: bool = True,
    ineligible: str = "tir",
    layout: str = "auto",
    params: str = "embed",
    kernel_dtype: str | None = None,
) -> tuple[tvm.runtime.Executable, CompileReport]:
    """Compile a Relax model (constant weights) with the Winograd pass for ``target``.

    Parameters
    ----------
    mod
        A Relax IRModule, e.g. from :func:`tvm_winograd.frontend.load_model`.
    target
        Anything :func:`~tvm_winograd.targets.resolve_target` accepts (``"llvm"``, ``"cuda"``, ``"sm_90"``...).
    schedules_dir
        The per-target schedules directory (``choices.json`` + JSONDatabase) or its parent;
        ``None``: ``./schedules/<target_dirname>`` (:func:`tvm_winograd.tune.paths.schedules_dir`), where
        ``tune`` writes; absent: untuned.
    algo
        ``"auto"`` | ``"winograd"`` | ``"direct"`` (see :func:`rewrite_winograd`).
    rewrite
        ``False`` compiles the same pipeline without the Winograd pass (the baseline).
    ineligible
        ``"tir"`` (default): static-shape convolutions Winograd cannot run (1x1, stride 2, grouped,
        dilated) become our scheduled direct PrimFunc; ``"relax"`` leaves them ``relax.nn.conv2d``,
        which TVM legalizes to *unscheduled* TIR on llvm (measured: ResNet-18 417 ms vs 61 ms).
    layout
        Layout of the convolutions: ``"auto"`` (default) converts them to NHWC on CPUs and keeps the
        model's on GPUs; ``"NCHW"`` / ``"NHWC"`` force one; ``"keep"`` leaves the model's
        (see :func:`~tvm_winograd.relax_pass.convert_conv_layout`).  Applies with ``rewrite=False`` too.
    params
        ``"embed"`` (default): the weights, transformed at compile time, inside the library.
        ``"separate"``: the library takes its weights from a params file (which
        :func:`export_library` writes beside it) and transforms them once at load
        (``main_transform_params``, see :mod:`tvm_winograd.params`).
    kernel_dtype
        ``None`` / ``"float32"`` (default) or ``"float16"``: the storage of the Winograd layers'
        transformed weights U (opt-in, CPUs; see :func:`~tvm_winograd.relax_pass.rewrite_winograd`).

    Returns
    -------
    (tvm.runtime.Executable, CompileReport)
        The Executable also carries ``main``'s input signature, target and versions (a private
        attribute) for :func:`export_library`'s trailer.  The report is the sequence of
        :class:`~tvm_winograd.relax_pass.LayerReport` (one per convolution) with the table of
        PrimFuncs and what scheduled each in ``functions`` (:mod:`tvm_winograd.compile_report`).

    Raises
    ------
    CompileError
        TVM's build failed (e.g. an operator without a lowering): one line with TVM's reason and the
        operator, where TVM names one (the full error is chained as ``__cause__``).
    """
    tgt = resolve_target(target)
    mod, reports = prepare_model(mod, tgt, schedules_dir, algo, rewrite=rewrite, ineligible=ineligible,
                                 layout=layout, params=params, kernel_dtype=kernel_dtype)
    weights = None
    if params == "separate":
        mod, weights = lift_weight_transforms(mod)
    sites = layout_transform_sites(mod)
    metadata = {"package_version": __version__, "tvm_version": tvm.__version__, "target": str(tgt),
                "inputs": [{**e, "shape": list(e["shape"])} for e in model_signature(mod)],
                "layout_transforms": sum(sites.values())}
    table: dict = {}
    with cuda_build_env(tgt):
        try:
            pipeline = build_pipeline(tgt, table, tuned=schedules_dir_for(tgt, schedules_dir))
            ex = tvm.compile(mod, target=tgt, relax_pipeline=pipeline, tir_pipeline=TIR_PIPELINE)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:  # what TVM's C++ errors become
            raise CompileError(describe_compile_failure(err, layout)) from err
    setattr(ex, _METADATA_ATTR, metadata)  # for export_library
    setattr(ex, _WEIGHTS_ATTR, weights)
    if sites["inside"]:
        logger.info("%d layout transforms left inside the model (besides %d at its inputs, %d at its outputs)",
                    sites["inside"], sites["input"], sites["output"])
    return ex, CompileReport(reports, _function_reports(table, mod), layout_transforms=sites)


def export_library(ex: tvm.runtime.Executable, path: str | os.PathLike) -> Path:
    """Write ``ex`` (code and bound weights) to one shared library at ``path``.

    A ``.so`` gets the integrity trailer of :func:`tvm_winograd.runtime.append_trailer`: the format
    version, the package and TVM versions, the target and the inputs of ``main`` (name, shape with
    symbolic dimensions as strings, dtype) as :func:`compile_model` recorded them (``null`` for an
    Executable compiled otherwise), then the sha256 of the file.  ``load_vm`` checks it.

    An Executable compiled with ``params="separate"`` also writes its weights to the params file
    beside the library (:func:`tvm_winograd.params.params_path_for`: ``x.so`` -> ``x.params``); the
    trailer's ``params`` entry names that file and holds its sha256, size and parameter order.
    """
    path = Path(path)
    if path.suffix not in (".so", ".dylib", ".dll", ".tar"):
        raise ValueError(f"library path {str(path)!r} must end in .so (or .tar)")
    weights = getattr(ex, _WEIGHTS_ATTR, None)
    if weights is not None and path.suffix != ".so":
        raise ValueError(f"library path {str(path)!r} must end in .so with separate params (its trailer names the "
                         "params file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(path))
    if path.suffix == ".so":
        metadata = getattr(ex, _METADATA_ATTR, None) or {
            "package_version": __version__, "tvm_version": tvm.__version__, "target": None, "inputs": None}
        if weights is not None:
            metadata = {**metadata, "params": write_params(params_path_for(path), weights)}
        append_trailer(path, metadata)
    return path
