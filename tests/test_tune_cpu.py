"""The per-layer tuner (tune/tuner.py): choice by measurement, databases, resume, applied schedules.

Measurement is injected (a fake runner returning fixed times per candidate, as Triton's autotuner tests
inject a fake benchmark), so the choice is deterministic; candidates are really built, and the stored
schedules are really compiled and checked against the float64 reference.
"""

from __future__ import annotations

import json

import pytest
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from tvm_winograd.compute import Epilogue
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.choices import AlgorithmChoice, load_choices
from tvm_winograd.tune.database import open_database
from tvm_winograd.tune.candidates import candidate_func, choose_by_times, layer_candidates
from tvm_winograd.tune.display import format_results
from tvm_winograd.tune.records import apply_best
from tvm_winograd.tune.tuner import tune_layer
from tvm_winograd.tune.verification import verify_func
from tvm_winograd.workload import make_spec

TARGET = resolve_target("llvm")


# ---------------------------------------------------------------------------------------------
# The choice: a pure function of the measured times
# ---------------------------------------------------------------------------------------------

def test_choose_by_times_picks_the_fastest():
    choice = choose_by_times({"direct": 2.0, "winograd_m2": 1.5, "winograd_m4": 0.9})
    assert choice == AlgorithmChoice("winograd", 4, {"direct": 2.0, "winograd_m2": 1.5, "winograd_m4": 0.9})
    assert choose_by_times({"direct": 0.5, "winograd_m4": 0.9}).algorithm == "direct"


def test_choose_by_times_skips_unverified_and_breaks_ties():
    choice = choose_by_times({"direct": None, "winograd_m2": 1.0, "winograd_m4": 1.0})
    assert (choice.algorithm, choice.m) == ("winograd", 2)  # tie: the smaller (more accurate) tile
    assert choose_by_times({"direct": 1.0, "winograd_m2": 1.0}).algorithm == "direct"  # tie: direct
    assert choice.times_ms["direct"] is None
    with pytest.raises(ValueError, match="no candidate"):
        choose_by_times({"direct": None, "winograd_m4": float("nan")})


def test_layer_candidates():
    assert layer_candidates(make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)) == [
        "direct", "winograd_m2", "winograd_m4", "winograd_m6"]
    assert layer_candidates(make_spec((1, 8, 4, 4), (8, 8, 3, 3), padding=1)) == [
        "direct", "winograd_m2", "winograd_m4"]  # F(6,3) on a 4x4 output: mostly padding
    assert layer_candidates(make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1, stride=2)) == ["direct"]


def test_bad_arguments():
    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    with pytest.raises(ValueError, match="trials"):
        tune_layer(spec, trials=0)
    with pytest.raises(ValueError, match="winograd_m3"):
        tune_layer(spec, trials=1, candidates=["winograd_m3"])


# ---------------------------------------------------------------------------------------------
# Tuning with injected measurement
# ---------------------------------------------------------------------------------------------

@derived_object
class _FixedFuture(ms.runner.PyRunnerFuture):
    def __init__(self, secs: float) -> None:
        super().__init__()
        self.secs = secs

    def done(self) -> bool:
        return True

    def result(self) -> ms.runner.RunnerResult:
        return ms.runner.RunnerResult([self.secs] * 3, None)


@derived_object
class FakeRunner(ms.runner.PyRunner):
    """Returns a fixed time per candidate, recognised by its second argument's shape:
    Winograd's ``kernel_pack`` is (alpha, alpha, C, K), direct's weight is (K, C, 3, 3)."""

    def __init__(self, secs_by_alpha: dict[int, float], direct_secs: float) -> None:
        super().__init__()
        self.secs_by_alpha = secs_by_alpha
        self.direct_secs = direct_secs
        self.calls = 0

    def run(self, runner_inputs):
        futures = []
        for runner_input in runner_inputs:
            self.calls += 1
            shape = [int(s) for s in runner_input.args_info[1].shape]
            secs = self.secs_by_alpha.get(shape[0], self.direct_secs) if shape[0] == shape[1] else self.direct_secs
            futures.append(_FixedFuture(secs))
        return futures


