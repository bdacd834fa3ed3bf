"""The llvm default-schedule rules (tvm_winograd.schedule.llvm) against float64 numpy.

Each case builds a small Relax function, compiles it with the project's build pipeline (TVM's
legalization and fusion, then the rules), checks which rule scheduled each PrimFunc (none may stay
unscheduled) and compares the result with a float64 reference.  Shapes are odd on purpose: extents
that are no multiple of the vector width (16 fp32), primes, and sizes of 1, in NCHW and NHWC.

Tolerances (u = 2^-24, the fp32 unit roundoff):
* data movement (transpose, reshape, concatenate, pad, depth-to-space, max pooling): exact;
* a few fp32 operations per element: ``c u |ref|`` with ``c`` the operation count;
* the polynomial exp / tanh / erf / sigmoid (tvm_winograd.schedule.llvm.fastmath): ``MAX_ULP`` of
  the function's value, plus the rounding of the surrounding operations;
* sums of ``n`` terms (matmul, mean, pooling): ``(n + 2) u sum |terms|`` (any summation order).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.special as sp
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.topi.nn import softmax as topi_softmax

from tvm_winograd.pipeline import build_pipeline
from tvm_winograd.schedule.llvm import ApplyLlvmRules, default_rules
from tvm_winograd.schedule.llvm.fastmath import MAX_ULP, approximate_math
from tvm_winograd.schedule.llvm.base import vector_lanes
from tvm_winograd.schedule.llvm.injective import switch_points, transposed_tile
from tvm_winograd.schedule.llvm.matmul import Matmul
from tvm_winograd.targets import resolve_target

TARGET = resolve_target("llvm")
U = 2.0**-24


def _function(inputs: dict[str, tuple], body, dtype: str = "float32") -> tvm.IRModule:
    """A Relax module whose ``main`` takes ``inputs`` (name -> shape) and returns ``body(vars)``."""
    bb = relax.BlockBuilder()
    params = {n: relax.Var(n, relax.TensorType(s, dtype)) for n, s in inputs.items()}
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(body(params)))
        bb.emit_func_output(out)
    return bb.get()


def _compile_run(mod: tvm.IRModule, feed: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """Compile with :func:`build_pipeline` and run once: ``(output, {function: scheduled_by})``."""
    table: dict = {}
    ex = tvm.compile(mod, target=TARGET, relax_pipeline=build_pipeline(TARGET, table))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in feed))
    return out.numpy(), {name: entry["scheduled_by"] for name, entry in table.items()}


def _legalized(mod: tvm.IRModule) -> tirx.PrimFunc:
    """The one PrimFunc of ``mod`` after the CPU pipeline's legalization (before any rule)."""
    with TARGET:
        legal = tvm.transform.Sequential(cpu_pipeline.legalize_passes(TARGET))(mod)
    (func,) = [f for f in legal.functions.values() if isinstance(f, tirx.PrimFunc)]
    return func


def _check(mod, feed, ref, bound, rules: set[str]) -> dict:
    """Run, assert every function was scheduled by one of ``rules`` and ``|out - ref| <= bound``."""
    got, table = _compile_run(mod, feed)
    assert table and set(table.values()) <= rules, table
    bound = np.broadcast_to(bound, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), ref.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    return table


# ------------------------------------------------------------------------------------------------
# Injective functions
# ------------------------------------------------------------------------------------------------

