"""The TIR lowering pipeline of every build of ours (:data:`TIR_PIPELINE`): TVM's, plus one pass.

A TVM 0.27 trap on CPUs: ``LowerTVMBuiltin`` turns every ``local``-scope buffer into a
``TVMBackendAllocWorkspace`` heap allocation, whatever its size (only ``global`` buffers under 1 KB become stack
``alloca`` s).  The register tiles and transform tiles our llvm schedules cache into are ``local`` buffers: on the
heap they are memory to LLVM, which promotes only allocas to registers (SROA), so every tile goes through loads
and stores, a zero-initialized accumulator tile becomes a ``memset`` call, and the workspace pointer may alias
the tensors.  :func:`stack_local_tiles` marks each small, constant-size ``local`` buffer of a CPU function with
TVM's own ``disable_lower_builtin`` annotation, which leaves it an alloca.

Measured (Zen 5, 2 threads, one process, alternating; BENCHMARKS.md "Local tiles on the stack"): the Winograd
layers of VGG-16 and ResNet-18 1.05-1.26x faster, whole models up to 1.23x, outputs bit-identical.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.tirx.compilation_pipeline import get_tir_pipeline, register_tir_pipeline

__all__ = ["TIR_PIPELINE", "STACK_TILE_BYTES", "STACK_FUNCTION_BYTES", "build_tir", "constant_bytes",
           "stack_local_tiles", "with_body"]

#: The registered name of the pipeline: :func:`build_tir` passes it; a Relax build passes it as
#: ``tvm.compile(..., tir_pipeline=TIR_PIPELINE)``.
TIR_PIPELINE = "tvm_winograd"
#: Largest ``local`` buffer kept on the stack (the Winograd transform tiles are 1-2.3 KB for F(4,3), 4 KB for
#: F(6,3); a GEMM register tile is at most 32 zmm registers, 2 KB).
STACK_TILE_BYTES = 16 * 1024
#: Stack a function's tiles may take in all (a thread pool worker's stack is megabytes).
STACK_FUNCTION_BYTES = 64 * 1024

_KEEP = "disable_lower_builtin"  # tirx::transform::kDisableLowerTVMBuiltin


def constant_bytes(buffer: tirx.Buffer) -> int | None:
    """Bytes of ``buffer``; None where its shape is not constant."""
    size = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    dtype = tvm.runtime.DataType(buffer.dtype)
    return size * dtype.bits * dtype.lanes // 8


class _Budget:
    def __init__(self) -> None:
        self.left = STACK_FUNCTION_BYTES


def with_body(stmt, body):
    """``stmt`` (a ``For``, ``SBlockRealize``, ``SBlock``, ``AttrStmt`` or ``While``) with ``body`` in
    place of its own. TVM 0.27 exposes no statement mutator to Python: what rewrites a function rebuilds
    the path down to what it changes with this."""
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                        stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, body)
    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, body)
    if isinstance(stmt, s_tir.SBlock):
        return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
                            stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
    raise TypeError(f"{type(stmt).__name__} has no body to replace")


def _rewrite(stmt: tirx.Stmt, budget: _Budget) -> tirx.Stmt:
    """``stmt`` with its eligible ``AllocBuffer`` s annotated (rebuilt only along changed paths)."""
    if isinstance(stmt, tirx.AllocBuffer):
        nbytes = constant_bytes(stmt.buffer)
        if (str(stmt.buffer.scope()) != "local" or _KEEP in stmt.annotations or nbytes is None
                or nbytes > STACK_TILE_BYTES or nbytes > budget.left):
            return stmt
        budget.left -= nbytes
        return tirx.AllocBuffer(stmt.buffer, {**stmt.annotations, _KEEP: tirx.IntImm("int32", 1)})
    if isinstance(stmt, tirx.SeqStmt):
        seq = [_rewrite(s, budget) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq)
    if isinstance(stmt, tirx.IfThenElse):
        then_case = _rewrite(stmt.then_case, budget)
        else_case = None if stmt.else_case is None else _rewrite(stmt.else_case, budget)
        if then_case.same_as(stmt.then_case) and (else_case is None or else_case.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then_case, else_case)
    if isinstance(stmt, (tirx.For, tirx.AttrStmt, tirx.While)):
        body = _rewrite(stmt.body, budget)
        return stmt if body.same_as(stmt.body) else with_body(stmt, body)
    return stmt  # a leaf (store, evaluate, declaration): holds no allocation


def _is_cpu(func: tirx.PrimFunc) -> bool:
    target = func.attrs.get("target") if func.attrs is not None else None
    return target is not None and target.kind.name in ("llvm", "c")


@tirx.transform.prim_func_pass(opt_level=0, name="tvm_winograd.StackLocalTiles")
def stack_local_tiles(func: tirx.PrimFunc, _mod: tvm.IRModule, _ctx) -> tirx.PrimFunc:
    """Keep the small constant-size ``local`` buffers of a CPU function on the stack (module doc); others
    (GPU functions, dynamic or large buffers, ``global`` ones) are left to ``LowerTVMBuiltin``."""
    if not _is_cpu(func):
        return func
    body = _rewrite(func.body, _Budget())
    return func if body.same_as(func.body) else func.with_body(body)


def _pipeline():
    main, finalize_host, finalize_device = get_tir_pipeline("default")
    # after the whole main pipeline (the allocations exist once the blocks are lowered; LowerTVMBuiltin,
    # which reads the annotation, is the first of the host finalization passes)
    return tvm.transform.Sequential([main, stack_local_tiles]), finalize_host, finalize_device


register_tir_pipeline(TIR_PIPELINE, _pipeline)


def build_tir(code: tirx.PrimFunc | tvm.IRModule, target) -> tvm.runtime.Executable:
    """Build one PrimFunc (named ``main``) or a module of PrimFuncs for ``target`` through
    :data:`TIR_PIPELINE`: every TIR-only build of ours goes through here, so that none forgets the pipeline.
    Index the result by function name; ``.mod`` is the runtime module."""
    mod = code if isinstance(code, tvm.IRModule) else tvm.IRModule({"main": code})
    return tvm.compile(mod, target=target, tir_pipeline=TIR_PIPELINE)
