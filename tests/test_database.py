"""Crash-safe tuning database: format compatibility, torn/corrupt lines, the writer lock, resume after SIGKILL.

Records are made without measuring (traced splits with invented times), except in the resume test, which
runs a real (tiny) MetaSchedule search in a subprocess and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import TuningRecord

from tvm_winograd import compute
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.database import (
    LOCK_FILE,
    RECORD_FILE,
    WORKLOAD_FILE,
    DatabaseLoadWarning,
    DatabaseLockedError,
    measured_count,
    open_database,
)
from tvm_winograd.workload import make_spec

SPLITS = [1, 2, 4, 8]


def _module(channels: int = 8) -> tvm.IRModule:
    spec = make_spec((1, channels, 8, 8), (channels, channels, 3, 3), padding=1)
    return tvm.IRModule({"main": compute.direct_func(spec)})


def _records(db, mod: tvm.IRModule, target, times: list[float]) -> list[TuningRecord]:
    """Commit one traced schedule per time (distinct splits of the output-channel loop)."""
    workload = db.commit_workload(mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    out = []
    for i, secs in enumerate(times):
        sch = tvm.s_tir.Schedule(mod)
        loops = sch.get_loops(sch.get_sblock("conv2d_nchw"))
        sch.split(loops[1], [None, SPLITS[i % len(SPLITS)]])
        if i >= len(SPLITS):
            sch.split(loops[2], [None, 2])
        record = TuningRecord(sch.trace, workload, [secs], target, args_info)
        db.commit_tuning_record(record)
        out.append(record)
    return out


@pytest.fixture(scope="module")
def target():
    return resolve_target("llvm")


def _times(db) -> list[float]:
    return sorted(float(r.run_secs[0]) for r in db.get_all_tuning_records())


def test_round_trip_and_metaschedule_reads_it(tmp_path, target):
    """What we write, TVM's own JSONDatabase reads: same records, same best schedule."""
    mod = _module()
    times = [3e-5, 1e-5, 2e-5, 1e10]  # the last one: a failed measurement
    db = open_database(tmp_path)
    _records(db, mod, target, times)
    # Durable per record: every line is in the file before close.
    assert len((tmp_path / RECORD_FILE).read_text().splitlines()) == len(times)
    db.close()

    again = open_database(tmp_path, readonly=True)
    assert _times(again) == sorted(times)
    assert measured_count(again, mod, target) == len(times)  # failures count as measured
    assert measured_count(again, mod, resolve_target("sm_80")) == 0
    assert measured_count(again, _module(16), target) == 0

    theirs = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert sorted(float(r.run_secs[0]) for r in theirs.get_all_tuning_records()) == sorted(times)
    best_ours = again.query_tuning_record(mod, target, "main")
    best_theirs = theirs.query_tuning_record(mod, target, "main")
    assert float(best_ours.run_secs[0]) == float(best_theirs.run_secs[0]) == 1e-5
    tvm.ir.assert_structural_equal(again.query_ir_module(mod, target, "main"),
                                   theirs.query_ir_module(mod, target, "main"))