SHAPES = [(1, 13, 7, 19), (1, 1, 1, 1), (2, 3, 5, 17), (1, 64, 67, 3), (37,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_silu_chain(signed, shape):
    """SiLU (x * sigmoid(x), EfficientNet) then a bias: sigmoid within MAX_ULP, 2 more roundings."""
    x = signed(shape) * 4
    mod = _function({"x": shape}, lambda p: relax.op.add(relax.op.multiply(p["x"], relax.op.sigmoid(p["x"])),
                                                         relax.const(0.5, "float32")))
    x64 = x.astype(np.float64)
    silu = x64 * sp.expit(x64)
    _check(mod, [x], silu + 0.5, (MAX_ULP["sigmoid"] + 3) * U * (np.abs(silu) + 0.5) + 1e-38, {"injective"})


@pytest.mark.parametrize("shape", [(1, 17, 17, 27), (1, 3, 224, 5)])
def test_tanh(signed, shape):
    """tanh (the SR net's activation): the polynomial within MAX_ULP of tanh."""
    x = signed(shape) * 3
    ref = np.tanh(x.astype(np.float64))
    _check(_function({"x": shape}, lambda p: relax.op.tanh(p["x"])), [x], ref,
           (MAX_ULP["tanh"] + 1) * U * np.abs(ref), {"injective"})


def test_gelu_erf(signed):
    """GELU via erf, ConvNeXt's: 0.5 x (1 + erf(x / sqrt 2)); erf's error is relative to erf, so near
    x -> -inf (1 + erf cancels) the bound is absolute: 0.5 |x| (MAX_ULP + 3) u, plus 3 u |ref|."""
    shape = (1, 7, 7, 37)
    x = signed(shape) * 3
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + sp.erf(x64 / math.sqrt(2)))
    bound = 0.5 * np.abs(x64) * (MAX_ULP["erf"] + 3) * U + 3 * U * np.abs(ref)
    _check(_function({"x": shape}, lambda p: relax.op.nn.gelu(p["x"])), [x], ref, bound, {"injective"})


def test_hard_swish_and_clip(signed):
    """hard-swish x * clip(x + 3, 0, 6) / 6 (MobileNetV3): 3 roundings."""
    shape = (1, 5, 9, 23)
    x = signed(shape) * 4
    mod = _function({"x": shape}, lambda p: relax.op.divide(
        relax.op.multiply(p["x"], relax.op.clip(relax.op.add(p["x"], relax.const(3.0, "float32")), 0, 6)),
        relax.const(6.0, "float32")))
    x64 = x.astype(np.float64)
    ref = x64 * np.clip(x64 + 3, 0, 6) / 6
    _check(mod, [x], ref, 4 * U * np.abs(ref) + 4 * U * np.abs(x64), {"injective"})


@pytest.mark.parametrize("axis", [1, 3])
def test_concatenate_batch_norm_relu(signed, rng, axis):
    """DenseNet's concat + (inference) batch norm + ReLU, along channels of NCHW (1) or NHWC (3)."""
    a_shape, b_shape = ((1, 3, 7, 5), (1, 14, 7, 5)) if axis == 1 else ((1, 7, 5, 3), (1, 7, 5, 14))
    a, b = signed(a_shape), signed(b_shape)
    channels = 17
    scale = rng.uniform(0.5, 2, channels).astype("float32")
    shift = rng.standard_normal(channels).astype("float32")
    bshape = [1, 1, 1, 1]
    bshape[axis] = channels

    def body(p):
        y = relax.op.concat([p["a"], p["b"]], axis=axis)
        y = relax.op.add(relax.op.multiply(y, relax.const(scale.reshape(bshape))), relax.const(shift.reshape(bshape)))
        return relax.op.nn.relu(y)

    cat = np.concatenate([a, b], axis=axis).astype(np.float64)
    ref = np.maximum(cat * scale.reshape(bshape) + shift.reshape(bshape), 0)
    _check(_function({"a": a_shape, "b": b_shape}, body), [a, b], ref, 2 * U * (np.abs(cat * scale.reshape(bshape))
                                                                                 + np.abs(ref)), {"injective"})


def test_depth_to_space_both_layouts(signed):
    """The SR head's pixel shuffle (r = 3) as reshape/transpose/reshape, which is what ONNX's
    DepthToSpace imports to (relax's own pixel_shuffle has no lowering in TVM 0.27: topi lacks it)."""
    r, c, h, w = 3, 2, 5, 7
    x = signed((1, c * r * r, h, w))
    ref = x.reshape(1, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(1, c, h * r, w * r)

    def nchw(p):
        y = relax.op.reshape(p["x"], (1, c, r, r, h, w))
        return relax.op.reshape(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]), (1, c, h * r, w * r))

    _check(_function({"x": x.shape}, nchw), [x], ref, 0.0, {"injective"})
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC, channels (c, r, r)

    def nhwc(p):
        y = relax.op.reshape(p["x"], (1, h, w, c, r, r))
        y = relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3])
        return relax.op.reshape(y, (1, h * r, w * r, c))

    _check(_function({"x": xh.shape}, nhwc), [xh], ref.transpose(0, 2, 3, 1), 0.0, {"injective"})


def test_pad_transpose_layout(signed):
    """Zero padding (odd amounts) and an NCHW -> NHWC transpose: exact."""
    x = signed((1, 5, 11, 13))
    mod = _function({"x": x.shape}, lambda p: relax.op.permute_dims(
        relax.op.nn.pad(p["x"], [0, 0, 0, 0, 1, 2, 3, 0]), [0, 2, 3, 1]))
    ref = np.pad(x, [(0, 0), (0, 0), (1, 2), (3, 0)]).transpose(0, 2, 3, 1)
    _check(mod, [x], ref, 0.0, {"injective"})


@pytest.mark.parametrize("shape,perm,tile", [((1, 24, 48, 64), (0, 3, 1, 2), (1, 16)),
                                            ((2, 48, 5, 32), (0, 2, 3, 1), (2, 16)),
                                            ((1, 7, 8, 24), (0, 3, 1, 2), (1, 8)),
                                            ((1, 13, 7, 19), (0, 3, 1, 2), None)])
