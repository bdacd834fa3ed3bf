"""The benchmark harness: the timing protocol with an injected fake clock, the choice of the faster
configuration, the self-checks, the machine probe's kernels and the roofline's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tvm_winograd.bench.harness import (CLI_AGREEMENT, Competitor, LoadMonitor, Reliability, Timing, best_of_groups,
                                        paired_ratio, time_alternating)
from tvm_winograd.bench.roofline import direct_limit, op_limit, winograd_limit
from tvm_winograd.workload import make_spec


class FakeClock:
    """A clock that only moves when a fake competitor runs or the harness sleeps; logs every event."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[tuple[str, float]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.log.append(("sleep", seconds))
        self.now += seconds

    def competitor(self, name: str, durations: list[float], group: str | None = None) -> Competitor:
        """A competitor whose calls take ``durations`` seconds in turn (the last one repeats)."""
        calls = iter(durations)
        last = [durations[0]]

        def run() -> None:
            last[0] = next(calls, last[0])
            self.log.append((name, last[0]))
            self.now += last[0]

        return Competitor(name, run, group=group)


def test_time_alternating_reports_exactly_what_was_measured():
    clock = FakeClock()
    # a: warm-up 0.1 + sizing call 0.02 s -> blocks of ceil(0.05 / 0.02) = 3 calls of 10, 20, 30 ms per round
    a = clock.competitor("a", [0.1, 0.02] + [0.5] + [0.010] * 3 + [0.5] + [0.020] * 3 + [0.5] + [0.030] * 3)
    b = clock.competitor("b", [0.2, 0.06] + [0.5, 0.004, 0.5, 0.005, 0.5, 0.006])
    timings = time_alternating([a, b], 3, warmup=2, block_s=0.05, gap_s=0.25, clock=clock, sleep=clock.sleep)
    assert timings["a"].calls_per_block == 3 and timings["b"].calls_per_block == 1
    assert timings["a"].samples_ms == pytest.approx([10.0, 20.0, 30.0])
    assert timings["b"].samples_ms == pytest.approx([4.0, 5.0, 6.0])
    assert timings["a"].median_ms == pytest.approx(20.0) and timings["b"].median_ms == pytest.approx(5.0)
    # After the warm-ups, the blocks alternate a b a b a b, each after a gap and an untimed wake-up call.
    rounds = [e for e in clock.log[4:]]
    names = [n for n, _ in rounds]
    assert names == (["sleep", "a", "a", "a", "a", "sleep", "b", "b"] * 3)
    assert all(s == 0.25 for n, s in rounds if n == "sleep")


def test_time_alternating_skips_the_wake_up_for_long_calls():
    clock = FakeClock()
    slow = clock.competitor("slow", [2.0])
    timings = time_alternating([slow], 2, warmup=1, clock=clock, sleep=clock.sleep)
    assert [n for n, _ in clock.log] == ["slow", "sleep", "slow", "sleep", "slow"]
    assert timings["slow"].samples_ms == pytest.approx([2000.0, 2000.0])


def test_time_alternating_rejects_bad_arguments():
    clock = FakeClock()
    with pytest.raises(ValueError, match="rounds 0"):
        time_alternating([clock.competitor("a", [0.1])], 0, clock=clock, sleep=clock.sleep)
    with pytest.raises(ValueError, match="not distinct"):
        time_alternating([clock.competitor("a", [0.1]), clock.competitor("a", [0.1])], 1, clock=clock,
                         sleep=clock.sleep)


def test_best_of_groups_keeps_the_faster_onnxruntime_configuration():
    clock = FakeClock()
    comps = [clock.competitor("onnxruntime[spin=1]", [0.010], group="onnxruntime"),
             clock.competitor("onnxruntime[spin=0]", [0.008], group="onnxruntime"),
             clock.competitor("ours", [0.005])]
    comps[0].config, comps[1].config = "spinning on", "spinning off"
    best = best_of_groups(time_alternating(comps, 3, clock=clock, sleep=clock.sleep))
    assert set(best) == {"onnxruntime", "ours"}
    assert best["onnxruntime"].median_ms == pytest.approx(8.0) and best["onnxruntime"].config == "spinning off"