def test_layout_rewrite_traces_round_trip(tmp_path, target):
    """A TransformLayout trace carries an IndexMap (MetaSchedule's RewriteLayout postprocessor makes
    them); Python's as_json cannot encode it, our writer stores it as TVM's C++ writer does."""
    mod = _module()
    db = open_database(tmp_path)
    sch = tvm.s_tir.Schedule(mod)
    sch.transform_layout(sch.get_sblock("conv2d_nchw"), ("read", 1), lambda o, i, h, w: (h, w, i, o))
    workload = db.commit_workload(mod)
    db.commit_tuning_record(TuningRecord(sch.trace, workload, [1e-5], target,
                                         ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    db.close()
    for loaded in (open_database(tmp_path, readonly=True), ms.database.JSONDatabase(work_dir=str(tmp_path))):
        (record,) = loaded.get_all_tuning_records()
        tvm.ir.assert_structural_equal(record.as_measure_candidate().sch.mod, sch.mod)


def test_append_to_a_log_written_by_metaschedule(tmp_path, target):
    """A directory written by TVM's JSONDatabase is opened, extended, and still readable by TVM."""
    mod = _module()
    theirs = ms.database.JSONDatabase(work_dir=str(tmp_path))
    _records(theirs, mod, target, [4e-5, 5e-5])
    del theirs
    db = open_database(tmp_path)
    assert len(db) == 2
    _records(db, mod, target, [1e-5, 2e-5, 3e-5])
    db.close()
    assert len((tmp_path / WORKLOAD_FILE).read_text().splitlines()) == 1  # the workload is not duplicated
    theirs = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(theirs) == 5


def test_torn_last_line_is_ignored_with_warning_and_repaired(tmp_path, target):
    """A record cut short by a killed writer: warned about (file and line), dropped, cut off the file;
    every complete record is kept and the next append starts on its own line."""
    mod = _module()
    db = open_database(tmp_path)
    _records(db, mod, target, [1e-5, 2e-5, 3e-5])
    db.close()
    path = tmp_path / RECORD_FILE
    last = path.read_bytes().splitlines(keepends=True)[-1]
    with open(path, "ab") as f:
        f.write(last[: len(last) // 2])  # a 4th record, half written, no newline

    with pytest.warns(DatabaseLoadWarning, match=rf"{RECORD_FILE}:4: ignored a half-written last line"):
        reader = open_database(tmp_path, readonly=True)
    assert _times(reader) == [1e-5, 2e-5, 3e-5]

    with pytest.warns(DatabaseLoadWarning, match=rf"{RECORD_FILE}:4"):
        db = open_database(tmp_path)
    _records(db, mod, target, [4e-5])
    db.close()
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert len(path.read_text().splitlines()) == 4
    # Clean again: TVM's own loader (which aborts on any bad line) reads it.
    assert len(ms.database.JSONDatabase(work_dir=str(tmp_path))) == 4


def test_torn_workload_line_and_complete_line_without_newline(tmp_path, target):
    """Workload file torn at the end; a record line complete but missing its newline is kept."""
    mod = _module()
    db = open_database(tmp_path)
    _records(db, mod, target, [1e-5, 2e-5])
    db.close()
    with open(tmp_path / WORKLOAD_FILE, "ab") as f:
        f.write(b'["123", "AAAA')
    path = tmp_path / RECORD_FILE
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with pytest.warns(DatabaseLoadWarning, match=rf"{WORKLOAD_FILE}:2: ignored a half-written last line"):
        db = open_database(tmp_path)
    assert _times(db) == [1e-5, 2e-5]
    _records(db, _module(16), target, [7e-5])  # a new workload goes to line 2
    db.close()
    theirs = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(theirs) == 3
    assert measured_count(theirs, _module(16), target) == 1


def test_corrupt_middle_lines_are_skipped_with_warning(tmp_path, target):
    """A corrupt record line and a corrupt workload line in the middle: each warned about by file and
    line; only the records that depend on them are lost, and the file stays appendable."""
    mod_a, mod_b, mod_c = _module(8), _module(16), _module(4)
    db = open_database(tmp_path)
    _records(db, mod_a, target, [1e-5, 2e-5, 3e-5, 4e-5])
    _records(db, mod_b, target, [5e-5])
    _records(db, mod_c, target, [6e-5, 7e-5])
    db.close()

    records = (tmp_path / RECORD_FILE).read_text().splitlines()
    records[1] = records[1][:40] + "#garbage#" + records[1][60:]  # line 2: mod_a, 2e-5
    (tmp_path / RECORD_FILE).write_text("\n".join(records) + "\n")
    workloads = (tmp_path / WORKLOAD_FILE).read_text().splitlines()
    workloads[1] = "not json at all"  # line 2: mod_b
    (tmp_path / WORKLOAD_FILE).write_text("\n".join(workloads) + "\n")

    with pytest.warns(DatabaseLoadWarning) as caught:
        db = open_database(tmp_path)
    messages = [str(w.message) for w in caught]
    assert any(f"{WORKLOAD_FILE}:2: skipped a corrupt line" in m for m in messages), messages
    assert any(f"{RECORD_FILE}:2: skipped a corrupt line" in m for m in messages), messages
    assert any(f"{RECORD_FILE}:5: skipped an unreadable tuning record" in m and "workload line 2" in m
               for m in messages), messages
    assert _times(db) == [1e-5, 3e-5, 4e-5, 6e-5, 7e-5]
    assert measured_count(db, mod_c, target) == 2
    # New workloads get indices after the corrupt line, so old and new records stay matched.
    _records(db, mod_b, target, [8e-5])
    db.close()
    with pytest.warns(DatabaseLoadWarning):
        db = open_database(tmp_path, readonly=True)
    assert _times(db) == [1e-5, 3e-5, 4e-5, 6e-5, 7e-5, 8e-5]
    assert measured_count(db, mod_b, target) == 1
    assert measured_count(db, mod_c, target) == 2


def test_second_writer_refuses_with_directory_and_pid(tmp_path, target):
    """Two writers on one directory: the second fails in one line naming the directory and holder."""
    first = open_database(tmp_path)
    with pytest.raises(DatabaseLockedError) as err:
        open_database(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and f"pid {os.getpid()}" in message
    # Readers are not writers.
    assert len(open_database(tmp_path, readonly=True)) == 0
    with pytest.raises(DatabaseLockedError, match="after waiting 0.5 s"):
        open_database(tmp_path, wait=True, lock_timeout=0.5)
    first.close()
    open_database(tmp_path).close()


def test_waiting_writer_gets_the_directory_when_the_first_closes(tmp_path, target):
    first = open_database(tmp_path)
    _records(first, _module(), target, [1e-5])
    got: list = []
    thread = threading.Thread(target=lambda: got.append(open_database(tmp_path, wait=True, lock_timeout=30)))
    thread.start()
    time.sleep(0.5)
    assert not got  # still waiting
    first.close()
    thread.join(timeout=30)
    assert len(got) == 1 and len(got[0]) == 1  # and it sees what the first one wrote
    got[0].close()


def test_lock_of_another_process_and_its_release_on_sigkill(tmp_path):
    """A writer in another process: refused with that pid; once it is SIGKILLed, the lock is free."""
    code = textwrap.dedent(f"""
        import sys, time
        from tvm_winograd.tune.database import open_database
        db = open_database({str(tmp_path)!r})
        print("locked", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseLockedError, match=rf"pid {proc.pid}\b"):
            open_database(tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        open_database(tmp_path).close()
        assert (tmp_path / LOCK_FILE).exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="module_equality"):
        open_database(tmp_path, module_equality="")
    with pytest.raises(ValueError, match="IRModule or PrimFunc"):
        measured_count(open_database(tmp_path, readonly=True), "main")


# --------------------------------------------------------------------------- the resume budget

class _EvolutionaryAccounting:
    """A stand-in inner strategy that hands out schedules from a fixed list with the trial accounting of
    MetaSchedule 0.27's ``EvolutionarySearchNode::State`` (evolutionary_search.cc): a batch ``[st, ed)``,
    shrunk to the remainder *and* ``ed = max_trials`` when it reaches past the budget; ``st`` and ``ed``
    advance by the number of results notified."""

    def __init__(self, pool: list) -> None:
        self.pool = list(pool)

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.max_trials, self.st, self.ed, self.per_iter = max_trials, 0, num_trials_per_iter, num_trials_per_iter

    def generate_measure_candidates(self):
        if self.st >= self.max_trials:
            return None
        n = self.per_iter
        if self.ed > self.max_trials:
            n, self.ed = self.max_trials - self.st, self.max_trials
        batch, self.pool = self.pool[:n], self.pool[n:]
        return batch

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.st += len(results)
        self.ed += len(results)


def test_skip_measured_never_exceeds_the_budget(tmp_path, target):
    """The flaky resume (11 trials measured for a budget of 8): after 7 trials the search's shrunken batch
    of 1 was a schedule already in the database, dropped whole; asked again, the evolutionary search,
    whose batch end had moved to the budget, returned a full batch of 4.  The wrapper now keeps the budget
    itself (fails without: 11 trials)."""
    from tvm_winograd.tune.search import _SkipMeasuredSearch

    mod = _module()
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    schedules = []
    for k_split in SPLITS:
        for h_split in SPLITS:
            sch = tvm.s_tir.Schedule(mod)
            n, k, h, *_ = sch.get_loops(sch.get_sblock("conv2d_nchw"))
            sch.split(k, [None, k_split])
            sch.split(h, [None, h_split])
            schedules.append(sch)
    db = open_database(tmp_path)
    workload = db.commit_workload(mod)
    for sch in schedules[:2]:  # already measured by an earlier run
        db.commit_tuning_record(TuningRecord(sch.trace, workload, [1e-3], target, args_info))
    new = [ms.MeasureCandidate(sch, args_info) for sch in schedules[2:]]
    old = [ms.MeasureCandidate(sch, args_info) for sch in schedules[:2]]
    # batches: 3 new + 1 old (st 3, ed 7) | 4 new (st 7, ed 11) | shrunk to 1: old, dropped | 4 new
    inner = _EvolutionaryAccounting(new[:3] + old[:1] + new[3:7] + old[1:2] + new[7:11])
    strategy = _SkipMeasuredSearch(inner, 5)._inst
    # the wrapper reads only the context's module (a TuneContext would import TVM's ~500 tensor intrinsics)
    strategy._initialize_with_tune_context(types.SimpleNamespace(mod=mod))
    budget, per_iter = 8, 4
    strategy.pre_tuning(budget, per_iter, [], db, None)
    measured = []
    # MetaSchedule's TaskScheduler::Tune for one task: ask while fewer than max_trials were sent.
    while len(measured) < budget:
        candidates = strategy.generate_measure_candidates()
        if candidates is None:
            break
        measured += candidates
        strategy.notify_runner_results(candidates, [ms.runner.RunnerResult([1e-3], None)] * len(candidates))
    assert len(measured) == budget
    assert strategy.generate_measure_candidates() is None
    assert not any(any(c.sch is o.sch for o in old) for c in measured)  # and nothing measured twice
    db.close()


# --------------------------------------------------------------------------- resume after SIGKILL

TUNE_SCRIPT = """
import sys, tvm
from tvm.s_tir import meta_schedule as ms
from tvm_winograd import compute
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.database import open_database, measured_count
from tvm_winograd.tune.search import skip_measured
from tvm_winograd.tune.measure import make_builder, make_runner
from tvm_winograd.workload import make_spec

work_dir, trials = sys.argv[1], int(sys.argv[2])
mod = tvm.IRModule({"main": compute.direct_func(make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1))})
target = resolve_target("llvm")
db = open_database(work_dir)
remaining = trials - measured_count(db, mod, target)  # what a resumed run still owes
print("remaining", remaining, flush=True)
if remaining > 0:
    strategy = ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=8,
                                                     genetic_num_iters=1)
    ms.tune_tir(mod, target, work_dir, max_trials_global=remaining, num_trials_per_iter=4,
                builder=make_builder(target, max_workers=1), runner=make_runner(target),
                database=db, cost_model="random", strategy=skip_measured(strategy), seed=int(sys.argv[3]))
print("measured", measured_count(db, mod, target), flush=True)
"""


def _record_lines(work_dir: Path) -> list[str]:
    path = work_dir / RECORD_FILE
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_resume_after_sigkill_measures_the_rest_and_loses_nothing(tmp_path):
    """SIGKILL a tuning process after its first batch; the re-run measures exactly the remaining
    budget, keeps every record of the first run, and leaves a log TVM's own loader reads."""
    script = tmp_path / "tune.py"
    script.write_text(TUNE_SCRIPT)
    work_dir = tmp_path / "log"
    trials = 12
    proc = subprocess.Popen([sys.executable, str(script), str(work_dir), str(trials), "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while len(_record_lines(work_dir)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert len(_record_lines(work_dir)) >= 4, "first batch not measured in time"
        os.killpg(proc.pid, signal.SIGKILL)  # the tuner and its builder/runner workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    first = _record_lines(work_dir)
    assert 4 <= len(first) < trials

    rerun = subprocess.run([sys.executable, str(script), str(work_dir), str(trials), "2"],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"remaining {trials - len(first)}" in rerun.stdout
    assert f"measured {trials}" in rerun.stdout
    final = _record_lines(work_dir)
    assert final[: len(first)] == first  # nothing of the first run lost or rewritten
    assert len(final) == trials  # nothing measured twice beyond the budget
    theirs = ms.database.JSONDatabase(work_dir=str(work_dir))
    assert len(theirs) == trials
    # No schedule measured twice: MetaSchedule alone re-measures some database records on resume
    # (its evolutionary search seeds from them and dedups per session only); skip_measured drops them.
    hashes = {tvm_ffi.structural_hash(r.as_measure_candidate().sch.mod) for r in theirs.get_all_tuning_records()}
    assert len(hashes) == trials
