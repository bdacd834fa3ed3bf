"""The fixed direct-convolution schedule (``tvm_winograd.schedule.direct``) against the float64 reference.

Tolerance: an output is a sum of ``n = C/groups * R * S`` float32 products plus the epilogue terms;
recursive summation errs by at most ``(n + 2) * u * sum |x_i w_i|`` (u = 2^-24) plus ``|bias| + |residual|``
terms, whatever the summation order the schedule picks. The bound is per element, computed from
the reference convolution of ``|x|`` and ``|w|``; a wrong index or a lost tile errs by O(1).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm

from tvm_winograd.compute import Epilogue, direct_func
from tvm_winograd.contract import mark_scheduled
from tvm_winograd.reference import conv2d_direct
from tvm_winograd.schedule.direct import LAYOUT_REWRITE_PREPROC, PARTITION_HINT, depthwise_tile, direct_tile, hoist_weight_packing, schedule_direct_llvm, split_weight_packing
from tvm_winograd.targets import resolve_target
from tvm_winograd.workload import make_spec

U32 = 2.0**-24

# (input NCHW, K, r, padding, stride, groups, layout, epilogue, register-tiled?)
CASES = [
    pytest.param((1, 8, 10, 10), 32, 3, 1, 1, 1, "NCHW", Epilogue(bias=True, relu=True), True, id="3x3s1-nchw-bias-relu"),
    pytest.param((1, 5, 11, 13), 48, 3, 1, 2, 1, "NCHW", Epilogue(), True, id="3x3s2-nchw-odd-blocks"),
    pytest.param((2, 16, 8, 8), 32, 1, 0, 2, 1, "NCHW", Epilogue(bias=True), True, id="1x1s2-nchw-batch2"),
    pytest.param((1, 3, 30, 30), 16, 7, 3, 2, 1, "NCHW", Epilogue(bias=True, relu=True), True, id="7x7s2-nchw-stem"),
    pytest.param((1, 8, 9, 9), 32, 3, 1, 1, 1, "NCHW", Epilogue(bias=True, residual=True, relu=True), True,
                 id="3x3s1-nchw-residual"),
    pytest.param((1, 8, 13, 13), 32, 3, 1, 1, 1, "NCHW", Epilogue(bias=True, relu=True), True, id="prime-width-nchw"),
    pytest.param((1, 8, 13, 13), 32, 3, 1, 1, 1, "NHWC", Epilogue(residual=True), True, id="prime-width-nhwc"),
    pytest.param((1, 24, 17, 17), 32, 1, 0, 1, 1, "NHWC-packed", Epilogue(bias=True, relu=True), True,
                 id="1x1-width-17-peeled-tail"),
    pytest.param((1, 8, 17, 17), 32, 3, 1, 1, 1, "NCHW", Epilogue(residual=True), True, id="width-17-nchw-peeled-tail"),
    pytest.param((1, 8, 9, 9), 16, 3, 1, 1, 2, "NCHW", Epilogue(bias=True), False, id="grouped-nchw"),
    pytest.param((1, 8, 10, 10), 6, 3, 1, 1, 1, "NCHW", Epilogue(), False, id="6-channels-nchw"),
    pytest.param((1, 8, 10, 10), 32, 3, 1, 1, 1, "NHWC", Epilogue(bias=True, relu=True), True, id="3x3s1-nhwc"),
    pytest.param((1, 8, 11, 11), 16, 3, 1, 2, 1, "NHWC", Epilogue(residual=True), True, id="3x3s2-nhwc"),
    pytest.param((1, 8, 9, 9), 16, 1, 0, 1, 1, "NHWC", Epilogue(), True, id="1x1s1-nhwc"),
    pytest.param((1, 8, 9, 9), 32, 3, 1, 1, 1, "NHWC-packed", Epilogue(bias=True), True, id="3x3s1-nhwc-packed"),
    pytest.param((1, 8, 9, 9), 16, 3, 1, 1, 2, "NHWC", Epilogue(), True, id="grouped-nhwc-8-per-group"),
    pytest.param((1, 32, 9, 11), 64, 3, 1, 1, 2, "NHWC-packed", Epilogue(bias=True, relu=True), True,
                 id="grouped-nhwc-32-per-group"),
    pytest.param((1, 64, 7, 7), 64, 3, 1, 1, 4, "NHWC-packed", Epilogue(bias=True), True, id="grouped-nhwc-16-per-group"),
    pytest.param((1, 16, 10, 10), 16, 3, 1, 2, 4, "NHWC", Epilogue(bias=True), True, id="grouped-nhwc-4-per-group-s2"),
    pytest.param((1, 8, 9, 9), 8, 3, 1, 1, 4, "NHWC", Epilogue(), False, id="grouped-nhwc-2-per-group"),
    pytest.param((1, 8, 9, 9), 16, 3, 1, 1, 8, "NHWC", Epilogue(), False, id="depthwise-multiplier-2"),
    pytest.param((1, 48, 13, 13), 48, 3, 1, 1, 48, "NHWC-packed", Epilogue(bias=True, relu=True), True,
                 id="depthwise-3x3-prime-width"),
    pytest.param((1, 32, 15, 15), 32, 3, 1, 2, 32, "NHWC", Epilogue(bias=True), True, id="depthwise-3x3s2"),
    pytest.param((1, 24, 11, 11), 24, 5, 2, 1, 24, "NHWC-packed", Epilogue(residual=True), True, id="depthwise-5x5"),
    pytest.param((1, 16, 9, 17), 16, 7, 3, 1, 16, "NHWC", Epilogue(bias=True), True, id="depthwise-7x7"),
    pytest.param((1, 6, 9, 9), 6, 3, 1, 1, 6, "NHWC", Epilogue(), False, id="depthwise-6-channels"),
    # tasks of several output rows padding their own input rows, halos shared with the neighbours
    pytest.param((2, 32, 40, 12), 32, 3, 1, 1, 32, "NHWC", Epilogue(bias=True, relu=True), True,
                 id="depthwise-batch2-row-tasks"),
    pytest.param((1, 32, 36, 10), 32, 3, 1, 2, 2, "NHWC", Epilogue(bias=True), True, id="grouped-s2-row-tasks"),
]


def _reference(x, w, b, res, padding, stride, groups, layout, relu):
    """(float64 output, per-element error bound)"""
    conv = conv2d_direct(x.astype(np.float64), w.astype(np.float64), padding=padding, stride=stride,
                         groups=groups, layout=layout)
    mag = conv2d_direct(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), padding=padding,
                        stride=stride, groups=groups, layout=layout)
    channel_axis = 1 if layout == "NCHW" else 3
    shape = [1, 1, 1, 1]
    shape[channel_axis] = -1
    out, extra = conv, np.zeros_like(conv)
    if b is not None:
        out = out + b.astype(np.float64).reshape(shape)
        extra = extra + np.abs(b).reshape(shape)
    if res is not None:
        out = out + res.astype(np.float64)
        extra = extra + np.abs(res)
    if relu:
        out = np.maximum(out, 0)
    w_hwio = w.shape if layout == "NHWC" else (w.shape[2], w.shape[3], w.shape[1], w.shape[0])
    n = w_hwio[0] * w_hwio[1] * w_hwio[2]
    return out, (n + 2) * U32 * (mag + extra) + 1e-30


@pytest.mark.parametrize("input_nchw, k, r, padding, stride, groups, layout, epilogue, tiled", CASES)
def test_scheduled_direct_matches_float64(signed, caplog, input_nchw, k, r, padding, stride, groups, layout,
                                          epilogue, tiled):
    n, c, h, w_ = input_nchw
    pack_weight = True if layout == "NHWC-packed" else None
    layout = layout.split("-")[0]
    if layout == "NCHW":
        x_shape, w_shape = (n, c, h, w_), (k, c // groups, r, r)
    else:
        x_shape, w_shape = (n, h, w_, c), (r, r, c // groups, k)
    spec = make_spec(x_shape, w_shape, padding=padding, stride=stride, groups=groups, layout=layout)
    with caplog.at_level(logging.WARNING, logger="tvm_winograd.schedule.direct"):
        func = schedule_direct_llvm(direct_func(spec, epilogue), pack_weight=pack_weight)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text
    script = func.script()
    # NCHW register tile: the weight is packed in a (hoistable) preproc block; the fallback has none
    assert (LAYOUT_REWRITE_PREPROC in script) == (tiled and (layout == "NCHW" or bool(pack_weight)))
    if tiled:  # 16 output channels per zmm register
        assert any(f"T.vectorized({v})" in script for v in (4, 8, 16)), script
        # a partial last tile is peeled by LoopPartition (no guard inside the reduction loop)
        tile = (depthwise_tile(k, spec.out_width) if groups == k == c and groups > 1
                else direct_tile(k, spec.out_width, group_channels=k // groups if groups > 1 else None, wide=True))
        assert (PARTITION_HINT in script) == (spec.out_width % tile[2] != 0), script

    x = signed(x_shape)
    w = signed(w_shape)
    out_shape = tuple(int(d) for d in spec.output_shape)
    b = signed((k,)) if epilogue.bias else None
    res = signed(out_shape) if epilogue.residual else None
    ref, bound = _reference(x, w, b, res, padding, stride, groups, layout, epilogue.relu)

    dev = tvm.cpu(0)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target("llvm"))
    args = [tvm.runtime.tensor(a, dev) for a in (x, w, b, res) if a is not None]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"), dev)
    lib["main"](*args, out)
    err = np.abs(out.numpy().astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3e} > bound {bound[worst]:.3e} at {worst}"


@pytest.mark.parametrize("input_nchw, k, r, padding, stride, layout, epilogue", [
    pytest.param((2, 8, 9, 9), 48, 3, 1, 1, "NCHW", Epilogue(bias=True, residual=True, relu=True), id="3x3-nchw-batch2"),
    pytest.param((1, 24, 17, 17), 32, 1, 0, 1, "NHWC", Epilogue(bias=True, relu=True), id="1x1-nhwc-peeled-tail"),
    pytest.param((1, 16, 11, 11), 64, 3, 1, 2, "NHWC", Epilogue(residual=True), id="3x3s2-nhwc"),
])
def test_rows_outside_or_inside_the_channel_blocks_agree(monkeypatch, signed, input_nchw, k, r, padding, stride,
                                                           layout, epilogue):
    """Weights up to ``ROWS_OUTER_MAX_WEIGHT_BYTES`` put the output rows outside the channel blocks, larger
    ones inside: a loop order only, so both give the same bits (each output's reduction runs in the same
    order), within the float64 bound."""
    import tvm_winograd.schedule.direct as direct

    n, c, h, w_ = input_nchw
    x_shape, w_shape = ((n, c, h, w_), (k, c, r, r)) if layout == "NCHW" else ((n, h, w_, c), (r, r, c, k))
    spec = make_spec(x_shape, w_shape, padding=padding, stride=stride, layout=layout)
    x, w = signed(x_shape), signed(w_shape)
    out_shape = tuple(int(d) for d in spec.output_shape)
    b = signed((k,)) if epilogue.bias else None
    res = signed(out_shape) if epilogue.residual else None
    ref, bound = _reference(x, w, b, res, padding, stride, 1, layout, epilogue.relu)
    outs, scripts = [], []
    for limit in (1 << 30, 0):  # rows outside (these weights are small), then channel blocks outside
        monkeypatch.setattr(direct, "ROWS_OUTER_MAX_WEIGHT_BYTES", limit)
        func = schedule_direct_llvm(direct_func(spec, epilogue), pack_weight=True)
        scripts.append(func.script())
        lib = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target("llvm"))
        out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"))
        lib["main"](*[tvm.runtime.tensor(a) for a in (x, w, b, res) if a is not None], out)
        outs.append(out.numpy())
        err = np.abs(outs[-1].astype(np.float64) - ref)
        assert np.all(err <= bound), f"limit {limit}: error {err.max():.3e}"
    assert scripts[0] != scripts[1]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("k, width, expected", [
    (64, 112, (16, 2, 7)),  # 2 vectors x 7 columns: 14 accumulators
    (512, 7, (16, 2, 7)),
    (48, 28, (16, 1, 14)),  # odd number of 16-channel blocks: one vector, up to 14 columns
    (12, 10, (4, 1, 10)),
    (32, 13, (16, 2, 7)),   # a prime width: a full tile and a predicated tail
    (32, 10, (16, 2, 5)),
    (6, 10, None),
])
def test_direct_tile(k, width, expected):
    assert direct_tile(k, width) == expected


@pytest.mark.parametrize("k, width, expected", [
    (64, 112, (16, 2, 14)),  # 2 vectors x 14 columns: 28 accumulators, the columns outside the vectors
    (512, 7, (16, 2, 7)),    # no wider divisor: the 2 x 7 tile
    (48, 28, (16, 1, 14)),   # one vector: as narrow
    (32, 13, (16, 2, 13)),
    (32, 17, (16, 2, 14)),   # a full wide tile and a peeled tail
    (24, 56, (8, 1, 14)),    # 8-channel vectors: as narrow
])
def test_wide_direct_tile(k, width, expected):
    assert direct_tile(k, width, wide=True) == expected


@pytest.mark.parametrize("k, width, group_channels, expected", [
    (512, 14, 16, (16, 2, 7)),  # one group per vector
    (1024, 7, 32, (16, 2, 7)),
    (96, 28, 8, (8, 2, 7)),     # 8 channels per group: 8-lane vectors (each lane reads its group's input)
    (128, 56, 4, (4, 2, 7)),
    (16, 8, 2, None),
])
def test_direct_tile_grouped(k, width, group_channels, expected):
    assert direct_tile(k, width, group_channels=group_channels) == expected


@pytest.mark.parametrize("c, width, expected", [(144, 56, (16, 1, 8)), (24, 13, (8, 1, 8)), (96, 7, (16, 1, 7)),
                                                (6, 10, None)])
def test_depthwise_tile(c, width, expected):
    assert depthwise_tile(c, width) == expected


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_weight_packing_is_hoisted_and_folded(signed, layout):
    """In a Relax module with a constant weight, :func:`hoist_weight_packing` moves the packing out of
    the convolution (no preproc block left in it), folds it into a packed constant, and the compiled
    model still equals the float64 reference."""
    from tvm import relax

    x_shape, w_shape = ((1, 8, 9, 9), (32, 8, 3, 3)) if layout == "NCHW" else ((1, 9, 9, 8), (3, 3, 8, 32))
    spec = make_spec(x_shape, w_shape, padding=1, stride=2, layout=layout)
    out_shape = tuple(int(d) for d in spec.output_shape)
    func = schedule_direct_llvm(direct_func(spec, Epilogue(bias=True)), pack_weight=True)
    x, w, b = signed(x_shape), signed(w_shape), signed((32,))
    bb = relax.BlockBuilder()
    conv_gv = bb.add_func(mark_scheduled(func).without_attr("global_symbol"), "conv")
    data = relax.Var("data", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [data]):
        with bb.dataflow():
            y = bb.emit(relax.call_tir(conv_gv, [data, relax.const(w), relax.const(b)],
                                       relax.TensorType(out_shape, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = hoist_weight_packing(bb.get())

    convs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert convs and not any(LAYOUT_REWRITE_PREPROC in f.script() for f in convs)
    assert mod["main"].script().count("call_tir(") == 1, mod["main"].script()  # the packing was folded
    target = resolve_target("llvm")
    ex = tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu(0))
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu(0))).numpy()
    ref, bound = _reference(x, w, b, None, 1, 2, 1, layout, False)
    assert np.all(np.abs(got - ref) <= bound)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_split_weight_packing_runs_the_packing_once_ahead(signed, layout):
    """:func:`split_weight_packing` (the per-layer benchmark's direct conv, as a model runs it): the
    packing function maps the weight to what the prepacked convolution reads, and packing then
    convolving equals the float64 reference; a function that packs nothing comes back unchanged."""
    x_shape, w_shape = ((1, 8, 9, 9), (32, 8, 3, 3)) if layout == "NCHW" else ((1, 9, 9, 8), (3, 3, 8, 32))
    spec = make_spec(x_shape, w_shape, padding=1, layout=layout)
    func = schedule_direct_llvm(direct_func(spec, Epilogue(bias=True)), pack_weight=True)
    prepacked, packing = split_weight_packing(func)
    assert packing is not None and LAYOUT_REWRITE_PREPROC not in prepacked.script()
    packed_shape = tuple(int(d) for d in packing.params[1].shape)
    assert packed_shape == tuple(int(d) for d in prepacked.params[1].shape) == (2, 3, 3, 8, 16)
    x, w, b = signed(x_shape), signed(w_shape), signed((32,))
    dev, target = tvm.cpu(0), resolve_target("llvm")
    packed = tvm.runtime.empty(packed_shape, "float32", dev)
    tvm.compile(tvm.IRModule({"main": packing}), target=target)["main"](tvm.runtime.tensor(w, dev), packed)
    out = tvm.runtime.empty(tuple(int(d) for d in spec.output_shape), "float32", dev)
    tvm.compile(tvm.IRModule({"main": prepacked}), target=target)["main"](
        tvm.runtime.tensor(x, dev), packed, tvm.runtime.tensor(b, dev), out)
    ref, bound = _reference(x, w, b, None, 1, 1, 1, layout, False)
    assert np.all(np.abs(out.numpy() - ref) <= bound)
    plain = schedule_direct_llvm(direct_func(spec), pack_weight=False)
    assert split_weight_packing(plain) == (plain, None)


# (input NHWC, K, r, padding, stride, epilogue): weights of 1 MiB or more, input channels in 64-blocks
STREAMED = [
    pytest.param((1, 7, 7, 256), 256, 3, 1, 1, Epilogue(bias=True, relu=True), id="3x3-2.25MB-bias-relu"),
    pytest.param((2, 5, 5, 128), 512, 3, 1, 1, Epilogue(residual=True), id="3x3-batch2-width5-residual"),
    pytest.param((1, 9, 9, 1024), 256, 1, 0, 2, Epilogue(bias=True), id="1x1s2-1MB-bias"),
    pytest.param((1, 3, 13, 512), 512, 1, 0, 1, Epilogue(), id="1x1-width13-peeled-tail"),
]


@pytest.mark.parametrize("input_nhwc, k, r, padding, stride, epilogue", STREAMED)
def test_streamed_weights_match_float64(signed, input_nhwc, k, r, padding, stride, epilogue):
    """Large NHWC weights take the streamed schedule (reduction in 64-channel blocks outside the rows,
    partial sums in the task's output tile, the next block's weights prefetched row by row): in the
    function and once its packing is split off, as a model runs it, within the float64 bound."""
    from tvm_winograd.schedule.direct import STREAM_CHUNK, STREAM_MIN_WEIGHT_BYTES

    n, h, w_, c = input_nhwc
    spec = make_spec(input_nhwc, (r, r, c, k), padding=padding, stride=stride, layout="NHWC")
    assert r * r * c * k * 4 >= STREAM_MIN_WEIGHT_BYTES and c % STREAM_CHUNK == 0
    func = schedule_direct_llvm(direct_func(spec, epilogue), pack_weight=True, cores=2)
    script = func.script()
    assert "T.prefetch(" in script, script
    assert f"T.parallel({n * k // 32})" in script  # one task per image and block of 32 output channels
    x, w = signed(input_nhwc), signed((r, r, c, k))
    out_shape = tuple(int(d) for d in spec.output_shape)
    b = signed((k,)) if epilogue.bias else None
    res = signed(out_shape) if epilogue.residual else None
    ref, bound = _reference(x, w, b, res, padding, stride, 1, "NHWC", epilogue.relu)
    prepacked, packing = split_weight_packing(func)
    assert "T.prefetch(" in prepacked.script()
    lib = _check_runs([(func, tvm.runtime.tensor(w)), (prepacked, _pack(packing, w))], x, b, res, ref, bound)
    assert "prefetcht0" in lib.mod.inspect_source("asm")


def _pack(packing, w: np.ndarray):
    """The weight packed by a packing function split off a scheduled conv (as a model packs it, ahead)."""
    packed = tvm.runtime.empty(tuple(int(d) for d in packing.params[1].shape), "float32", tvm.cpu(0))
    tvm.compile(tvm.IRModule({"main": packing}), target=resolve_target("llvm"))["main"](tvm.runtime.tensor(w), packed)
    return packed


def _check_runs(runs, x, b, res, ref, bound):
    """Compile and run each ``(function, weight)`` on ``x`` (and the bias and residual there are), every
    output within ``bound`` of the float64 ``ref``; returns the last library."""
    dev, target = tvm.cpu(0), resolve_target("llvm")
    for f, weight in runs:
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        args = [tvm.runtime.tensor(x, dev), weight] + [tvm.runtime.tensor(a, dev) for a in (b, res) if a is not None]
        out = tvm.runtime.tensor(np.full(ref.shape, np.nan, "float32"), dev)
        lib["main"](*args, out)
        err = np.abs(out.numpy().astype(np.float64) - ref)
        assert np.all(err <= bound), f"error {err.max():.3e}, bound {bound.flat[np.argmax(err)]:.3e}"
    return lib


@pytest.mark.parametrize("input_nhwc, k, r, cores, streamed", [
    ((1, 7, 7, 256), 256, 3, 2, True),     # 2.25 MB, 8 tasks for 2 cores
    ((1, 7, 7, 256), 256, 3, 4, False),    # 8 tasks for 4 cores: fewer than TASKS_PER_CORE each
    ((1, 14, 14, 128), 128, 3, 1, False),  # 0.56 MB: stays in L2, the row-major tile is faster
    ((1, 7, 7, 1008), 256, 1, 1, False),   # 1 MB, but 1008 input channels are no whole 64-blocks
    ((1, 7, 7, 512), 512, 1, 1, True),     # 1 MiB exactly
])
def test_which_convolutions_stream_their_weights(input_nhwc, k, r, cores, streamed):
    spec = make_spec(input_nhwc, (r, r, input_nhwc[3], k), padding=r // 2, layout="NHWC")
    func = schedule_direct_llvm(direct_func(spec), pack_weight=True, cores=cores)
    assert ("T.prefetch(" in func.script()) == streamed
    # NCHW and unpacked NHWC keep the row-major tile
    assert "T.prefetch(" not in schedule_direct_llvm(direct_func(spec), pack_weight=False, cores=cores).script()


# (input NHWC, K, r, padding, stride, epilogue, pack_weight): output channels no multiple of 16
PADDED = [
    pytest.param((1, 9, 9, 24), 24, 1, 0, 1, Epilogue(bias=True, relu=True), True, id="1x1-k24-bias-relu"),
    pytest.param((1, 11, 11, 16), 27, 3, 1, 1, Epilogue(), True, id="3x3-k27-no-epilogue"),
    pytest.param((2, 7, 13, 40), 40, 3, 1, 2, Epilogue(residual=True), True, id="3x3s2-k40-batch2-residual"),
    pytest.param((1, 3, 3, 1024), 1000, 1, 0, 1, Epilogue(bias=True), True, id="1x1-k1000-streamed"),
    pytest.param((1, 9, 9, 24), 24, 1, 0, 1, Epilogue(bias=True), False, id="1x1-k24-unpacked"),
]


@pytest.mark.parametrize("input_nhwc, k, r, padding, stride, epilogue, pack_weight", PADDED)
def test_padded_output_channels_match_float64(signed, input_nhwc, k, r, padding, stride, epilogue, pack_weight):
    """``direct_func(out_channel_multiple=16)``: the convolution runs on whole 16-channel vectors of a
    zero-padded weight (the padding folded into the weight packing, so a model packs it ahead of time)
    and the epilogue writes the real channels: within the float64 bound, in the function and once its
    packing is split off (as a model runs it)."""
    from tvm_winograd.compute import direct_channel_multiple
    from tvm_winograd.contract import WEIGHT_PAD

    n, h, w_, c = input_nhwc
    spec = make_spec(input_nhwc, (r, r, c, k), padding=padding, stride=stride, layout="NHWC")
    assert direct_channel_multiple(spec, "llvm") == 16
    func = schedule_direct_llvm(direct_func(spec, epilogue, out_channel_multiple=16), pack_weight=pack_weight,
                                cores=2)
    script = func.script()
    assert "T.vectorized(16)" in script and "T.vectorized(8)" not in script, script
    block = f'T.sblock("{WEIGHT_PAD}")'
    assert (block in script) == (not pack_weight)  # else inlined into the packing
    x, w = signed(input_nhwc), signed((r, r, c, k))
    out_shape = tuple(int(d) for d in spec.output_shape)
    b = signed((k,)) if epilogue.bias else None
    res = signed(out_shape) if epilogue.residual else None
    ref, bound = _reference(x, w, b, res, padding, stride, 1, "NHWC", epilogue.relu)
    runs = [(func, tvm.runtime.tensor(w))]
    prepacked, packing = split_weight_packing(func)
    if pack_weight:
        assert block not in prepacked.script() and "T.if_then_else" in packing.script()
        packed = _pack(packing, w)
        assert packed.shape[0] * packed.shape[-1] == -(-k // 16) * 16  # whole vectors of output channels
        runs.append((prepacked, packed))
    _check_runs(runs, x, b, res, ref, bound)


@pytest.mark.parametrize("k, groups, layout, target_kind, multiple", [
    (24, 1, "NHWC", "llvm", 16), (40, 1, "NHWC", "llvm", 16), (1000, 1, "NHWC", "llvm", 16),
    (32, 1, "NHWC", "llvm", 1), (8, 1, "NHWC", "llvm", 1), (24, 1, "NCHW", "llvm", 1),
    (24, 24, "NHWC", "llvm", 1), (24, 1, "NHWC", "cuda", 1),
])
def test_which_convolutions_pad_their_output_channels(k, groups, layout, target_kind, multiple):
    """Dense NHWC convolutions on llvm with more than 8 output channels and no multiple of 16; not
    grouped or NCHW ones (the register tile's vector must stay in one group; NCHW keeps its
    transposed write-back), not 8 or fewer (a padded vector would be mostly zeros), not for CUDA."""
    from tvm_winograd.compute import direct_channel_multiple

    c = k if groups > 1 else 16
    nhwc = layout == "NHWC"
    x_shape, w_shape = ((1, 8, 8, c), (3, 3, c // groups, k)) if nhwc else ((1, c, 8, 8), (k, c // groups, 3, 3))
    spec = make_spec(x_shape, w_shape, padding=1, groups=groups, layout=layout)
    assert direct_channel_multiple(spec, target_kind) == multiple


@pytest.mark.parametrize("groups, padding, per_task", [(32, 1, True), (4, 1, True), (1, 1, False), (32, 0, False)])
def test_grouped_convolutions_pad_inside_their_tasks(groups, padding, per_task):
    """A padded grouped or depthwise NHWC convolution pads the input inside its parallel tasks (the
    padding block's loops under the convolution's parallel loop), a dense one in a parallel pass of its
    own; without padding there is no padding block."""
    from tvm import s_tir

    from tvm_winograd.contract import DATA_PAD
    from tvm_winograd.schedule.common import root_blocks

    spec = make_spec((1, 28, 28, 32), (3, 3, 32 // groups, 32), padding=padding, groups=groups, layout="NHWC")
    sch = s_tir.Schedule(schedule_direct_llvm(direct_func(spec, Epilogue()), cores=2))
    blocks = root_blocks(sch)
    pads = [blocks[n] for n in ("pad_temp", DATA_PAD, "PaddedInput") if n in blocks]
    assert len(pads) == (1 if padding else 0), list(blocks)
    if not padding:
        return
    conv = sch.get_sblock(("group_conv2d_nhwc" if groups > 1 else "conv2d_nhwc") + "_update")
    pad_outer, conv_outer = sch.get(sch.get_loops(pads[0])[0]), sch.get(sch.get_loops(conv)[0])
    assert pad_outer.kind == tvm.tirx.ForKind.PARALLEL
    assert pad_outer.same_as(conv_outer) == per_task


def test_grouped_padding_that_cannot_move_into_the_task_stays_a_pass(monkeypatch, signed, caplog):
    """Where ``compute_at`` refuses the padding (a grouping the region analysis cannot follow), the
    padding stays a parallel pass of its own, with a warning, and the convolution stays exact."""
    from tvm import s_tir

    def refuse(self, *args, **kwargs):
        raise s_tir.ScheduleError("refused by the test")

    monkeypatch.setattr(s_tir.Schedule, "compute_at", refuse)
    x_shape, w_shape = (1, 12, 10, 32), (3, 3, 1, 32)
    spec = make_spec(x_shape, w_shape, padding=1, groups=32, layout="NHWC")
    with caplog.at_level(logging.WARNING, logger="tvm_winograd.schedule.direct"):
        func = schedule_direct_llvm(direct_func(spec, Epilogue(bias=True)), cores=2)
    assert "padding stays a pass of its own" in caplog.text
    x, w, b = signed(x_shape), signed(w_shape), signed((32,))
    ref, bound = _reference(x, w, b, None, 1, 1, 32, "NHWC", False)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target("llvm"))
    out = tvm.runtime.tensor(np.full(ref.shape, np.nan, "float32"))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, w, b)), out)
    assert np.all(np.abs(out.numpy() - ref) <= bound)