def test_transpose_tiles(signed, shape, perm, tile):
    """Transposes across the contiguous axis are tiled when a tile of 16 (8, 4) divides both axes,
    as NHWC <-> NCHW at a model's boundary: exact; odd extents keep the plain schedule."""
    x = signed(shape)
    mod = _function({"x": x.shape}, lambda p: relax.op.permute_dims(p["x"], list(perm)))
    _check(mod, [x], x.transpose(perm), 0.0, {"injective"})
    a = te.placeholder(shape, name="a")
    b = te.compute([shape[i] for i in perm], lambda *i: a(*(i[perm.index(k)] for k in range(4))), name="b")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    assert transposed_tile(sch, sch.get_sblock("b"), vector_lanes("float32", TARGET)) == tile


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_resize_matches_unscheduled(signed, layout):
    """Bilinear 2x resize (odd sizes): equal to TVM's own unscheduled lowering up to 4 u |ref|."""
    x = signed((1, 5, 7, 9) if layout == "NCHW" else (1, 7, 9, 5))
    size = (14, 18)
    mod = _function({"x": x.shape}, lambda p: relax.op.image.resize2d(p["x"], size, layout=layout))
    plain = tvm.compile(mod, target=TARGET)  # TVM's llvm pipeline: unscheduled
    ref = relax.VirtualMachine(plain, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    _check(mod, [x], ref, 4 * U * np.abs(ref) + 1e-7 * U, {"injective"})


# Whether the channel loop is partitioned depends on the vector width of the target, not of the host
# running the test (CI's machines differ): the decision is checked for both widths explicitly.
# partitioned[isa]: a width w in (lanes, lanes/2, lanes/4), w >= 4, divides every boundary and the
# extent (32 fp32 lanes with AVX-512, 16 with AVX2).
ISA_TARGETS = {"avx512": {"kind": "llvm", "mcpu": "znver4", "num-cores": 2},
               "avx2": {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}}


@pytest.mark.parametrize("channels, partitioned", [
    ((64, 32, 32, 32), {"avx512": True, "avx2": True}),
    ((64, 128, 32, 32), {"avx512": True, "avx2": True}),
    ((8, 24, 8), {"avx512": True, "avx2": True}),      # boundaries 8, 32, extent 40: vectors of 8
    ((8, 24, 4), {"avx512": False, "avx2": True}),     # extent 36: only 4 lanes divide it (AVX2's 16/4)
    ((3, 17, 32, 5), {"avx512": False, "avx2": False}),
    ((1, 1, 48), {"avx512": False, "avx2": False})])
def test_concat_is_partitioned_per_input(signed, channels, partitioned):
    """A concatenate along the contiguous axis, with batch norm-like scale + shift and ReLU fused
    after it (DenseNet): within two roundings on this host, and for an AVX-512 and an AVX2 target the
    channel loop is partitioned at the inputs' boundaries exactly where every part is whole vectors
    (each part reads one input: no select among all of them per lane)."""
    xs = [signed((1, 5, 7, c)) for c in channels]
    scale, shift = signed((sum(channels),)), signed((sum(channels),))

    def body(p):
        y = relax.op.concat([p[f"x{i}"] for i in range(len(xs))], axis=3)
        return relax.op.nn.relu(relax.op.add(relax.op.multiply(y, relax.const(scale)), relax.const(shift)))

    mod = _function({f"x{i}": x.shape for i, x in enumerate(xs)}, body)
    ref = np.maximum(np.concatenate(xs, 3).astype(np.float64) * scale + shift, 0)
    _check(mod, xs, ref, 2 * U * np.abs(ref) + 1e-30, {"injective"})  # a product and a sum in fp32
    fused = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(
        relax.transform.LegalizeOps()(mod))))
    (name, func), = [(gv.name_hint, f) for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    for isa, config in ISA_TARGETS.items():
        target = tvm.target.Target(config)
        assert vector_lanes("float32", target) == {"avx512": 32, "avx2": 16}[isa]
        with target:
            scheduled = ApplyLlvmRules().schedule(name, func, target)
        assert ("_partition" in scheduled.script()) == partitioned[isa], isa
    func = te.create_prim_func([te.placeholder((1, 5, 7, 4), name="a")] + [te.compute(
        (1, 5, 7, 8), lambda n, h, w, c: te.if_then_else(c >= 4, 1.0, 0.0), name="b")])
    sch = tvm.s_tir.Schedule(func)
    assert switch_points(sch, sch.get_sblock("b")) == [4]


def test_injective_vectorizes_and_parallelizes():
    """The schedule's shape: a parallel outer loop and a vectorized inner loop of two SIMD registers
    (32 fp32 lanes with AVX-512, 16 with AVX2); the remainder of 67 (64 + 3) is a loop of its own,
    vectorized (3 lanes)."""
    a = te.placeholder((1, 64, 64, 67), name="a")
    b = te.compute(a.shape, lambda *i: te.tanh(a(*i)) * a(*i), name="b")
    func = te.create_prim_func([a, b])
    with TARGET:
        new = ApplyLlvmRules().schedule("f", func, TARGET)
    script = new.script()
    assert str(new.attrs["tvm_winograd.scheduled_by"]) == "injective"
    lanes = vector_lanes("float32", TARGET)
    assert lanes in (16, 32)
    assert "T.parallel" in script and f"T.vectorized({lanes})" in script
    assert "T.vectorized(64, 67)" in script  # the remainder: lanes 64..66
    assert "T.tanh" not in script  # the polynomial replaced the libm call


# ------------------------------------------------------------------------------------------------
# Fast math
# ------------------------------------------------------------------------------------------------

def test_fast_math_is_within_max_ulp():
    """Each polynomial against float64 over a dense grid of [-12, 12] plus tiny values (relative
    error in ulp of the true value; sigmoid's tail below 1e-30 is left out: absolute 1e-38)."""
    grid = np.concatenate([np.linspace(-12, 12, 200001), np.geomspace(1e-30, 1e-3, 1000),
                           -np.geomspace(1e-30, 1e-3, 1000)]).astype("float32")
    refs = {"exp": np.exp, "tanh": np.tanh, "erf": sp.erf, "sigmoid": sp.expit}
    ops = {"exp": te.exp, "tanh": te.tanh, "erf": te.erf, "sigmoid": te.sigmoid}
    for name, op in ops.items():
        a = te.placeholder(grid.shape, name="a")
        b = te.compute(grid.shape, lambda i: op(a[i]), name="b")
        func = approximate_math(te.create_prim_func([a, b]))
        assert f"T.{name}(" not in func.script()
        lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
        out = tvm.runtime.empty(grid.shape, "float32")
        lib["main"](tvm.runtime.tensor(grid), out)
        ref = refs[name](grid.astype(np.float64))
        keep = np.abs(ref) > 1e-30
        ulps = np.abs(out.numpy() - ref)[keep] / (np.abs(ref[keep]) * U)
        assert ulps.max() <= MAX_ULP[name], f"{name}: {ulps.max():.1f} ulp"


# ------------------------------------------------------------------------------------------------
# Reductions
# ------------------------------------------------------------------------------------------------

def _sum_bound(terms: np.ndarray, axes) -> np.ndarray:
    n = int(np.prod([terms.shape[a] for a in axes]))
    return (n + 2) * U * np.abs(terms).sum(axis=axes)


@pytest.mark.parametrize("layout,channels,size", [("NCHW", 37, (7, 9)), ("NHWC", 37, (7, 9)), ("NHWC", 1280, (7, 9)),
                                                  ("NCHW", 37, (24, 24))])
def test_global_mean(signed, layout, channels, size):
    """Global average pooling (EfficientNet's squeeze-excite) as mean over H, W, both layouts;
    MobileNetV2's 7x9x1280 is large enough to run in parallel (the rule once failed there), and so
    is NCHW 37x24x24, whose 576 = 18 x 32 pixels take the vector partial sums (the rule failed there
    too, parallelizing after ``decompose_reduction``, and DLight's scalar rule took it)."""
    x = signed((1, channels, *size) if layout == "NCHW" else (1, *size, channels))
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    mod = _function({"x": x.shape}, lambda p: relax.op.mean(p["x"], axis=list(axes), keepdims=True))
    x64 = x.astype(np.float64)
    ref = x64.mean(axis=axes, keepdims=True)
    bound = _sum_bound(x64, axes).reshape(ref.shape) / (size[0] * size[1]) + U * np.abs(ref)
    _check(mod, [x], ref, bound, {"reduction"})


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_max_pool(signed, layout):
    """3x3 stride-2 max pooling with padding 1 (ResNet's stem) on an odd size: exact."""
    x = signed((1, 5, 13, 11) if layout == "NCHW" else (1, 13, 11, 19))
    mod = _function({"x": x.shape}, lambda p: relax.op.nn.max_pool2d(p["x"], 3, 2, 1, layout=layout))
    xc = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    padded = np.pad(xc, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    ho, wo = (xc.shape[2] - 1) // 2 + 1, (xc.shape[3] - 1) // 2 + 1
    ref = np.full(xc.shape[:2] + (ho, wo), -np.inf)
    for dh in range(3):
        for dw in range(3):
            ref = np.maximum(ref, padded[:, :, dh:dh + 2 * ho:2, dw:dw + 2 * wo:2])
    ref = ref if layout == "NCHW" else ref.transpose(0, 2, 3, 1)
    _check(mod, [x], ref, 0.0, {"reduction"})


def test_pooling_parallel_over_rows_with_the_window_unrolled():
    """NHWC 3x3/2 max pooling: the parallel loop runs over the output rows only (columns and channel
    vectors serial inside, so the padding conditions are functions of plain loops: 3.4x faster than
    all of them fused), the 3x3 window unrolled, the channels vectorized."""
    x = te.placeholder((1, 112, 112, 64), name="x")
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NHWC")
    func = te.create_prim_func([x, y])
    with TARGET:
        new = ApplyLlvmRules().schedule("f", func, TARGET)
    script = new.script()
    assert str(new.attrs["tvm_winograd.scheduled_by"]) == "reduction"
    assert re.search(r"in T\.parallel\((T\.int64\()?56\)?\)", script), script
    assert script.count("T.unroll(3)") == 2 and "T.vectorized(" in script, script


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_avg_pool(signed, layout):
    """3x3 stride-1 average pooling, padding 1, padded zeros counted: a 9-term sum and a divide."""
    x = signed((1, 3, 7, 5) if layout == "NCHW" else (1, 7, 5, 17))
    mod = _function({"x": x.shape}, lambda p: relax.op.nn.avg_pool2d(p["x"], 3, 1, 1, layout=layout,
                                                                     count_include_pad=True))
    xc = (x if layout == "NCHW" else x.transpose(0, 3, 1, 2)).astype(np.float64)
    padded = np.pad(xc, [(0, 0), (0, 0), (1, 1), (1, 1)])
    windows = np.stack([padded[:, :, dh:dh + xc.shape[2], dw:dw + xc.shape[3]] for dh in range(3) for dw in range(3)])
    ref, bound = windows.mean(axis=0), 12 * U * np.abs(windows).sum(axis=0) / 9
    if layout == "NHWC":
        ref, bound = ref.transpose(0, 2, 3, 1), bound.transpose(0, 2, 3, 1)
    _check(mod, [x], ref, bound, {"reduction"})


@pytest.mark.parametrize("length", [48, 37, 1])
def test_sum_last_axis(signed, length):
    """A sum over the contiguous axis: vector partial sums (rfactor) when 16 divides it."""
    x = signed((5, 3, length))
    mod = _function({"x": x.shape}, lambda p: relax.op.sum(p["x"], axis=[2]))
    x64 = x.astype(np.float64)
    _check(mod, [x], x64.sum(axis=2), _sum_bound(x64, (2,)), {"reduction", "injective"})


@pytest.mark.parametrize("shape,rule", [((3, 5, 37), "dlight-reduction"), ((3, 5, 48), "row-reduction"),
                                        ((2, 9, 31, 96), "row-reduction"), ((1, 1, 8), "row-reduction")])
def test_softmax_and_layer_norm(signed, rng, shape, rule):
    """Softmax over the last axis and ConvNeXt's layer norm over C (NHWC): rows whose length is a
    multiple of 8 get vector partial reductions (RowReduction; 2x9x31 rows of 96 run in parallel),
    others DLight's CPU reduction."""
    n = shape[-1]
    x = signed(shape) * 3
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    ref = e / e.sum(axis=-1, keepdims=True)
    # exp (polynomial) MAX_ULP, the n-term sum in any order, the divide: relative (n + 4) u
    _check(_function({"x": x.shape}, lambda p: relax.op.nn.softmax(p["x"], axis=-1)), [x], ref,
           (n + 4 + MAX_ULP["exp"]) * U * ref, {rule})
    y = signed((1, *shape))
    gamma, beta = rng.standard_normal(n).astype("float32"), rng.standard_normal(n).astype("float32")
    mod = _function({"y": y.shape}, lambda p: relax.op.nn.layer_norm(p["y"], relax.const(gamma), relax.const(beta),
                                                                     axes=[-1]))
    y64 = y.astype(np.float64)
    z = (y64 - y64.mean(-1, keepdims=True)) / np.sqrt(y64.var(-1, keepdims=True) + 1e-5)
    # mean and variance: n-term sums of O(1) terms, rsqrt 1 ulp: ~ 4 n u relative on z
    _check(mod, [y], z * gamma + beta, (4 * n + 12) * U * (np.abs(z * gamma) + 1) + 2 * U * np.abs(beta), {rule})


def test_row_reduction_is_vectorized_and_parallel():
    """RowReduction's shape: one parallel loop over the rows, the max and the sum as vector partial
    results (rfactor), the elementwise steps vectorized."""
    x = te.placeholder((64, 384), name="x")
    y = topi_softmax(x)
    func = te.create_prim_func([x, y])
    with TARGET:
        new = ApplyLlvmRules().schedule("f", func, TARGET)
    script = new.script()
    assert str(new.attrs["tvm_winograd.scheduled_by"]) == "row-reduction"
    assert script.count("T.parallel") == 1
    assert "_rf" in script and script.count("T.vectorized(") >= 4, script


# ------------------------------------------------------------------------------------------------
# Matrix products
# ------------------------------------------------------------------------------------------------

def _matmul_bound(x64: np.ndarray, w64: np.ndarray, extra: np.ndarray | float = 0.0) -> np.ndarray:
    k = x64.shape[-1]
    return (k + 2) * U * (np.abs(x64) @ np.abs(w64)) + extra


@pytest.mark.parametrize("batch,k,n", [(1, 200, 64), (2, 96, 48), (1, 64, 1000), (1, 1000, 40), (1, 1024, 96),
                                       (13, 37, 24), (197, 19, 19), (8, 64, 1000)])
def test_fully_connected(rng, batch, k, n):
    """x @ W + b, ReLU (the VGG/ResNet classifier): batch 1 streams W (by column tasks, or by row
    ranges summed after from 1000 rows on); more rows tile it (13 and the prime 197 rows pad A to
    whole tiles; 19 columns are no multiple of a vector; 1000 at batch 8 are tiled 8 wide)."""
    w = rng.standard_normal((k, n)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    x = rng.standard_normal((batch, k)).astype("float32")
    mod = _function({"x": (batch, k)}, lambda p: relax.op.nn.relu(relax.op.add(relax.op.matmul(p["x"], relax.const(w)),
                                                                               relax.const(b))))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = np.maximum(x64 @ w64 + b, 0)
    _check(mod, [x], ref, _matmul_bound(x64, w64, np.abs(b) * U), {"matmul"})


@pytest.mark.parametrize("k_vectors", [1, 2])
def test_small_classifier_by_the_reduction_rule(rng, k_vectors):
    """x @ W + b with 10 columns (no chunk width divides them: the matmul rule declines) and K of one
    or two vectors of this host (32 or 64 fp32 with AVX-512): the reduction rule's vectorized sum
    schedules it without an error (with K one vector its outer reduction loop has extent 1; the
    built-in tiny_mixed's classifier failed that way and fell to DLight with a warning)."""
    k, n = k_vectors * vector_lanes("float32", TARGET), 10
    w, b = rng.standard_normal((k, n)).astype("float32"), rng.standard_normal(n).astype("float32")
    x = rng.standard_normal((1, k)).astype("float32")
    mod = _function({"x": (1, k)}, lambda p: relax.op.add(relax.op.matmul(p["x"], relax.const(w)), relax.const(b)))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    table = _check(mod, [x], x64 @ w64 + b, _matmul_bound(x64, w64, np.abs(b) * U), {"reduction"})
    assert list(table.values()) == ["reduction"]


def test_convnext_mlp_with_gelu(signed, rng):
    """ConvNeXt's MLP on odd sizes: (1, 5, 7, 37) @ (37, 53) + bias, GELU; then @ (53, 37) * scale."""
    x = signed((1, 5, 7, 37))
    w1, b1 = rng.standard_normal((37, 53)).astype("float32") / 6, rng.standard_normal(53).astype("float32")
    w2, g = rng.standard_normal((53, 37)).astype("float32") / 7, rng.standard_normal(37).astype("float32")

    def body(p):
        h = relax.op.nn.gelu(relax.op.add(relax.op.matmul(p["x"], relax.const(w1)), relax.const(b1)))
        return relax.op.multiply(relax.op.matmul(h, relax.const(w2)), relax.const(g))

    x64 = x.astype(np.float64)
    pre = x64 @ w1 + b1
    h = 0.5 * pre * (1 + sp.erf(pre / math.sqrt(2)))
    ref = (h @ w2) * g
    # error of h: the product's sum bound, propagated (|gelu'| <= 1.13), plus GELU's own (test_gelu_erf)
    dh = 1.13 * _matmul_bound(x64, w1, np.abs(b1) * U) + 0.5 * np.abs(pre) * (MAX_ULP["erf"] + 3) * U + 3 * U * np.abs(h)
    bound = (np.abs(dh) @ np.abs(w2) + _matmul_bound(h, w2.astype(np.float64))) * np.abs(g) + U * np.abs(ref)
    table = _check(_function({"x": x.shape}, body), [x], ref, bound, {"matmul"})
    assert len(table) == 2


@pytest.mark.parametrize("rows", [1, 13])
def test_transposed_weight_input(signed, rows):
    """x @ W^T with W a run-time input: FuseOps keeps the transpose a function of its own (injective),
    the product reads its result as [k, n] (23 columns: no streaming chunk divides them, so
    the reduction rule takes the one-row product; 13 rows are the tiled GEMM's)."""
    x, w = signed((rows, 37)), signed((23, 37))
    mod = _function({"x": x.shape, "w": w.shape}, lambda p: relax.op.matmul(p["x"], relax.op.permute_dims(p["w"])))
    x64, w64 = x.astype(np.float64), w.astype(np.float64).T
    table = _check(mod, [x, w], x64 @ w64, _matmul_bound(x64, w64), {"matmul", "reduction", "injective"})
    assert ("matmul" if rows > 1 else "reduction") in table.values()


def test_batched_attention_scores(signed):
    """q @ k^T per (batch, head), then a softmax: the attention shape with batch axes (2, 3)."""
    q, k = signed((2, 3, 17, 8)), signed((2, 3, 19, 8))
    mod = _function({"q": q.shape, "k": k.shape}, lambda p: relax.op.matmul(
        p["q"], relax.op.permute_dims(p["k"], [0, 1, 3, 2])))
    q64, k64 = q.astype(np.float64), k.astype(np.float64).transpose(0, 1, 3, 2)
    table = _check(mod, [q, k], q64 @ k64, _matmul_bound(q64, k64), {"matmul", "injective"})
    assert "matmul" in table.values()


@pytest.mark.parametrize("k, split", [(200, False), (1024, True)])
def test_streaming_schedule_shape(rng, k, split):
    """Batch 1 with W[k, n]: the streaming schedule (parallel column chunks, vectorized); with enough
    rows, partial products over row ranges (``rfactor``) summed after."""
    w = rng.standard_normal((k, 64)).astype("float32")
    mod = _function({"x": (1, k)}, lambda p: relax.op.matmul(p["x"], relax.const(w)))
    func = _legalized(mod)
    sch = Matmul().apply(func, TARGET, False)
    script = sch.mod["main"].script()
    assert "T.parallel" in script and "T.vectorized(T.int64(64))" in script
    assert ("matmul_rf" in script) == split


@pytest.mark.parametrize("n, columns", [(1000, 8), (1024, 32), (1008, 16)])
def test_column_tile_avoids_the_predicate(rng, n, columns):
    """Columns that no 32-wide tile divides (the 1000 classes of a classifier at batch 8) take the
    widest tile of 32, 16 or 8 that does, so no lane runs under the split's predicate: with one, the
    vectorizer scalarized every tile (6.4 ms instead of 0.63 for ResNet-50's classifier at batch 8)."""
    w = rng.standard_normal((64, n)).astype("float32")
    mod = _function({"x": (8, 64)}, lambda p: relax.op.matmul(p["x"], relax.const(w)))
    func = _legalized(mod)
    script = Matmul().apply(func, TARGET, False).mod["main"].script()
    assert f"T.vectorized(T.int64({columns}))" in script, script
    assert "T.where" not in script, script


@pytest.mark.parametrize("rows, n, panel", [(49, 128, 32), (8, 1000, 8), (30, 80, 16)])
def test_constant_weights_are_packed_into_panels_at_compile_time(rng, rows, n, panel):
    """A constant ``W[k, n]`` of the tiled GEMM is repacked into column panels ``(N / nr, K, nr)`` by a
    layout-rewrite block that the build pipeline hoists and folds: the compiled product reads the packed
    constant (one contiguous stream per panel) and no packing function is left to run."""
    w = rng.standard_normal((40, n)).astype("float32")
    x = rng.standard_normal((1, rows, 40)).astype("float32")
    mod = _function({"x": x.shape}, lambda p: relax.op.matmul(p["x"], relax.const(w)))
    with TARGET:
        lowered = build_pipeline(TARGET, {})(mod)
    prims = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tirx.PrimFunc)}
    assert not [name for name in prims if "prepack" in name], list(prims)
    (matmul,) = [f for name, f in prims.items() if "matmul" in name]
    assert [int(d) for d in matmul.params[1].shape] == [n // panel, 40, panel]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    _check(mod, [x], x64 @ w64, _matmul_bound(x64, w64), {"matmul"})


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_packing_block_writes_panel_by_panel(signed, transposed):
    """``C = A W`` with ``W[k, n]``, or ``C = A W^T`` read as ``W[n, k]``: the packing block writes the
    ``(N / nr, K, nr)`` panels in their own order, one parallel task per panel (a loop over ``W``'s
    order made the fold of ConvNeXt-T's weights take minutes); split off as the pipeline does,
    packing then the product equal float64."""
    from tvm_winograd.schedule.direct import split_weight_packing

    a_t = te.placeholder((24, 40), name="a")
    w_t = te.placeholder((128, 40) if transposed else (40, 128), name="w")
    r = te.reduce_axis((0, 40), name="r")
    w_at = (lambda j: w_t[j, r]) if transposed else (lambda j: w_t[r, j])
    c_t = te.compute((24, 128), lambda i, j: te.sum(a_t[i, r] * w_at(j), axis=r), name="c")
    sch = Matmul().apply(te.create_prim_func([a_t, w_t, c_t]), TARGET, False)
    prepacked, packing = split_weight_packing(sch.mod["main"])
    assert packing is not None and [int(d) for d in prepacked.params[1].shape] == [4, 40, 32]
    pack_sch = s_tir.Schedule(packing)
    loops = [pack_sch.get(lp) for lp in pack_sch.get_loops(pack_sch.get_sblock("w_global"))]
    assert [int(lp.extent) for lp in loops] == [4, 40, 32], packing.script()
    assert loops[0].kind == tirx.ForKind.PARALLEL, packing.script()
    a, w = signed((24, 40)), signed(tuple(int(d) for d in w_t.shape))
    build = lambda f: tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=TARGET)["main"]  # noqa: E731
    packed = tvm.runtime.empty([int(d) for d in prepacked.params[1].shape], "float32")
    build(packing)(tvm.runtime.tensor(w), packed)
    out = tvm.runtime.empty((24, 128), "float32")
    build(prepacked)(tvm.runtime.tensor(a), packed, out)
    a64, w64 = a.astype(np.float64), (w.T if transposed else w).astype(np.float64)
    assert np.all(np.abs(out.numpy() - a64 @ w64) <= _matmul_bound(a64, w64))


def test_matmul_rule_ignores_other_reductions():
    """A sum is no matrix product: the matmul rule does not take it."""
    func = _legalized(_function({"x": (4, 32)}, lambda p: relax.op.sum(p["x"], axis=1)))
    assert Matmul().apply(func, TARGET, False) is None


def test_matmul_design_space_is_correct(signed):
    """``tunable=True`` gives one schedule per register tile; every one computes the product."""
    x, w = signed((1, 5, 7, 19)), signed((19, 40))
    mod = _function({"x": x.shape, "w": w.shape}, lambda p: relax.op.matmul(p["x"], p["w"]))
    func = _legalized(mod)
    spaces = Matmul().apply(func, TARGET, True)
    assert len(spaces) == len(Matmul.TUNABLE_TILES)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref, bound = x64 @ w64, _matmul_bound(x64, w64)
    for sch in spaces:
        lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=TARGET)
        out = tvm.runtime.empty(ref.shape, "float32")
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        assert np.all(np.abs(out.numpy() - ref) <= bound)


