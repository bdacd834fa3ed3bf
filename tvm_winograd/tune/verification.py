"""The tuner's use of the shared numerical check (:mod:`tvm_winograd.verify`): the case a candidate's
schedules are checked with, building and checking one schedule, and picking the best record that passes."""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import tirx
from tvm.target import Target

from ..compute import Epilogue, kernel_block_of, target_config
from ..lowering import build_tir
from ..verify import Case, prepare, run_cpu
from ..workload import Conv2dSpec
from .records import apply_trace, median_ms
from .results import CandidateResult

__all__ = ["VERIFY_TOP_K", "verification_case", "verify_func", "pick_verified"]

logger = logging.getLogger(__name__)

#: How many of a candidate's best records are tried (verified) before giving up on it.
VERIFY_TOP_K = 5


def verification_case(func: tirx.PrimFunc, spec: Conv2dSpec, epilogue: Epilogue, algorithm: str, m: int | None,
                      target: Target, seed: int = 0) -> Case:
    """The inputs and error model a candidate's schedules are checked with (:mod:`tvm_winograd.verify`):
    the model follows the config compilation uses for the target (:func:`target_config`), the kernel
    pack argument follows ``func``'s parameter (layout and dtype)."""
    if algorithm != "winograd":
        return prepare(spec, epilogue, algorithm, seed=seed)
    return prepare(spec, epilogue, algorithm, target_config(spec, m, target.kind.name), seed=seed,
                   kernel_block=kernel_block_of(func), pack_arg_dtype=str(func.params[1].dtype))


def verify_func(func: tirx.PrimFunc, spec: Conv2dSpec, epilogue: Epilogue, algorithm: str,
                m: int | None, target: Target, seed: int = 0, case: Case | None = None) -> float:
    """Build ``func`` (a scheduled candidate) for ``target``, run it on seeded signed inputs and return
    the max error vs the float64 reference; raises ``ArithmeticError`` when the output fails the check
    of :func:`tvm_winograd.accuracy.assess` (worst-case bound, RMS, peak and gain against the
    random-rounding model).  ``case``: a prepared :func:`verification_case` (the same for every record
    of a candidate).  CPU targets only."""
    if target.kind.name != "llvm":
        raise NotImplementedError(f"verifying on target {target.kind.name!r}: only llvm runs on this host")
    if case is None:
        case = verification_case(func, spec, epilogue, algorithm, m, target, seed)
    ex = build_tir(func, target)
    got = run_cpu(ex["main"], case)
    verdict = case.assess(got)
    if not verdict.ok:
        raise ArithmeticError(f"{algorithm} (m={m}): {verdict.reason}")
    return float(np.max(np.abs(got - case.model.reference)))


def pick_verified(db, mod: tvm.IRModule, spec: Conv2dSpec, epilogue: Epilogue, res: CandidateResult,
                   target: Target, can_verify: bool, seed: int) -> None:
    """Set ``res`` from the first of the best records that passes the float64 check."""
    if not db.has_workload(mod):
        return
    workload = db.commit_workload(mod)
    case = None  # the inputs and the model are the same for every record of the candidate
    for record in db.get_top_k(workload, VERIFY_TOP_K):
        t = median_ms(record)
        if t is None:
            continue
        if can_verify:
            try:
                func = apply_trace(record)
                case = case or verification_case(func, spec, epilogue, res.algorithm, res.m, target, seed)
                res.max_error = verify_func(func, spec, epilogue, res.algorithm, res.m, target, seed, case)
            except ArithmeticError as err:
                logger.error("%s %s: a measured schedule is numerically wrong, skipped: %s",
                             spec.key(), res.name, err)
                continue
        res.verified = can_verify
        res.median_ms = t
        res.record = record  # the record to store
        return