def test_tune_choose_store_apply_resume(tmp_path):
    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    epilogue = Epilogue(bias=True, relu=True)
    work_dir, schedules_dir = tmp_path / "logs", tmp_path / "schedules"
    runner = FakeRunner({4: 1.0e-3}, direct_secs=2.0e-3)  # F(2,3) (alpha 4) is "faster"
    result = tune_layer(spec, TARGET, epilogue=epilogue, trials=3, candidates=["direct", "winograd_m2"],
                        work_dir=work_dir, schedules_dir=schedules_dir, runner=runner, progress=False, seed=1)
    assert runner.calls == 6
    assert (result.choice.algorithm, result.choice.m) == ("winograd", 2)
    assert result.candidates["direct"].median_ms == pytest.approx(2.0)
    assert result.candidates["winograd_m2"].median_ms == pytest.approx(1.0)
    assert all(c.verified and c.records == 3 and c.new_trials == 3 for c in result.candidates.values())
    assert "winograd F(2,3)" in format_results([result])

    # The decision and every candidate's best verified record are stored for compilation.
    choices = load_choices(schedules_dir)
    assert choices[spec.key()].algorithm == "winograd" and choices[spec.key()].m == 2
    assert set(choices[spec.key()].times_ms) == {"direct", "winograd_m2"}
    assert json.loads((schedules_dir / "choices.json").read_text())
    for name, algorithm, m in (("winograd_m2", "winograd", 2), ("direct", "direct", None)):
        func = candidate_func(spec, name, epilogue)
        tuned = apply_best(func, TARGET, schedules_dir)
        assert tuned is not None, name
        assert "T.parallel" in tuned.script() or name == "direct"
        verify_func(tuned, spec, epilogue, algorithm, m, TARGET, seed=5)
    other = candidate_func(spec, "winograd_m4", epilogue)
    assert apply_best(other, TARGET, schedules_dir) is None  # never tuned: nothing applied

    # A second run resumes: nothing is measured again, the same choice comes back.
    runner2 = FakeRunner({4: 1.0e-3}, direct_secs=2.0e-3)
    again = tune_layer(spec, TARGET, epilogue=epilogue, trials=3, candidates=["direct", "winograd_m2"],
                       work_dir=work_dir, schedules_dir=schedules_dir, runner=runner2, progress=False, seed=1)
    assert runner2.calls == 0
    assert all(c.new_trials == 0 and c.records == 3 for c in again.candidates.values())
    assert (again.choice.algorithm, again.choice.m) == ("winograd", 2)
    db = open_database(schedules_dir)
    try:
        assert len(db.get_all_tuning_records()) == 2  # one best record per workload, not duplicated
    finally:
        getattr(db, "close", lambda: None)()

    # A bigger budget measures only the difference.
    runner3 = FakeRunner({4: 1.0e-3}, direct_secs=0.5e-3)
    more = tune_layer(spec, TARGET, epilogue=epilogue, trials=4, candidates=["direct"],
                      work_dir=work_dir, schedules_dir=schedules_dir, runner=runner3, progress=False, seed=1)
    assert runner3.calls == 1 and more.candidates["direct"].records == 4


def test_search_is_seeded_with_the_default_schedule(tmp_path):
    """The first measured Winograd record is the design space at default_decisions: with a budget of
    one trial, that is what gets stored and applied (so tuning never ends below the default)."""
    from tvm_winograd.schedule.cpu import apply_fixed
    from tvm_winograd.schedule.default import default_decisions

    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    # the real local builder and runner: the seed is built and measured like any search trial
    result = tune_layer(spec, TARGET, trials=1, candidates=["winograd_m2"], work_dir=tmp_path / "logs",
                        schedules_dir=tmp_path / "schedules", progress=False, seed=1)
    cand = result.candidates["winograd_m2"]
    assert cand.new_trials == 1 and cand.records == 1 and cand.verified and 0 < cand.median_ms < 1e3
    func = candidate_func(spec, "winograd_m2")
    tuned = apply_best(func, TARGET, tmp_path / "schedules")
    tvm.ir.assert_structural_equal(tuned.body, apply_fixed(func, default_decisions(func)).body)


def test_a_changed_compute_is_searched_again(tmp_path, monkeypatch):
    """The resume state is per workload: the same layer with another compute (here the plain kernel
    layout instead of the llvm panels) is a new search, not a finished one."""
    import tvm_winograd.tune.tuner as tuner

    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    kwargs = dict(trials=2, candidates=["winograd_m2"], work_dir=tmp_path / "logs",
                  schedules_dir=tmp_path / "schedules", progress=False, seed=1)
    first = FakeRunner({4: 1.0e-3}, direct_secs=2.0e-3)
    tune_layer(spec, TARGET, runner=first, **kwargs)
    assert first.calls == 2
    original = tuner.candidate_func
    monkeypatch.setattr(tuner, "candidate_func", lambda s, n, e, kind="llvm": original(s, n, e, "cuda"))
    second = FakeRunner({4: 1.0e-3}, direct_secs=2.0e-3)
    result = tune_layer(spec, TARGET, runner=second, **kwargs)
    assert second.calls == 2 and result.candidates["winograd_m2"].records == 2