# ------------------------------------------------------------------------------------------------
# Registration, the catch-all, the report
# ------------------------------------------------------------------------------------------------

def test_rules_are_one_explicit_list():
    names = [r.name for r in default_rules()]
    assert names == ["matmul", "dlight-gemv", "injective", "reduction", "row-reduction", "dlight-reduction", "fallback"]
    assert default_rules()[0] is not default_rules()[0]  # no shared state between pipelines


def test_fallback_takes_what_no_other_rule_does(signed):
    """argmax (a reduction with an index/value pair) is nobody's but the catch-all's; counted."""
    x = signed((5, 3, 37))
    mod = _function({"x": x.shape}, lambda p: relax.op.argmax(p["x"], axis=2), "float32")
    got, table = _compile_run(mod, [x])
    assert set(table.values()) <= {"fallback", "reduction"} and "unscheduled" not in table.values(), table
    np.testing.assert_array_equal(got, x.argmax(axis=2))


def test_scheduled_functions_are_skipped():
    """A function already scheduled (ours, a tuning record) is left alone by the pass."""
    a = te.placeholder((8, 8), name="a")
    func = te.create_prim_func([a, te.compute((8, 8), lambda i, j: a[i, j] + 1, name="b")])
    func = func.with_attr("tirx.is_scheduled", True)
    mod = tvm.IRModule({"f": func})
    with TARGET:
        out = ApplyLlvmRules()(mod)
    assert tvm_ffi.structural_equal(out["f"], func)


