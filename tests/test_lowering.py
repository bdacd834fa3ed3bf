"""The lowering pipeline (tvm_winograd/lowering.py): small ``local`` tiles of CPU functions stay on the stack."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from tvm_winograd.lowering import STACK_TILE_BYTES, TIR_PIPELINE, build_tir


def _row_sums(rows: int, tile: int) -> tvm.IRModule:
    """``B[i] = sum_k A[i, k]`` with the sums of ``tile`` rows accumulated in a ``local`` cache."""
    a = te.placeholder((rows, 64), name="A")
    k = te.reduce_axis((0, 64), "k")
    b = te.compute((rows,), lambda i: te.sum(a[i, k], axis=k), name="B")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    block = sch.get_sblock("B")
    i, _ = sch.get_loops(block)
    outer, _ = sch.split(i, [None, tile])
    sch.reverse_compute_at(sch.cache_write(block, 0, "local"), outer)
    return sch.mod


def _heap_allocations(lib) -> int:
    """``TVMBackendAllocWorkspace`` calls in the LLVM IR (TVM calls it through a function pointer whose
    first two arguments are the device type and id)."""
    return lib.mod.inspect_source("ll").count("(i32 1, i32 %dev_id, i64")


@pytest.mark.parametrize("tile", [4, 256])
def test_small_local_tiles_stay_on_the_stack(tile):
    """With TVM's own pipeline the 16-byte / 1 KB ``local`` tile is a heap workspace (the check fails on it),
    with ours an alloca; the results are the same."""
    mod = _row_sums(512, tile)
    a = np.random.default_rng(0).standard_normal((512, 64)).astype("float32")
    outs = []
    for pipeline, heap in (("default", 1), (TIR_PIPELINE, 0)):
        lib = tvm.compile(mod, target="llvm", tir_pipeline=pipeline)
        assert _heap_allocations(lib) == heap, pipeline
        out = tvm.runtime.tensor(np.zeros(512, "float32"))
        lib["main"](tvm.runtime.tensor(a), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    # fp32 summation of 64 terms: |error| <= 63 u sum|a| (u = 2^-24, the worst-case bound)
    bound = 63 * 2.0 ** -24 * np.abs(a).astype("float64").sum(axis=1)
    assert np.all(np.abs(outs[1] - a.astype("float64").sum(axis=1)) <= bound)


def test_large_local_buffers_stay_on_the_heap():
    """A ``local`` buffer above :data:`STACK_TILE_BYTES` is left to TVM (a workspace)."""
    rows = STACK_TILE_BYTES // 4 * 2
    lib = build_tir(_row_sums(rows, rows), "llvm")
    assert _heap_allocations(lib) == 1


#: TVM's build entry points; outside lowering.py a call must pass ``tir_pipeline=TIR_PIPELINE``.
_BUILDS = {"compile", "build"}


def _builds_without_our_pipeline(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "lowering.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _BUILDS
                    and ast.unparse(node.func.value) in ("tvm", "tirx", "tvm.tirx", "relax", "tvm.relax", "tvm.driver")
                    and not any(k.arg == "tir_pipeline" and ast.unparse(k.value) == "TIR_PIPELINE"
                                for k in node.keywords)):
                out.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return out


def test_every_build_takes_our_pipeline(tmp_path):
    """Every TIR build of the package goes through :func:`build_tir` (a Relax build names the pipeline): a new
    build site cannot silently lose the stack tiles. The check sees a bare ``tvm.compile``."""
    package = Path(__file__).resolve().parents[1] / "tvm_winograd"
    assert _builds_without_our_pipeline(package) == []
    (tmp_path / "new.py").write_text("import tvm\nlib = tvm.compile(mod, target='llvm')\n")
    assert _builds_without_our_pipeline(tmp_path) == ["new.py:2"]