def test_trials_to_90_counts_the_seeded_default():
    """The seed (the default schedule, measured before the search) is the first trial of the history:
    when it stays the best, 90 % of the best is reached at trial 1, not when the search first comes
    within 90 % of it (measured: conv2_2 F(4,3), seed 7.14 ms, the search's best 7.7 ms at its 22nd)."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_winograd.tune.search import SearchProgress, trials_to_90

    progress = SearchProgress(seed_ms=7.0)
    runs = [ms.runner.RunnerResult(run_secs=None, error_msg="failed") if s is None else
            ms.runner.RunnerResult(run_secs=[tvm.tirx.FloatImm("float64", s)], error_msg=None)
            for s in (0.0143, 0.0619, None, 0.0077)]
    scheduler = ms.task_scheduler.TaskScheduler.create("round-robin")
    progress.apply(scheduler, 0, [], [], runs)
    assert progress.trials == 4
    assert progress.history_ms == [7.0, 7.0, 7.0, 7.0, 7.0]
    assert trials_to_90(progress.history_ms) == 1
    unseeded = SearchProgress()
    unseeded.apply(scheduler, 0, [], [], runs)
    assert unseeded.history_ms[0] == pytest.approx(14.3) and trials_to_90(unseeded.history_ms) == 4


# ---------------------------------------------------------------------------------------------
# verify_func (what record picking keeps) can fail: injected precision bugs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bug,m,dtype", [
    ("scaled_output", 4, "float16"),
    ("perturbed_entry", 4, "float32"),
    ("fp16_accumulation", 4, "float16"),  # stages in fp16 where the llvm config says fp32
    ("fp16_storage", 2, "float32"),  # data_pack / kernel_pack stored in fp16 for an fp32 layer
])
def test_verify_func_rejects_injected_precision_bug(inject_transform_bug, bug, m, dtype):
    """The default-scheduled candidate passes; the same candidate with the bug raises ArithmeticError
    (so ``_pick_verified`` skips the record), from the rounding model, not the worst-case bound,
    for the bugs the bound lets through."""
    import dataclasses

    from tvm_winograd.compute import target_config, winograd_func
    from tvm_winograd.schedule import schedule_llvm_default

    spec = make_spec((1, 16, 12, 12), (16, 16, 3, 3), padding=1, dtype=dtype)
    config = target_config(spec, m, "llvm")
    good = schedule_llvm_default(winograd_func(spec, config))
    assert verify_func(good, spec, Epilogue(), "winograd", m, TARGET, seed=3) > 0.0
    if bug == "fp16_accumulation":
        config = dataclasses.replace(config, acc_dtype="float16")
    elif bug == "fp16_storage":
        config = dataclasses.replace(config, pack_dtype="float16")
    else:
        inject_transform_bug(bug)
    bad = schedule_llvm_default(winograd_func(spec, config))
    with pytest.raises(ArithmeticError) as err:
        verify_func(bad, spec, Epilogue(), "winograd", m, TARGET, seed=3)
    if bug != "fp16_storage":  # fp32 F(2,3) with fp16 storage also exceeds the bound (~6.6e-5 of max|y|)
        assert "worst-case bound" not in str(err.value), err.value


# ---------------------------------------------------------------------------------------------
# The tuner's small files: corrupt, and written concurrently
# ---------------------------------------------------------------------------------------------

def test_corrupt_choices_file_is_skipped_and_kept(tmp_path, caplog):
    """A choices.json that is not JSON, or holds a bad entry, is read with a warning naming the file
    (nothing raises); the next save keeps the original as choices.json.corrupt and the good entries."""
    from tvm_winograd.tune.choices import save_choices

    path = tmp_path / "choices.json"
    path.write_text('{"a": {"algorithm": "winograd", "m": 4}, "b": ')  # cut short
    with caplog.at_level("WARNING", logger="tvm_winograd.tune.choices"):
        assert load_choices(tmp_path) == {}
    assert str(path) in caplog.text and "unreadable" in caplog.text
    save_choices(tmp_path, {"c": AlgorithmChoice("direct")})
    assert (tmp_path / "choices.json.corrupt").read_text() == '{"a": {"algorithm": "winograd", "m": 4}, "b": '
    assert set(load_choices(tmp_path)) == {"c"}

    path.write_text(json.dumps({"good": {"algorithm": "winograd", "m": 2}, "bad": {"algorithm": "fft"},
                                "worse": "direct"}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="tvm_winograd.tune.choices"):
        assert set(load_choices(tmp_path)) == {"good"}
    assert "'bad'" in caplog.text and "'worse'" in caplog.text
    save_choices(tmp_path, {"new": AlgorithmChoice("direct")})
    assert set(load_choices(tmp_path)) == {"good", "new"}
    assert "fft" in (tmp_path / "choices.json.corrupt.1").read_text()  # the first copy is not overwritten
    path.write_text("[1, 2]")
    assert load_choices(tmp_path) == {}  # valid JSON, not an object: also a warning, not a crash


def test_concurrent_save_choices_keep_every_entry(tmp_path):
    """Two processes and two threads each saving their own entries into one choices.json at once: the
    file stays valid JSON and holds every entry (a read-merge-write without the lock loses some)."""
    import subprocess
    import sys
    import threading

    from tvm_winograd.tune.choices import save_choices

    rounds = 30
    script = (f"from tvm_winograd.tune.choices import AlgorithmChoice, save_choices\n"
              f"import sys\n"
              f"for i in range({rounds}):\n"
              f"    save_choices({str(tmp_path)!r}, {{f'{{sys.argv[1]}}{{i}}': AlgorithmChoice('direct')}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("p", "q")]

    def writer(name: str) -> None:
        for i in range(rounds):
            save_choices(tmp_path, {f"{name}{i}": AlgorithmChoice("winograd", 2)})

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("t", "u")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=300) == 0 for p in procs)
    saved = json.loads((tmp_path / "choices.json").read_text())
    assert set(saved) == {f"{name}{i}" for name in "pqtu" for i in range(rounds)}
    assert not list(tmp_path.glob(".choices*.tmp"))


def test_corrupt_search_state_is_skipped_and_nothing_is_measured_again(tmp_path, caplog):
    """search_state.json cut short: the resumed tuner warns (naming the file), keeps a copy, measures
    nothing already in the log, comes to the same choice, and a bigger budget measures only the rest."""
    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    # One candidate: three tuner runs are the cost of this test (~250 s with two under load)
    kwargs = dict(candidates=["winograd_m2"], work_dir=tmp_path / "logs",
                  schedules_dir=tmp_path / "schedules", progress=False, seed=1)
    first = tune_layer(spec, TARGET, trials=2, runner=FakeRunner({4: 1.0e-3}, 2.0e-3), **kwargs)
    state = tmp_path / "logs" / "search_state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    runner = FakeRunner({4: 1.0e-3}, 2.0e-3)
    with caplog.at_level("WARNING", logger="tvm_winograd.tune.tuner"):
        again = tune_layer(spec, TARGET, trials=2, runner=runner, **kwargs)
    assert str(state) in caplog.text and "unreadable" in caplog.text
    # nothing was searched, so nothing was saved: the file stays as it was and no copy is made yet
    assert state.read_text() == text[: len(text) // 2]
    assert not list(state.parent.glob("search_state.json.corrupt*"))
    assert runner.calls == 0 and all(c.records == 2 for c in again.candidates.values())
    assert (again.choice.algorithm, again.choice.m) == (first.choice.algorithm, first.choice.m) == ("winograd", 2)
    more = FakeRunner({4: 1.0e-3}, 2.0e-3)
    tune_layer(spec, TARGET, trials=3, runner=more, **kwargs)
    assert more.calls == 1 and json.loads(state.read_text())  # one more; a valid state again
    # the save that replaced the unreadable file kept it, once
    assert [p.name for p in state.parent.glob("search_state.json.corrupt*")] == ["search_state.json.corrupt"]
    assert (tmp_path / "logs" / "search_state.json.corrupt").read_text() == text[: len(text) // 2]


def test_unusable_search_state_is_kept_once_when_replaced(tmp_path, caplog):
    """Loading an unreadable search_state.json copies nothing; the save that replaces it keeps one
    ``.corrupt`` copy, and meeting the same bytes again reuses that copy instead of adding ``.1``."""
    from tvm_winograd.tune.jsonfile import keep_aside
    from tvm_winograd.tune.state import load_state, save_state

    path = tmp_path / "search_state.json"
    path.write_text('{"a": 4, "b": ')
    for _ in range(3):  # three loads of the corrupt file: no copy
        with caplog.at_level("WARNING", logger="tvm_winograd.tune.tuner"):
            assert load_state(tmp_path) == ({}, True)
        assert "unreadable" in caplog.text and not list(tmp_path.glob("*.corrupt*"))
    for _ in range(3):  # the same corrupt bytes replaced three times: one copy
        path.write_text('{"a": 4, "b": ')
        _, unusable = load_state(tmp_path)
        save_state(tmp_path, {"c": 2}, keep_original=unusable)
        assert json.loads(path.read_text()) == {"c": 2}
    assert [p.name for p in tmp_path.glob("*.corrupt*")] == ["search_state.json.corrupt"]
    path.write_text(json.dumps({"ok": 3, "bad": -1}))  # a bad entry: unusable too, the good one kept
    assert load_state(tmp_path) == ({"ok": 3}, True)
    assert keep_aside(path).name == "search_state.json.corrupt.1"  # different bytes: a second copy
    assert keep_aside(path).name == "search_state.json.corrupt.1"
    assert load_state(tmp_path) == ({"ok": 3}, True)
    path.write_text(json.dumps({"ok": 3}))
    assert load_state(tmp_path) == ({"ok": 3}, False)
