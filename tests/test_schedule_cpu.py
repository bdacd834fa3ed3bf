"""The CPU design spaces (schedule/cpu.py): every sampled schedule is numerically right.

Each case applies the registered MetaSchedule rules ``s_tir.meta_schedule.cpu.winograd_*`` the way
MetaSchedule's ``ApplyCustomRule`` does (blocks visited from the last one), on a schedule seeded
differently per case, so the sampled knobs (tile factors, vector lengths) differ; the result is built for
llvm and judged against the float64 reference (:func:`tvm_winograd.tune.verification.verify_func`: the worst-case
bound and the random-rounding model of :func:`tvm_winograd.accuracy.assess`).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir

from tvm_winograd.accuracy import weight_transform_bound
from tvm_winograd.compute import (Epilogue, WinogradConfig, block_kernel_pack, kernel_pack_shape, target_config,
                                  weight_transform_func, winograd_func)
from tvm_winograd.reference import winograd_weight_transform
from tvm_winograd.schedule import cpu, register_rules
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.verification import verify_func
from tvm_winograd.workload import make_spec

TARGET = resolve_target("llvm")
register_rules("llvm")  # what tuning does before MetaSchedule looks the rules up


def _spec(layout: str, c: int = 8, h: int = 10, k: int = 16):
    ishape = (1, c, h, h) if layout == "NCHW" else (1, h, h, c)
    wshape = (k, c, 3, 3) if layout == "NCHW" else (3, 3, c, k)
    return make_spec(ishape, wshape, padding=1, layout=layout)


def _apply_rules(func, seed: int, pick: dict | None = None) -> tuple[tvm.tirx.PrimFunc, list]:
    """Apply every registered rule like MetaSchedule's post-order ApplyCustomRule; one design space
    (the first each rule returns, or ``pick[rule]``)."""
    sch = s_tir.Schedule(func, seed=seed)
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    for name in reversed(names):
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - inlined by an earlier rule
            continue
        rule = sch.get(block).annotations.get("schedule_rule")
        if rule is None or str(rule) == "None":
            continue
        fn = tvm.get_global_func(f"s_tir.meta_schedule.cpu.{rule}")
        spaces = fn(sch, block)
        assert len(spaces) >= 1
        sch = spaces[(pick or {}).get(str(rule), 0)]
    decisions = [str(d) for d in sch.trace.decisions.values()]
    return sch.mod["main"], decisions


def test_rules_are_registered():
    for rule in cpu.RULES:
        assert tvm.get_global_func(f"s_tir.meta_schedule.cpu.{rule}", allow_missing=True) is not None, rule


def test_registration_is_explicit_and_idempotent():
    """Importing the schedules, the tuner and cuda-check registers nothing; register_rules registers the
    target's rules, once (a second call changes nothing); an unknown kind is named."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import tvm
        import tvm_winograd.schedule, tvm_winograd.schedule.cpu, tvm_winograd.schedule.cuda
        import tvm_winograd.tune.tuner, tvm_winograd.tune.database, tvm_winograd.cuda.check, tvm_winograd.export
        from tvm_winograd.schedule import register_rules
        def have(key):
            return [tvm.get_global_func(f"s_tir.meta_schedule.{key}.{r}", allow_missing=True) is not None
                    for r in tvm_winograd.schedule.cpu.RULES]
        print(have("cpu"), have("cuda"), have("gpu"))
        register_rules("llvm")
        first = tvm.get_global_func("s_tir.meta_schedule.cpu.winograd_bgemm")
        register_rules("llvm")
        print(have("cpu"), have("cuda"), tvm.get_global_func("s_tir.meta_schedule.cpu.winograd_bgemm").same_as(first))
        register_rules("cuda")
        print(have("cuda"), have("gpu"))
        try:
            register_rules("vulkan")
        except ValueError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    lines = out.stdout.strip().splitlines()
    n = len(cpu.RULES)
    assert lines[0] == f"{[False] * n} {[False] * n} {[False] * n}"
    assert lines[1] == f"{[True] * n} {[False] * n} True"
    assert lines[2] == f"{[True] * n} {[True] * n}"
    assert "'vulkan'" in lines[3]


@pytest.mark.parametrize("m,layout", [(2, "NCHW"), (2, "NHWC"), (4, "NCHW"), (4, "NHWC"),
                                      (6, "NHWC")])  # F(6,3): one layout (~8 s, ~30 s under load)
