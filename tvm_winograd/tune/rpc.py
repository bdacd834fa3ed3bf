"""TVM RPC tracker and servers as managed subprocesses, and tracker queries.

A tuning farm is TVM's own tracker plus one ``rpc_server`` per device, each registered under a key
(``python -m tvm.exec.rpc_tracker``, ``python -m tvm.exec.rpc_server --tracker H:P --key K``); the
``RPCRunner`` from :func:`tvm_winograd.tune.measure.make_runner` asks the tracker for a free server per
candidate.  This module starts such a farm on one machine (tests, docs, a single GPU box), always on
``127.0.0.1`` unless told otherwise, with bounded waits, and stops every process it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "RPCFarm",
    "free_port",
    "start_tracker",
    "start_server",
    "stop_process",
    "tracker_summary",
    "query_tracker",
    "wait_for_servers",
    "local_rpc_farm",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn(args: list[str], log_path: str | None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed by the child's exit
    try:
        # A new session: the server forks a child per RPC session; stop_process kills the whole group.
        return subprocess.Popen([sys.executable, "-m", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            out.close()


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        return []


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop ``proc`` and every process below it (``sig``, then SIGKILL after ``timeout`` seconds).

    An ``rpc_server`` runs its server loop in a TVM popen worker (its own session) and forks a child per
    RPC session, so killing the process group alone can leave a session running: the whole tree goes.
    """
    if proc.poll() is not None:
        return
    children = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for child in children:
        with contextlib.suppress(Exception):
            child.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # Nothing below it may survive (session children, popen workers in their own sessions).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
            child.wait(timeout=timeout)


def _tracker_socket(host: str, port: int, timeout: float) -> socket.socket:
    from tvm.rpc import base

    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise RuntimeError(f"{host}:{port} is not a TVM RPC tracker")
    except BaseException:
        sock.close()
        raise
    return sock


def tracker_summary(host: str, port: int, timeout: float = 10.0) -> dict:
    """The tracker's raw summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info": [...]}``.

    Raises ``ConnectionError`` naming the tracker when it does not answer within ``timeout`` seconds.
    """
    from tvm.rpc import base

    try:
        with contextlib.closing(_tracker_socket(host, port, timeout)) as sock:
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            value = base.recvjson(sock)
    except (OSError, RuntimeError) as err:
        raise ConnectionError(f"RPC tracker {host}:{port} did not answer within {timeout:g} s: {err}") from err
    if value[0] != base.TrackerCode.SUCCESS:
        raise ConnectionError(f"RPC tracker {host}:{port} answered {value!r} to a summary request")
    return value[1]


def query_tracker(host: str, port: int, timeout: float = 10.0) -> dict[str, int]:
    """Free servers per key registered at the tracker ``host:port``, e.g. ``{"a100": 4}``.

    Servers busy with a session are not free; a key whose servers are all busy maps to 0.
    """
    summary = tracker_summary(host, port, timeout)
    free = {key: int(info.get("free", 0)) for key, info in summary.get("queue_info", {}).items()}
    for server in summary.get("server_info", []):
        key = str(server.get("key", "")).partition(":")[2]
        free.setdefault(key, 0)
    return free


def wait_for_servers(host: str, port: int, key: str, count: int, timeout: float = 60.0) -> int:
    """Wait until ``count`` servers are free under ``key``; return the number seen.

    Raises ``TimeoutError`` naming the tracker, the key and the counts after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        with contextlib.suppress(ConnectionError):
            seen = query_tracker(host, port, timeout=min(5.0, timeout)).get(key, 0)
            if seen >= count:
                return seen
        if time.monotonic() >= deadline:
            raise TimeoutError(f"only {seen} of {count} RPC server(s) with key {key!r} registered at "
                               f"{host}:{port} after {timeout:g} s")
        time.sleep(0.25)


def start_tracker(host: str = LOOPBACK, port: int | None = None, log_path: str | None = None,
                  timeout: float = 30.0) -> tuple[subprocess.Popen, int]:
    """Start ``python -m tvm.exec.rpc_tracker`` on ``host:port`` and wait until it answers.

    Returns the process and its port.
    """
    port = free_port(host) if port is None else port
    proc = _spawn(["tvm.exec.rpc_tracker", "--host", host, "--port", str(port), "--port-end", str(port + 1)],
                  log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"RPC tracker on {host}:{port} exited with code {proc.returncode}")
            try:
                tracker_summary(host, port, timeout=2.0)
                break
            except ConnectionError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"RPC tracker on {host}:{port} did not start within {timeout:g} s") from None
                time.sleep(0.25)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


def start_server(tracker_host: str, tracker_port: int, key: str, host: str = LOOPBACK,
                 log_path: str | None = None, extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``python -m tvm.exec.rpc_server`` registered at the tracker under ``key`` (no wait)."""
    port = free_port(host)
    return _spawn(["tvm.exec.rpc_server", "--host", host, "--port", str(port), "--port-end", str(port + 100),
                   "--tracker", f"{tracker_host}:{tracker_port}", "--key", key, *extra_args], log_path)


@dataclass
class RPCFarm:
    """A tracker and its servers started by :func:`local_rpc_farm`."""

    host: str
    port: int
    key: str
    tracker: subprocess.Popen
    servers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``"host:port"`` as ``make_runner(rpc_tracker=...)`` and the CLI's ``--rpc-tracker`` take it."""
        return f"{self.host}:{self.port}"

    def kill_server(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill server ``index`` (and its session children) the hard way, as a crashed machine would."""
        stop_process(self.servers[index], sig=sig)

    def free(self, timeout: float = 10.0) -> int:
        """Free servers under this farm's key right now."""
        return query_tracker(self.host, self.port, timeout).get(self.key, 0)


@contextlib.contextmanager
def local_rpc_farm(num_servers: int = 2, key: str = "tvm-winograd", host: str = LOOPBACK,
                   port: int | None = None, log_dir: str | None = None,
                   timeout: float = 60.0) -> Iterator[RPCFarm]:
    """A tracker and ``num_servers`` servers on ``host``, all stopped on exit (even on error).

    Waits (at most ``timeout`` seconds) until every server is registered and free.
    """
    if num_servers < 0:
        raise ValueError(f"num_servers must be >= 0, got {num_servers}")
    log = (lambda name: os.path.join(log_dir, name)) if log_dir else (lambda name: None)
    tracker, port = start_tracker(host, port, log_path=log("tracker.log"), timeout=timeout)
    farm = RPCFarm(host=host, port=port, key=key, tracker=tracker)
    try:
        for i in range(num_servers):
            farm.servers.append(start_server(host, port, key, host=host, log_path=log(f"server{i}.log")))
        if num_servers:
            wait_for_servers(host, port, key, num_servers, timeout=timeout)
        logger.info("RPC farm: tracker %s, %d server(s) under key %r", farm.address, num_servers, key)
        yield farm
    finally:
        for server in farm.servers:
            stop_process(server)
        stop_process(tracker)
