"""Builders and runners for MetaSchedule measurement (owner: issue 7 refines the RPC side).

``make_builder(target)`` and ``make_runner(target, rpc_tracker=None, rpc_key=None)`` are the only
places that decide how candidates are compiled and timed.
"""

from __future__ import annotations

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

__all__ = ["make_builder", "make_runner"]


def make_builder(target: Target, max_workers: int | None = None) -> ms.builder.Builder:
    """A local parallel builder for ``target``."""
    return ms.builder.LocalBuilder(max_workers=max_workers)


def make_runner(target: Target, rpc_tracker: str | None = None, rpc_key: str | None = None) -> ms.runner.Runner:
    """Local measurement, or through a TVM RPC tracker ``host:port`` under ``rpc_key``."""
    if rpc_tracker:
        host, _, port = rpc_tracker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rpc tracker {rpc_tracker!r} is not of the form HOST:PORT")
        if not rpc_key:
            raise ValueError("an rpc tracker needs --rpc-key")
        return ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                                                  tracker_key=rpc_key))
    return ms.runner.LocalRunner()