def test_sampled_schedules_are_correct(layout, m):
    """Two seeds per case; bias + ReLU epilogue (residual in the NHWC m=4 case)."""
    spec = _spec(layout)
    epilogue = Epilogue(bias=True, residual=(layout == "NHWC" and m == 4), relu=True)
    # what compilation uses on llvm: U in panels of 16 or 8 output channels, separable transforms
    func = winograd_func(spec, target_config(spec, m, "llvm"), epilogue)
    seen = []
    for seed in (1, 2):
        scheduled, decisions = _apply_rules(func, seed)
        seen.append(decisions)
        err = verify_func(scheduled, spec, epilogue, "winograd", m, TARGET, seed=seed)
        assert err > 0.0  # a real fp32 computation, not a copy of the reference
    assert all(len(d) >= 4 for d in seen), "the design space samples its knobs"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sampled_schedules_fp16(layout):
    """fp16 layers store the transformed tiles in fp16: the input transform accumulates in fp32 and its
    storage cast is the tile's write-back (it used to be inlined, which TVM refuses for a reduction,
    so every fp16 sample failed); the result is within the bound that counts the fp16 storage."""
    x, w = ((1, 8, 8, 16), (3, 3, 16, 32)) if layout == "NHWC" else ((1, 16, 8, 8), (32, 16, 3, 3))
    spec = make_spec(x, w, padding=1, layout=layout, dtype="float16")
    func = winograd_func(spec, target_config(spec, 2, "llvm"))
    scheduled, _ = _apply_rules(func, 1)
    assert verify_func(scheduled, spec, Epilogue(), "winograd", 2, TARGET, seed=1) > 0.0


def test_seeds_explore_different_points():
    """The sampled knobs really vary with the seed (the search has something to explore)."""
    spec = _spec("NCHW", c=16, h=16, k=32)
    func = winograd_func(spec, WinogradConfig(m=2))
    traces = {tuple(_apply_rules(func, seed)[1]) for seed in range(1, 7)}
    assert len(traces) > 1


def test_fixed_decisions_hand_written_schedule():
    """apply_fixed: a hand-written point of the space (what scripts use to probe speed) is correct."""
    spec = _spec("NHWC", c=16, h=8, k=32)
    decisions = {"bgemm.rows": [2, 2, 4], "bgemm.vector": 16, "bgemm.lanes": [1, 1, 2], "bgemm.reduce": [2, 8],
                 "output.lanes": 16, "data_pack.lanes": 16}
    func = cpu.apply_fixed(winograd_func(spec, WinogradConfig(m=2, kernel_block=16)), decisions, "k")
    verify_func(func, spec, Epilogue(), "winograd", 2, TARGET)
    text = func.script()
    assert "T.vectorized(16)" in text and "T.parallel" in text


def _in_output_step(func, block_name: str) -> bool:
    """Whether ``block_name`` (its ``_update`` half, once the reduction is decomposed) runs inside the
    output's outermost (parallel) loop, i.e. per step of tiles, not as a whole-layer stage."""
    sch = s_tir.Schedule(func)
    names = [name for name in (block_name + "_update", block_name) if cpu._has_block(sch, name)]
    outer = sch.get(sch.get_loops(sch.get_sblock("conv2d_winograd"))[0])
    assert outer.kind == tvm.tirx.ForKind.PARALLEL
    return sch.get(sch.get_loops(sch.get_sblock(names[0]))[0]).same_as(outer)


@pytest.mark.parametrize("m", [2, 4])
def test_fused_space_is_correct(m):
    """The fused space (data_pack, bgemm and inverse per step of tiles; NHWC): sampled points with a
    bias + residual + ReLU epilogue match the float64 reference, and the GEMM and the input transform
    really run inside the parallel step (not as whole-layer stages)."""
    spec = _spec("NHWC", c=16, h=16, k=32)
    epilogue = Epilogue(bias=True, residual=True, relu=True)
    func = winograd_func(spec, target_config(spec, m, "llvm"), epilogue)
    for seed in (3, 4):
        scheduled, decisions = _apply_rules(func, seed, pick={"winograd_output": 1})
        assert _in_output_step(scheduled, "bgemm")
        assert _in_output_step(scheduled, "data_pack")
        assert verify_func(scheduled, spec, epilogue, "winograd", m, TARGET, seed=seed) > 0.0
    unfused, _ = _apply_rules(func, 3)
    assert not _in_output_step(unfused, "bgemm")


def test_output_rule_offers_the_fused_space_for_fp32_nhwc_only():
    rule = tvm.get_global_func("s_tir.meta_schedule.cpu.winograd_output")
    fp16 = make_spec((1, 8, 8, 16), (3, 3, 16, 32), padding=1, layout="NHWC", dtype="float16")
    for spec, count in ((_spec("NHWC"), 2), (_spec("NCHW"), 1), (fp16, 1)):
        sch = s_tir.Schedule(winograd_func(spec, target_config(spec, 2, "llvm")), seed=1)
        assert len(rule(sch, sch.get_sblock("conv2d_winograd"))) == count, spec.key()