def test_paired_ratio_cancels_the_machine_drift_between_rounds():
    """The median of the per-round ratios: a slowdown that hits both competitors' blocks of a round
    cancels, a burst in one of our blocks does not move it, a peer that is simply faster stays faster,
    and timings not from one alternating run (unequal lengths) fall back to the ratio of the medians."""
    speed = [1.0, 1.0, 1.6, 1.6, 1.6]
    ours = Timing("ours", [40.0 * f for f in speed], 1)
    assert paired_ratio(Timing("openvino", [50.0 * f for f in speed], 1), ours) == pytest.approx(1.25)
    fast_peer = Timing("openvino", [50.0, 50.0, 50.0, 50.0, 50.0], 1)
    assert fast_peer.median_ms / ours.median_ms == pytest.approx(50 / 64)
    assert paired_ratio(fast_peer, ours) == pytest.approx(50 / 64)
    # one slow round of ours (a burst of other load) moves the paired ratio not at all
    bursty = Timing("ours", [40.0, 40.0, 80.0, 40.0, 40.0], 1)
    assert paired_ratio(Timing("openvino", [50.0] * 5, 1), bursty) == pytest.approx(1.25)
    # not from one alternating run (different lengths): the ratio of the medians
    assert paired_ratio(Timing("p", [10.0, 30.0], 1), Timing("o", [5.0, 5.0, 20.0], 1)) == pytest.approx(20 / 5)


def test_reliability_flags_a_slow_peer_a_loaded_machine_and_a_cli_mismatch():
    ok = Reliability()
    ok.check_peer(480.0, 520.0, "onnxruntime on VGG conv3_2")
    ok.check_cli("resnet18 ours", 10.0, 10.0 * (CLI_AGREEMENT - 0.05))
    assert ok.reliable, ok.problems
    slow = Reliability()
    slow.check_peer(200.0, 520.0, "onnxruntime on VGG conv3_2")  # the old harness's figure
    assert not slow.reliable and "38%" in slow.problems[0]
    assert "UNRELIABLE" in slow.markdown()
    low_probe = Reliability()
    low_probe.check_peer(208.0, 117.0, "onnxruntime on VGG conv3_2")  # a probe that saw one core of two
    assert not low_probe.reliable and "178%" in low_probe.problems[0] and "probe" in low_probe.problems[0]
    cli = Reliability()
    cli.check_cli("resnet18 ours", 6.5, 12.4)  # `run` on one core of two
    assert not cli.reliable and "1.91x" in cli.problems[0]
    busy = LoadMonitor()
    busy.other_cores, busy.seconds = 0.9, 10.0
    loaded = Reliability()
    loaded.check_load(busy)
    assert not loaded.reliable


def test_load_monitor_sees_another_busy_process():
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(0.2)
        with LoadMonitor() as load:
            time.sleep(1.0)
    finally:
        proc.wait()
    assert load.other_cores > 0.5, load.other_cores
    with LoadMonitor() as own:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            pass
    assert own.other_cores < 0.5, own.other_cores  # our own busy loop is not "other load"


def test_probe_kernels_compute_what_they_claim():
    """The FMA and read kernels' outputs equal the recurrence and the sums they stand for, so the
    compiler cannot have dropped the work that the probe's figures count."""
    import tvm

    from tvm_winograd.bench import probe

    steps = 1000
    fma = probe._build(probe._fma_kernel(2))
    out = tvm.runtime.empty((2, probe.ACCUMULATORS * 16), "float32", tvm.cpu())
    fma(out, steps)
    acc = np.array([j + v for j in range(probe.ACCUMULATORS) for v in range(16)], np.float32)
    a, b = np.float32(0.9999999), np.float32(1e-7)
    for _ in range(steps):
        acc = (acc * a + b).astype(np.float32)
    # FMA rounds once per step, numpy twice: 2 * steps half-ulps of values below 200.
    np.testing.assert_allclose(out.numpy(), np.stack([acc, acc]), rtol=2 * steps * 2.0 ** -24)
    floats = 8 * 16 * 50
    read = probe._build(probe._read_kernel(2, floats))
    data = np.random.default_rng(0).integers(-8, 8, size=(2, floats)).astype(np.float32)  # exact sums
    res = tvm.runtime.empty((2, 128), "float32", tvm.cpu())
    read(tvm.runtime.tensor(data, tvm.cpu()), res, 3)
    np.testing.assert_array_equal(res.numpy(), 3 * data.reshape(2, 50, 128).sum(axis=1))


def _probe(fma=500.0, dram=30.0, llc=100.0, llc_bytes=32 << 20):
    from tvm_winograd.bench.probe import MachineProbe

    return MachineProbe("test", 2, fma / 2, fma, dram / 2, dram, llc / 2, llc, llc_bytes)


