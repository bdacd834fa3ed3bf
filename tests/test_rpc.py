"""Measurement through TVM's RPC tracker on loopback: tracker queries, parallel servers, a server that dies.

Every test starts its own tracker and CPU servers on 127.0.0.1 (``local_rpc_farm``) and the context
manager stops them, also on failure.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

from tvm_winograd import compute
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.database import RECORD_FILE
from tvm_winograd.tune.measure import _is_retryable, make_builder, make_runner, parse_tracker
from tvm_winograd.tune.rpc import local_rpc_farm, query_tracker, tracker_summary
from tvm_winograd.workload import make_spec

KEY = "tvmw-test"


def _module() -> tvm.IRModule:
    return tvm.IRModule({"main": compute.direct_func(make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1))})


@pytest.fixture(scope="module")
def target():
    return resolve_target("llvm")


def test_address_and_key_errors(target):
    assert parse_tracker("127.0.0.1:9190") == ("127.0.0.1", 9190)
    for bad in ("127.0.0.1", "127.0.0.1:port", ":9190", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            make_runner(target, rpc_tracker=bad, rpc_key=KEY)
    with pytest.raises(ValueError, match="rpc key"):
        make_runner(target, rpc_tracker="127.0.0.1:9190")
    with pytest.raises(ValueError, match="without an rpc tracker"):
        make_runner(target, rpc_key=KEY)


def _artifacts(target, n: int) -> list[ms.runner.RunnerInput]:
    """Build ``n`` distinct schedules of the small conv and wrap them as runner inputs."""
    mod = _module()
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    inputs = []
    for factor in (1, 2, 4, 8)[:n]:
        sch = tvm.s_tir.Schedule(mod)
        loops = sch.get_loops(sch.get_sblock("conv2d_nchw"))
        sch.split(loops[1], [None, factor])
        inputs.append(ms.builder.BuilderInput(sch.mod, target))
    results = make_builder(target).build(inputs)
    assert all(r.error_msg is None for r in results), [r.error_msg for r in results]
    return [ms.runner.RunnerInput(r.artifact_path, "cpu", args_info) for r in results]


def _wait_free(farm, count: int, deadline_sec: float) -> bool:
    deadline = time.monotonic() + deadline_sec
    while time.monotonic() < deadline:
        if farm.free(timeout=5.0) >= count:
            return True
        time.sleep(0.1)
    return False


def _wait_busy(farm, free_left: int, deadline_sec: float) -> int | None:
    """Wait until only ``free_left`` servers are free; return the index of a live server in a session."""
    import psutil

    deadline = time.monotonic() + deadline_sec
    while time.monotonic() < deadline:
        if farm.free(timeout=5.0) <= free_left:
            for index, server in enumerate(farm.servers):
                if server.poll() is not None:
                    continue
                # A server in a session has a forked session process below its server loop.
                if len(psutil.Process(server.pid).children(recursive=True)) >= 2:
                    return index
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_server_killed_during_a_measurement(tmp_path, target, caplog):
    """A server SIGKILLed while it measures.  With a retry the candidate is re-run on another server and
    every result is a time; without, it comes back as a failure with an error message (which
    MetaSchedule records as run_secs=[1e10]), never as a lost candidate."""
    inputs = _artifacts(target, 2)
    # Each measurement lasts >= 3 s, so the kill lands while both busy servers measure.
    slow = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=3000, enable_cpu_cache_flush=False)
    caplog.set_level(logging.WARNING, logger="tvm_winograd.tune.measure")
    with local_rpc_farm(3, key=KEY, log_dir=str(tmp_path)) as farm:
        # Phase 1: three servers, two measurements, retries=1.
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY, evaluator_config=slow,
                             retries=1, session_timeout_sec=30)
        assert runner.max_workers == 3
        futures = runner.run(inputs)
        busy = _wait_busy(farm, free_left=1, deadline_sec=60.0)
        assert busy is not None, "the two measurements never ran at the same time"
        farm.kill_server(busy)
        results = [f.result() for f in futures]
        assert all(r.error_msg is None and r.run_secs is not None for r in results), \
            [(r.error_msg or "")[-300:] for r in results]
        assert all(float(r.run_secs[0]) > 0 for r in results)
        assert "retry 1 of 1" in caplog.text

        # Phase 2: the two servers left, retries=0.
        assert _wait_free(farm, 2, 60.0)
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY, evaluator_config=slow,
                             retries=0, session_timeout_sec=30)
        assert runner.max_workers == 2
        futures = runner.run(inputs)
        busy = _wait_busy(farm, free_left=0, deadline_sec=60.0)
        assert busy is not None, "the two measurements never ran at the same time"
        farm.kill_server(busy)
        results = [f.result() for f in futures]
    failed = [r for r in results if r.run_secs is None]
    assert len(failed) == 1 and "RPCRunner: An exception occurred" in failed[0].error_msg, \
        [(r.run_secs, (r.error_msg or "")[-300:]) for r in results]
    assert _is_retryable(failed[0].error_msg)  # what a retrying runner retries
    assert sum(r.run_secs is not None for r in results) == 1


@pytest.mark.slow
def test_tune_layer_on_two_servers_one_killed_after_the_first_batch(tmp_path, target):
    """The per-layer tuner measuring on two loopback servers under one key.  After the first batch is in
    the log one server is SIGKILLed; tuning finishes on the other, every trial is in the log with a real
    time, a verified choice comes out, and the log is a plain MetaSchedule database."""
    from tvm_winograd.tune.tuner import tune_layer

    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    log = tmp_path / "log"
    with local_rpc_farm(2, key=KEY, log_dir=str(tmp_path)) as farm:
        assert query_tracker(farm.host, farm.port) == {KEY: 2}
        servers = tracker_summary(farm.host, farm.port)["server_info"]
        assert sorted(s["key"] for s in servers) == [f"server:{KEY}"] * 2
        with pytest.raises(ConnectionError, match="no free RPC server with key 'other'"):
            make_runner(target, rpc_tracker=farm.address, rpc_key="other")
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY)
        assert isinstance(runner._inst, ms.runner.RPCRunner._cls) and runner.max_workers == 2

        stop = threading.Event()
        killed_at: list[int] = []

        def kill_after_first_batch() -> None:
            while not stop.wait(0.1):
                path = log / RECORD_FILE
                n = len(path.read_text().splitlines()) if path.exists() else 0
                if n >= 4:
                    farm.kill_server(0)
                    killed_at.append(n)
                    return

        watcher = threading.Thread(target=kill_after_first_batch, daemon=True)
        watcher.start()
        try:
            result = tune_layer(spec, target, trials=4, candidates=["direct", "winograd_m2"], work_dir=log,
                                schedules_dir=tmp_path / "schedules", builder=make_builder(target),
                                runner=runner, progress=False, seed=2, trials_per_iter=4)
        finally:
            stop.set()
            watcher.join(timeout=10)
        assert killed_at and killed_at[0] < 8, killed_at  # killed while the second candidate was tuned
        assert farm.servers[0].poll() is not None and farm.free() == 1
    assert all(c.records == 4 and c.new_trials == 4 for c in result.candidates.values()), result.candidates
    assert all(c.verified for c in result.candidates.values())
    assert result.choice is not None
    db = ms.database.JSONDatabase(work_dir=str(log))
    records = db.get_all_tuning_records()
    assert len(records) == 8
    assert all(0 < float(r.run_secs[0]) < 1.0 for r in records), [r.run_secs for r in records]


@pytest.mark.slow
def test_dead_farm_counts_its_failed_runs_and_burns_the_budget(tmp_path, target, caplog):
    """The farm dies (tracker and servers) after the runner was made: every run fails (each cut at the
    runner's client-side wait, 2 x 1 s + 30 s, both trials at once), each failure is in the tuning log
    as a measured trial (MetaSchedule's run_secs 1e10), the search stops at its budget instead of
    retrying forever, no choice is stored (warned), and a resume with the same budget measures nothing
    again (failures count as measured: the documented resume rule)."""
    from tvm_winograd.tune.choices import CHOICES_FILE
    from tvm_winograd.tune.tuner import tune_layer

    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    log, schedules = tmp_path / "log", tmp_path / "schedules"
    with local_rpc_farm(1, key=KEY, log_dir=str(tmp_path)) as farm:
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY, retries=0, session_timeout_sec=1,
                             max_workers=2)
    assert farm.tracker.poll() is not None and all(s.poll() is not None for s in farm.servers)
    kwargs = dict(candidates=["direct"], work_dir=log, schedules_dir=schedules, builder=make_builder(target),
                  runner=runner, progress=False, seed=3, trials_per_iter=2)
    with caplog.at_level(logging.WARNING, logger="tvm_winograd.tune.tuner"):
        result = tune_layer(spec, target, trials=2, **kwargs)
    direct = result.candidates["direct"]
    assert direct.records == 2 and direct.new_trials == 2, direct
    assert direct.median_ms is None and not direct.verified and result.choice is None
    assert "nothing stored" in caplog.text
    assert not (schedules / CHOICES_FILE).exists()
    records = ms.database.JSONDatabase(work_dir=str(log)).get_all_tuning_records()
    assert len(records) == 2 and all(float(r.run_secs[0]) >= 1e9 for r in records), [r.run_secs for r in records]
    again = tune_layer(spec, target, trials=2, **kwargs)
    assert again.candidates["direct"].new_trials == 0 and again.candidates["direct"].records == 2