@pytest.mark.parametrize("kernel_block", [None, 4])
def test_kernel_pack_rule_matches_reference(rng, kernel_block):
    spec = _spec("NCHW", c=8, h=8, k=8)
    func = weight_transform_func(spec, WinogradConfig(m=4, kernel_block=kernel_block))
    sch = s_tir.Schedule(func, seed=1)
    block = sch.get_sblock("kernel_pack_acc") if "kernel_pack_acc" in func.script() else sch.get_sblock("kernel_pack")
    (sch,) = tvm.get_global_func("s_tir.meta_schedule.cpu.winograd_kernel_pack")(sch, block)
    ex = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=TARGET)
    w = rng.standard_normal(spec.weight_shape).astype("float32")
    dev = tvm.cpu(0)
    out = tvm.runtime.empty(kernel_pack_shape(spec, 4, kernel_block), "float32", dev)
    ex["main"](tvm.runtime.tensor(w, dev), out)
    ref = block_kernel_pack(winograd_weight_transform(w.astype(np.float64), 4, "NCHW"), kernel_block)
    bound = block_kernel_pack(weight_transform_bound(w, 4, "NCHW"), kernel_block)  # gamma_{r^2+3} |G||g||G_T|
    err = np.abs(out.numpy() - ref)
    assert np.all(err <= bound) and err.max() > 0


@pytest.mark.parametrize("shape, m, fused", [
    ((128, 112, 128), 4, True),    # U 2.4 MB, 784 tiles: the per-layer stages would go through memory
    ((64, 56, 64), 4, True),
    ((512, 28, 512), 4, False),    # U 38 MB: reading it per step loses
    ((128, 28, 128), 4, False),    # 49 tiles
    ((128, 112, 128), 6, False),   # 19 tiles per row: steps of one tile
])
def test_default_uses_the_fused_space_where_the_rule_says(shape, m, fused):
    from tvm_winograd.schedule.default import default_decisions

    c, h, k = shape
    spec = _spec("NHWC", c=c, h=h, k=k)
    decisions = default_decisions(winograd_func(spec, target_config(spec, m, "llvm")))
    assert ("fused.tiles" in decisions) == fused
    if fused:
        steps, tiles = decisions["fused.tiles"]
        rows, per_tile = decisions["bgemm.rows"]
        assert steps * tiles == -(-h // m) and rows * per_tile == tiles
        assert per_tile * decisions["bgemm.lanes"][1] <= 28  # accumulators stay in the 32 zmm registers
    nchw = _spec("NCHW", c=c, h=h, k=k)
    assert "fused.tiles" not in default_decisions(winograd_func(nchw, target_config(nchw, m, "llvm")))


def test_fp16_default_is_the_unfused_space():
    """fp16 (storage-cast stage) has no fused space: the default must not ask for it (it would fall
    back to the simple schedule) even on a layer where fp32 fuses."""
    from tvm_winograd.schedule.default import default_decisions, default_schedule_path, schedule_llvm_default

    spec = make_spec((1, 112, 112, 16), (3, 3, 16, 16), padding=1, layout="NHWC", dtype="float16")
    func = winograd_func(spec, target_config(spec, 4, "llvm"))
    assert "fused.tiles" not in default_decisions(func)
    assert default_schedule_path(schedule_llvm_default(func)) == "design_space"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("m", [2, 4, 6])
def test_default_schedule_takes_the_design_space(layout, dtype, m):
    """The default schedule of every Winograd layer compilation emits on llvm (fp32 and fp16, both
    layouts, every candidate tile, batch 2, a K that is not a multiple of 16) is the design space at its
    default decisions, not the simple fallback (fails when the fallback is taken: the attribute says
    "fallback")."""
    from tvm_winograd.contract import DEFAULT_SCHEDULE_ATTR
    from tvm_winograd.schedule.default import default_schedule_path, schedule_llvm_default

    x, w = ((2, 12, 12, 16), (3, 3, 16, 24)) if layout == "NHWC" else ((2, 16, 12, 12), (24, 16, 3, 3))
    spec = make_spec(x, w, padding=1, layout=layout, dtype=dtype)
    scheduled = schedule_llvm_default(winograd_func(spec, target_config(spec, m, "llvm")))
    assert default_schedule_path(scheduled) == "design_space", scheduled.attrs
    weights = schedule_llvm_default(weight_transform_func(spec, target_config(spec, m, "llvm")))
    assert str(weights.attrs[DEFAULT_SCHEDULE_ATTR]) == "simple"  # weight transforms: by design


def test_default_schedule_fallback_is_reported(monkeypatch, caplog):
    """When the design space does not apply, the simple schedule is used, and it says so: the
    function's attributes carry "fallback" and the reason, and a warning is logged."""
    import logging

    from tvm_winograd.schedule import default
    from tvm_winograd.contract import FALLBACK_REASON_ATTR
    from tvm_winograd.schedule.default import default_schedule_path

    def broken(func):
        return {**original(func), "bgemm.vector": 3}  # not a power-of-two lane count

    original = default.default_decisions
    monkeypatch.setattr(default, "default_decisions", broken)
    spec = _spec("NHWC")
    with caplog.at_level(logging.WARNING, logger="tvm_winograd.schedule.default"):
        scheduled = default.schedule_llvm_default(winograd_func(spec, target_config(spec, 2, "llvm")))
    assert default_schedule_path(scheduled) == "fallback"
    assert "bgemm.vector=3" in str(scheduled.attrs[FALLBACK_REASON_ATTR])
    assert "simple default schedule" in caplog.text and "bgemm.vector=3" in caplog.text
    verify_func(scheduled, spec, Epilogue(), "winograd", 2, TARGET)  # still a correct schedule