def test_winograd_limit_counts_the_gemm_transforms_and_bytes():
    spec = make_spec((1, 56, 56, 64), (3, 3, 64, 64), padding=1, layout="NHWC")
    probe = _probe()
    lim = winograd_limit(spec, 4, probe)
    tiles = 14 * 14
    gemm = 36 * 64 * 64 * tiles
    # one vector operation per non-zero of B_T (22 of 36) and A_T (18 of 24) per separable pass
    transforms = tiles * (64 * 2 * 6 * 22 + 64 * (6 + 4) * 18)
    assert lim.macs == gemm + transforms
    assert lim.compute_ms == pytest.approx(2 * lim.macs / 500e9 * 1e3)
    u, x, y = 36 * 64 * 64 * 4, 56 * 56 * 64 * 4, 56 * 56 * 64 * 4
    assert lim.bytes_moved == u + x + y
    assert lim.memory_ms == pytest.approx((u + x + y) / 100e9 * 1e3)  # all fit half the LLC
    assert lim.ms == max(lim.compute_ms, lim.memory_ms) and lim.bound == "compute"
    assert lim.stage_bytes == 36 * tiles * 128 * 4
    # F(4,3) needs 4x fewer GEMM multiply-adds than direct convolution: its limit is well below direct's.
    direct = direct_limit(spec, probe)
    assert direct.macs == 64 * 64 * 9 * 56 * 56
    assert lim.ms < direct.ms / 2


def test_stage_limits_split_the_layer_limit():
    """Per stage: the data transform owns the input, the GEMM owns U, the inverse the output; their
    multiply-adds and bytes add up to the layer's limit."""
    from tvm_winograd.bench.roofline import STAGES, winograd_stage_limits

    spec = make_spec((1, 28, 28, 128), (3, 3, 128, 256), padding=1, layout="NHWC")
    probe = _probe()
    stages = winograd_stage_limits(spec, 2, probe)
    whole = winograd_limit(spec, 2, probe)
    assert list(stages) == list(STAGES)
    assert sum(s.macs for s in stages.values()) == whole.macs
    assert sum(s.bytes_moved for s in stages.values()) == whole.bytes_moved
    assert stages["bgemm"].macs == 16 * 128 * 256 * 14 * 14
    assert stages["bgemm"].bytes_moved == 16 * 128 * 256 * 4
    assert stages["data_pack"].bytes_moved == 28 * 28 * 128 * 4


def test_winograd_limit_reads_large_arrays_from_dram():
    spec = make_spec((1, 7, 7, 512), (3, 3, 512, 512), padding=1, layout="NHWC")
    lim = winograd_limit(spec, 4, _probe(llc_bytes=8 << 20))  # U = 36 * 512 * 512 * 4 = 37.7 MB
    u = 36 * 512 * 512 * 4
    assert lim.memory_ms == pytest.approx(u / 30e9 * 1e3 + 2 * 7 * 7 * 512 * 4 / 100e9 * 1e3)
    assert lim.bound == "memory"
    assert math.isclose(lim.ms, lim.memory_ms)


def test_isolated_competitors_run_in_worker_processes(tmp_path):
    """``--isolate``: every block of a competitor runs in a fresh worker process; the output check
    still happens here first (a wrong reference is rejected before any worker starts)."""
    from tvm_winograd.bench.peers import conv_onnx, measure, save_npz
    from tvm_winograd.reference import conv2d_direct

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 10, 10)).astype("float32")
    w = rng.standard_normal((8, 8, 3, 3)).astype("float32")
    (tmp_path / "c.onnx").write_bytes(conv_onnx(x.shape, w, 1).SerializeToString())
    recipe = {"name": "onnxruntime[spin=0]", "kind": "onnxruntime", "onnx": str(tmp_path / "c.onnx"),
              "inputs": save_npz(tmp_path / "x.npz", {"x": x}), "threads": 1, "spin": False}
    ref = conv2d_direct(x.astype(np.float64), w.astype(np.float64), padding=1)
    with pytest.raises(RuntimeError, match="differs from the reference"):
        measure([recipe], 2, isolate=True, reference=ref * (1 + 1e-2), tolerance=1e-4)
    timings = measure([recipe], 2, isolate=True, reference=ref, tolerance=1e-4, gap_s=0.0, block_s=0.001)
    t = timings["onnxruntime[spin=0]"]
    assert len(t.samples_ms) == 2 and all(s > 0 for s in t.samples_ms)
    assert t.config.endswith("(own process)") and t.group == "onnxruntime"


