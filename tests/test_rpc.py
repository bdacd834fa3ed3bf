"""Measurement through TVM's RPC tracker on loopback: tracker queries, parallel servers, a server that dies.

Every test starts its own tracker and CPU servers on 127.0.0.1 (``local_rpc_farm``) and the context
manager stops them, also on failure.
"""

from __future__ import annotations

import logging
import signal
import time

import pytest
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from tvm_winograd import compute
from tvm_winograd.targets import resolve_target
from tvm_winograd.tune.database import RECORD_FILE, measured_count, open_database
from tvm_winograd.tune.measure import _is_retryable, make_builder, make_runner, parse_tracker
from tvm_winograd.tune.rpc import local_rpc_farm, query_tracker, tracker_summary
from tvm_winograd.workload import make_spec

KEY = "tvmw-test"


def _module() -> tvm.IRModule:
    return tvm.IRModule({"main": compute.direct_func(make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1))})


def _small_search() -> ms.search_strategy.EvolutionarySearch:
    return ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=8, genetic_num_iters=1)


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


@pytest.mark.slow
def test_tune_on_two_servers_one_killed_after_the_first_batch(tmp_path, target):
    """Two servers under one key: the runner uses both; after the first batch one server is SIGKILLed,
    the search finishes on the other, and every trial is in the database with a real time."""
    mod = _module()
    with local_rpc_farm(2, key=KEY, log_dir=str(tmp_path)) as farm:
        assert query_tracker(farm.host, farm.port) == {KEY: 2}
        servers = tracker_summary(farm.host, farm.port)["server_info"]
        assert sorted(s["key"] for s in servers) == [f"server:{KEY}"] * 2
        with pytest.raises(ConnectionError, match="no free RPC server with key 'other'"):
            make_runner(target, rpc_tracker=farm.address, rpc_key="other")

        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY)
        assert isinstance(runner._inst, ms.runner.RPCRunner._cls)
        assert runner.max_workers == 2
        batches: list[int] = []

        @derived_object
        class KillAfterFirstBatch(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                batches.append(len(runner_results))
                if len(batches) == 1:
                    farm.kill_server(0)

        db = open_database(tmp_path / "log")
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), KillAfterFirstBatch()]
        ms.tune_tir(mod, target, str(tmp_path / "log"), max_trials_global=8, num_trials_per_iter=4,
                    builder=make_builder(target), runner=runner, database=db, cost_model="random",
                    strategy=_small_search(), measure_callbacks=callbacks, seed=3)
        assert batches == [4, 4]
        assert farm.servers[0].poll() is not None and farm.free() == 1
        records = db.get_all_tuning_records()
        assert measured_count(db, mod, target) == 8
        assert all(0 < float(r.run_secs[0]) < 1.0 for r in records), [r.run_secs for r in records]
        db.close()
    # Both files are plain MetaSchedule logs.
    assert len((tmp_path / "log" / RECORD_FILE).read_text().splitlines()) == 8
    assert len(ms.database.JSONDatabase(work_dir=str(tmp_path / "log"))) == 8


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


def _wait_all_busy(farm, deadline_sec: float) -> bool:
    deadline = time.monotonic() + deadline_sec
    while time.monotonic() < deadline:
        if farm.free(timeout=5.0) == 0:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_server_killed_during_a_measurement(tmp_path, target, caplog, retries):
    """A server SIGKILLed while it measures: with retries the candidate is re-run on the other server
    and every result is a time; without retries it comes back as a failure with an error message
    (which MetaSchedule records as run_secs=[1e10]), never as a lost candidate."""
    inputs = _artifacts(target, 2)
    # Each measurement lasts >= 3 s, so the kill lands while both servers are busy.
    slow = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=3000, enable_cpu_cache_flush=False)
    with local_rpc_farm(2, key=KEY, log_dir=str(tmp_path)) as farm:
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY, evaluator_config=slow,
                             retries=retries, session_timeout_sec=30)
        caplog.set_level(logging.WARNING, logger="tvm_winograd.tune.measure")
        futures = runner.run(inputs)
        assert _wait_all_busy(farm, 60.0), "the two measurements never ran at the same time"
        farm.kill_server(0, sig=signal.SIGKILL)
        results = [f.result() for f in futures]
    assert len(results) == len(inputs)
    if retries:
        assert all(r.error_msg is None and r.run_secs is not None for r in results), [r.error_msg for r in results]
        assert all(float(r.run_secs[0]) > 0 for r in results)
        assert "retry 1 of 1" in caplog.text
    else:
        failed = [r for r in results if r.run_secs is None]
        assert len(failed) == 1 and "RPCRunner: An exception occurred" in failed[0].error_msg, \
            [(r.run_secs, (r.error_msg or "")[-300:]) for r in results]
        assert _is_retryable(failed[0].error_msg)  # what a retrying runner would have retried
        assert sum(r.run_secs is not None for r in results) == 1


@pytest.mark.slow
def test_tune_layer_through_the_tracker(tmp_path, target):
    """The per-layer tuner measuring on two loopback servers: both candidates get their full budget,
    a verified choice comes out, and the log is a plain MetaSchedule database."""
    from tvm_winograd.tune.tuner import tune_layer

    spec = make_spec((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    with local_rpc_farm(2, key=KEY, log_dir=str(tmp_path)) as farm:
        runner = make_runner(target, rpc_tracker=farm.address, rpc_key=KEY)
        result = tune_layer(spec, target, trials=4, candidates=["direct", "winograd_m2"],
                            work_dir=tmp_path / "log", schedules_dir=tmp_path / "schedules",
                            builder=make_builder(target), runner=runner, progress=False, seed=2,
                            trials_per_iter=4)
    assert all(c.records == 4 and c.new_trials == 4 for c in result.candidates.values()), result.candidates
    assert all(c.verified for c in result.candidates.values())
    assert result.choice is not None
    assert len(ms.database.JSONDatabase(work_dir=str(tmp_path / "log"))) == 8
