"""MetaSchedule glue of the CUDA spaces: a light ``TuneContext``, the CUDA postprocessors and applying them."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .intrin import ensure_tensor_intrinsics

__all__ = ["postprocs_for", "light_tune_context", "apply_postprocs", "apply_postproc"]

logger = logging.getLogger(__name__)


def postprocs_for(target: Target, mod: tvm.IRModule) -> list[ms.postproc.Postproc]:
    """MetaSchedule's CUDA postprocessors, initialized for ``target`` (they realize the annotations
    ``meta_schedule.cooperative_fetch`` / ``unroll_explicit``, bind leftovers, decompose reductions,
    verify the GPU limits and, last, ``RewriteTensorize`` the blocks the tensorcore space annotated with
    ``meta_schedule.auto_tensorize``: the ``cuda-tensorcore`` list, a no-op for the SIMT spaces)."""
    ensure_tensor_intrinsics()
    postprocs = ms.postproc.Postproc.create("cuda-tensorcore")
    ctx = light_tune_context(mod, target)
    for p in postprocs:
        p._initialize_with_tune_context(ctx)
    return postprocs


def light_tune_context(mod: tvm.IRModule, target: Target,
                       space: ms.space_generator.SpaceGenerator | None = None) -> ms.TuneContext:
    """A ``TuneContext`` for initializing postprocessors / a space generator, without the Python
    constructor's ``import tvm.s_tir.tensor_intrin`` (which registers every tensor intrinsic and costs
    30-90 s of CPU on first use; our spaces use none).  Falls back to the ordinary constructor."""
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    try:
        ctx = ms.TuneContext.__new__(ms.TuneContext)
        ctx.__init_handle_by_constructor__(_ffi_api.TuneContext, mod, target, space, None, "tvm_winograd", 1, 1,
                                           get_logging_func(get_logger(__name__)))
        _ffi_api.TuneContextInitialize(ctx)
        return ctx
    except Exception as err:  # pragma: no cover - TVM internals moved
        logger.debug("light TuneContext failed (%s): using the ordinary constructor", err)
        return ms.TuneContext(mod=mod, target=target, space_generator=space, task_name="tvm_winograd",
                              rand_state=1, num_threads=1)


def apply_postprocs(sch: s_tir.Schedule, target: Target, postprocs=None) -> str | None:
    """Apply the CUDA postprocessors in order; returns the name of the first that rejects, or None.

    A postprocessor that raises (e.g. ``RewriteReductionBlock`` on a block whose bindings are not
    quasi-affine) rejects, as in MetaSchedule's search, which discards such samples."""
    for p in postprocs if postprocs is not None else postprocs_for(target, sch.mod):
        if not apply_postproc(p, sch):
            return type(p).__name__
    return None


def apply_postproc(postproc: ms.postproc.Postproc, sch: s_tir.Schedule) -> bool:
    """One postprocessor; False if it rejects or raises (logged at debug level)."""
    try:
        return bool(postproc.apply(sch))
    except Exception as err:  # noqa: BLE001 - MetaSchedule's search treats any failure as a rejection
        logger.debug("%s raised: %s", type(postproc).__name__, str(err).splitlines()[-1] if str(err) else err)
        return False