def test_schedule_failure_falls_through_and_is_reported():
    """A rule that raises does not stop compilation: the next rule schedules the function and the
    error is recorded on it for the compile report."""

    class Broken(default_rules()[0].__class__):
        name = "broken"

        def apply(self, func, target, tunable):
            raise s_tir.schedule.ScheduleError("broken on purpose")

    a = te.placeholder((8, 40), name="a")
    func = te.create_prim_func([a, te.compute((8, 40), lambda i, j: a[i, j] * 2, name="b")])
    with TARGET:
        new = ApplyLlvmRules([Broken(), *default_rules()]).schedule("f", func, TARGET)
    assert str(new.attrs["tvm_winograd.scheduled_by"]) == "injective"
    assert "broken: broken on purpose" in str(new.attrs["tvm_winograd.rule_errors"])


@pytest.mark.parametrize("shape", [(64, 3, 300), (5, 3, 48)])
def test_fallback_alone_on_a_reduction(signed, shape):
    """The catch-all on its own schedules a plain reduction (parallel over the kept axes) correctly;
    the larger one is big enough to run in parallel (its extents are read before the loops are fused)."""
    x = signed(shape)
    func = _legalized(_function({"x": x.shape}, lambda p: relax.op.sum(p["x"], axis=[2])))
    from tvm_winograd.schedule.llvm.fallback import Fallback

    sch = Fallback().apply(func, TARGET, False)
    assert ("T.parallel" in sch.mod["main"].script()) == (math.prod(shape) >= 16384)
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=TARGET)
    out = tvm.runtime.empty(shape[:2], "float32")
    lib["main"](tvm.runtime.tensor(x), out)
    x64 = x.astype(np.float64)
    assert np.all(np.abs(out.numpy() - x64.sum(axis=2)) <= _sum_bound(x64, (2,)))