@pytest.mark.parametrize("size, fused", [(32, True), (16, False)])
def test_staged_function_runs_exactly_the_first_stages(size, fused):
    """The per-stage profile's gates (bench/stages.py): F(4,3) NHWC under the default schedule, fused
    (64 tiles: the stages run inside the parallel step) and stage by stage (16 tiles).  With fewer
    than 3 stages the output is left untouched; with 3 it equals the float64 reference."""
    import tvm

    from tvm_winograd.bench.roofline import STAGES
    from tvm_winograd.bench.stages import stage_of_block, staged_function
    from tvm_winograd.compute import block_kernel_pack, kernel_block_of, target_config, winograd_func
    from tvm_winograd.reference import conv2d_direct, winograd_weight_transform
    from tvm_winograd.schedule.default import default_decisions, schedule_llvm_default

    assert [stage_of_block(b) for b in ("input_tile", "data_pack_rows_init", "bgemm_local", "inverse_rows",
                                        "conv2d_winograd", "kernel_pack")] == \
        ["data_pack", "data_pack", "bgemm", "inverse", "inverse", None]
    spec = make_spec((1, size, size, 16), (3, 3, 16, 16), padding=1, layout="NHWC")
    unscheduled = winograd_func(spec, target_config(spec, 4, "llvm"))
    assert ("fused.tiles" in default_decisions(unscheduled)) == fused
    func = schedule_llvm_default(unscheduled)
    fn = tvm.compile(tvm.IRModule({"main": staged_function(func)}), target="llvm")["main"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    u = block_kernel_pack(winograd_weight_transform(w, 4, "NHWC"), kernel_block_of(func))
    reference = conv2d_direct(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), padding=1).transpose(0, 2, 3, 1)
    dev = tvm.cpu(0)
    for count in range(len(STAGES) + 1):
        sentinel = np.full(spec.output_shape, 7.0, dtype="float32")
        args = [tvm.runtime.tensor(a.astype("float32"), dev) for a in (x, u, sentinel)]
        fn(*args, count)
        out = args[2].numpy()
        if count == len(STAGES):
            np.testing.assert_allclose(out, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
        else:
            assert (out == 7.0).all()


def test_staged_function_refuses_a_function_without_stage_nests():
    """A function whose top-level nests are not one data_pack -> bgemm -> inverse sequence is refused."""
    from tvm_winograd.bench.stages import staged_function
    from tvm_winograd.compute import target_config, winograd_func

    spec = make_spec((1, 8, 8, 16), (3, 3, 16, 16), padding=1, layout="NHWC")
    with pytest.raises(ValueError, match="stage"):
        # unscheduled: the nests of the constant matrices A, B, G belong to no stage
        staged_function(winograd_func(spec, target_config(spec, 4, "llvm")))


def test_op_limit_is_the_slower_of_arithmetic_and_bytes():
    probe = _probe(llc_bytes=8 << 20)  # 30 GB/s DRAM, 100 GB/s LLC (as above)
    lim = op_limit(0, [64 << 20, 1 << 20], probe)  # one array from DRAM, one from the LLC
    assert lim.memory_ms == pytest.approx((64 << 20) / 30e9 * 1e3 + (1 << 20) / 100e9 * 1e3)
    assert lim.bound == "memory" and lim.bytes_moved == (65 << 20)
    big = op_limit(10**9, [1 << 20], probe)
    assert big.bound == "compute" and big.ms == pytest.approx(2e9 / (probe.fma_gflops * 1e9) * 1e3)


def test_rule_cases_are_valid_onnx_at_their_stated_work():
    """Every case of scripts/bench_rules.py builds a checked ONNX model; the memory-bound ones move an
    array larger than the 32 MiB L3; the stated multiply-adds are the operator's."""
    from onnx import numpy_helper

    from tvm_winograd.bench.rules import CASES, _model

    for case in CASES.values():
        nodes, feed, inits = case.build(np.random.default_rng(0))
        model = _model(nodes, feed, inits)  # shape inference (strict) and the ONNX checker
        out = model.graph.output[0].type.tensor_type.shape.dim
        out_elements = math.prod(d.dim_value for d in out)
        largest = max([a.nbytes for a in feed.values()] + [out_elements * 4])
        if case.macs == 0:
            assert largest > 32 << 20, case.name
        if case.name == "conv1x1":
            weight = numpy_helper.to_array(model.graph.initializer[0])
            assert case.macs == weight.shape[0] * weight.shape[1] * out[2].dim_value * out[3].dim_value


def test_output_check_takes_a_competitor_own_tolerance():
    """``ours-fp16u`` is checked at its own tolerance, every other competitor at the common one (also
    after it: the own tolerance must not leak to the next)."""
    from tvm_winograd.bench.peers import check_outputs

    ref = np.linspace(-1.0, 1.0, 11)

    def comp(name, err):
        return Competitor(name, lambda: None, "", None, lambda: ref + err)

    check_outputs([comp("ours-fp16u", 5e-3), comp("ours", 5e-4)], ref, 1e-3, "t", {"ours-fp16u": 1e-2})
    with pytest.raises(RuntimeError, match="ours differs .* 5.00e-03"):
        check_outputs([comp("ours-fp16u", 5e-3), comp("ours", 5e-3)], ref, 1e-3, "t", {"ours-fp16u": 1e-2})
    with pytest.raises(RuntimeError, match="ours-fp16u differs"):
        check_outputs([comp("ours-fp16u", 2e-2)], ref, 1e-3, "t", {"ours-fp16u": 1e-2})
