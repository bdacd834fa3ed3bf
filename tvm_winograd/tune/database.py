"""Crash-safe tuning databases.

Everything that reads or writes a MetaSchedule database goes through :func:`open_database`, so the
storage policy lives in one place:

* **Format.** The two files of MetaSchedule's ``JSONDatabase``: ``database_workload.json`` (one workload
  per line: ``[shash, base64 module]``) and ``database_tuning_record.json`` (one record per line:
  ``[workload line index, [trace, run_secs, target, args_info]]``).  A clean directory written here is
  read by ``ms.database.JSONDatabase(work_dir=...)`` and ``relax.transform.MetaScheduleApplyDatabase``.
* **Append-only, durable per record.** Every line is written with one ``write()`` on an ``O_APPEND``
  descriptor and ``fsync``'d before the commit returns, so a killed process loses at most the record it
  was writing, and that record was never reported as stored.  (TVM's own ``JSONDatabase`` flushes each
  line with ``std::endl`` but never fsyncs.)
* **Tolerant loading.** TVM's ``JSONDatabase`` aborts the whole load on one bad line.  Here a
  half-written last line (a writer killed mid-``write``) is ignored with a warning naming file and line
  (and cut off before the next append, so it cannot glue itself to a new record); a corrupt line in the
  middle is skipped with a warning naming file and line; every good record is kept.
* **One writer per directory.** A writer holds an advisory ``fcntl.flock`` on ``tuning.lock`` in the
  directory for its lifetime; a second writer fails with :class:`DatabaseLockedError` naming the directory
  and the holder's pid, or waits for it with ``wait=True``.  The lock dies with its process, so a killed
  tuning run never leaves a stale lock.

Failed measurements are records too: MetaSchedule's ``AddToDatabase`` callback stores a candidate whose
build or run failed with ``run_secs = [1e10]`` (``TuningRecord.is_valid()`` is then False, so it is never
picked as best, but it is kept and counted by :func:`measured_count`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload
from tvm.target import Target

__all__ = [
    "open_database",
    "trace_to_json",
    "trace_from_json",
    "CrashSafeDatabase",
    "DatabaseLockedError",
    "DatabaseLoadWarning",
    "measured_count",
    "workload_records",
    "WORKLOAD_FILE",
    "RECORD_FILE",
    "LOCK_FILE",
]

logger = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = "tuning.lock"

#: MetaSchedule's stand-in run time for a failed build or run (``SortTuningRecordByMeanRunSecs::kMaxMeanTime``).
FAILED_RUN_SECS = 1e10


class DatabaseLockedError(RuntimeError):
    """Another live process is writing the same tuning log directory."""


class DatabaseLoadWarning(UserWarning):
    """A line of a tuning log could not be read and was skipped."""


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, DatabaseLoadWarning, stacklevel=3)


def _plain(obj: Any) -> Any:
    """A TVM JSON object (as ``AsJSON`` returns it) as plain Python, encoded the way MetaSchedule's C++
    ``JSONDumps`` does: ``IntImm``/``FloatImm`` as numbers, an ``IndexMap`` (``TransformLayout`` traces,
    from the ``RewriteLayout`` postprocessor) as its JSON-graph string.  Python's ``TuningRecord.as_json``
    raises on the ``IndexMap``, hence this."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tvm.tirx.IndexMap):
        return tvm.ir.save_json(obj)
    if isinstance(obj, tvm.tirx.IntImm):
        return bool(obj.value) if str(obj.ty) == "bool" else int(obj.value)
    if isinstance(obj, tvm.tirx.FloatImm):
        return float(obj.value)
    if isinstance(obj, (list, tuple, tvm_ffi.Array)):
        return [_plain(item) for item in obj]
    if isinstance(obj, (dict, tvm_ffi.Map)):
        return {str(key): _plain(value) for key, value in obj.items()}
    raise TypeError(f"cannot store a {type(obj).__name__} in a tuning log")


def trace_to_json(trace) -> list:
    """A schedule's trace as plain JSON (as a tuning log line holds it): decisions and postprocessors kept."""
    return _plain(trace.as_json(remove_postproc=False))


def trace_from_json(trace_json: list, mod: tvm.IRModule):
    """The trace of :func:`trace_to_json` replayed on ``mod`` (the workload it was made on): a Trace."""
    from tvm.s_tir.schedule import Trace

    sch = tvm.s_tir.Schedule(mod)
    Trace.apply_json_to_schedule(tvm_ffi.convert(trace_json), sch)
    return sch.trace


def _dumps(obj: Any) -> str:
    # Compact, one line; MetaSchedule's C++ JSON reader parses standard JSON numbers and strings.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class _DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/tuning.lock`` that records the holder's pid."""

    def __init__(self, directory: Path, wait: bool, timeout: float | None) -> None:
        self.path = directory / LOCK_FILE
        # os.open makes the descriptor non-inheritable, so builder/runner worker processes never hold it.
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(directory, wait, timeout)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(self._fd)

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _acquire(self, directory: Path, wait: bool, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            holder = self._holder()
            if not wait:
                raise DatabaseLockedError(
                    f"tuning log directory {directory} is in use by another tuning run (pid {holder}); "
                    "wait for it to finish or pass wait=True")
            if deadline is not None and time.monotonic() >= deadline:
                raise DatabaseLockedError(
                    f"tuning log directory {directory} is still in use by another tuning run (pid {holder}) "
                    f"after waiting {timeout:g} s")
            if not announced:
                logger.info("waiting for tuning run pid %s to release %s", holder, directory)
                announced = True
            time.sleep(0.2)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def _read_lines(path: Path, repair: bool) -> list[tuple[int, Any]]:
    """Parse ``path`` line by line into ``[(line_number, json_value)]``, skipping bad lines with a warning.

    A last line without its newline that does not parse is a write cut short by a killed process: it is
    ignored, and with ``repair`` cut off the file so the next append starts on a fresh line.  A last line
    that parses but lacks its newline gets the newline added (with ``repair``).
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    out: list[tuple[int, Any]] = []
    lines = data.split(b"\n")
    torn_tail = lines[-1]  # b"" when the file ends with a newline
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            out.append((number, json.loads(raw)))
        except ValueError as err:
            _warn(f"{path}:{number}: skipped a corrupt line ({err}; {len(raw)} bytes)")
    if torn_tail.strip():
        number = len(lines)
        try:
            out.append((number, json.loads(torn_tail)))
            if repair:
                with open(path, "ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
        except ValueError:
            _warn(f"{path}:{number}: ignored a half-written last line ({len(torn_tail)} bytes), "
                  "probably from a killed tuning run")
            if repair:
                os.truncate(path, len(data) - len(torn_tail))
    return out


@derived_object
class CrashSafeDatabase(PyDatabase):
    """A MetaSchedule database on ``JSONDatabase``'s two files, fsync'd per record, tolerant on load.

    Parameters
    ----------
    work_dir
        Directory holding ``database_workload.json`` and ``database_tuning_record.json``.
    module_equality
        How workloads are matched (``"structural"``, ``"ignore-tensor"``, ``"anchor-block"``).
    readonly
        Load only: take no lock, never write (commits raise ``RuntimeError``).
    wait
        When another process holds the directory's lock, wait for it instead of failing.
    lock_timeout
        With ``wait``, give up after this many seconds (``None``: wait forever).

    Queries are answered from an in-memory ``MemoryDatabase`` holding everything loaded and committed.
    """

    def __init__(self, work_dir: str | os.PathLike, module_equality: str = "structural", *,
                 readonly: bool = False, wait: bool = False, lock_timeout: float | None = None) -> None:
        super().__init__()
        self.work_dir = Path(work_dir)
        self.readonly = readonly
        self.path_workload = self.work_dir / WORKLOAD_FILE
        self.path_tuning_record = self.work_dir / RECORD_FILE
        self._memory = ms.database.MemoryDatabase(module_equality=module_equality)
        # Workload line index -> the MemoryDatabase's Workload object (None for an unreadable line).
        self._workloads: list[Workload | None] = []
        self._lock: _DirectoryLock | None = None
        self._fd_workload: int | None = None
        self._fd_record: int | None = None
        if not readonly:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _DirectoryLock(self.work_dir, wait, lock_timeout)
        try:
            self._load()
            if not readonly:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
                self._fd_workload = os.open(self.path_workload, flags, 0o644)
                self._fd_record = os.open(self.path_tuning_record, flags, 0o644)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        repair = not self.readonly
        # Line numbers, not list positions, are the workload indices the record file refers to.
        workload_lines = _read_lines(self.path_workload, repair)
        by_line: dict[int, Workload] = {}
        for number, obj in workload_lines:
            try:
                workload = Workload.from_json(obj)
            except Exception as err:  # noqa: BLE001 - TVM raises its own error types
                _warn(f"{self.path_workload}:{number}: skipped an unreadable workload "
                      f"({str(err).splitlines()[0] if str(err) else type(err).__name__})")
                continue
            by_line[number] = self._memory.commit_workload(workload.mod)
        n_lines = max(by_line, default=0)
        if workload_lines:
            n_lines = max(n_lines, workload_lines[-1][0])
        self._workloads = [by_line.get(i + 1) for i in range(n_lines)]
        if repair and self.path_workload.exists():
            # Lines skipped as corrupt still occupy an index: new workloads go after them.
            n_file = self.path_workload.read_bytes().count(b"\n")
            self._workloads += [None] * (n_file - len(self._workloads))
        n_records = 0
        for number, obj in _read_lines(self.path_tuning_record, repair):
            try:
                index, record_json = obj
                workload = self._workloads[index] if isinstance(index, int) and 0 <= index < len(
                    self._workloads) else None
                if workload is None:
                    raise ValueError(f"it refers to workload line {index + 1 if isinstance(index, int) else index}"
                                     f" of {self.path_workload.name}, which is missing or unreadable")
                record = TuningRecord.from_json(record_json, workload)
            except Exception as err:  # noqa: BLE001
                _warn(f"{self.path_tuning_record}:{number}: skipped an unreadable tuning record "
                      f"({str(err).splitlines()[0] if str(err) else type(err).__name__})")
                continue
            self._memory.commit_tuning_record(record)
            n_records += 1
        logger.debug("loaded %d workload(s), %d record(s) from %s", len(by_line), n_records, self.work_dir)

    # ------------------------------------------------------------------ writing
    def _append(self, fd: int | None, line: str) -> None:
        if fd is None:
            raise RuntimeError(f"tuning database {self.work_dir} is open read-only or closed")
        payload = (line + "\n").encode()
        written = os.write(fd, payload)
        while written < len(payload):  # regular files do not short-write, but be exact if one does
            written += os.write(fd, payload[written:])
        os.fsync(fd)

    def _index_of(self, workload: Workload) -> int | None:
        for index, known in enumerate(self._workloads):
            if known is not None and known.same_as(workload):
                return index
        return None

    # ------------------------------------------------------------------ PyDatabase interface
    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self._memory.has_workload(mod)

    def commit_workload(self, mod: tvm.IRModule) -> Workload:
        workload = self._memory.commit_workload(mod)
        if self._index_of(workload) is None:
            self._append(self._fd_workload, _dumps(_plain(_ffi_api.WorkloadAsJSON(workload))))
            self._workloads.append(workload)
        return workload

    def commit_tuning_record(self, record: TuningRecord) -> None:
        index = self._index_of(record.workload)
        if index is None:
            workload = self.commit_workload(record.workload.mod)
            index = self._index_of(workload)
            record = TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
        self._append(self._fd_record, _dumps([index, _plain(_ffi_api.TuningRecordAsJSON(record))]))
        self._memory.commit_tuning_record(record)

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        return self._memory.get_top_k(workload, top_k)

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return self._memory.get_all_tuning_records()

    def __len__(self) -> int:
        return len(self._memory)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the files and release the directory lock (also done when the process exits)."""
        for name in ("_fd_workload", "_fd_record"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def __del__(self) -> None:
        self.close()


def open_database(work_dir: str | os.PathLike, module_equality: str = "structural", *,
                  readonly: bool = False, wait: bool = False,
                  lock_timeout: float | None = None) -> ms.database.Database:
    """The crash-safe MetaSchedule database stored in ``work_dir`` (created if missing).

    A writer (``readonly=False``) holds the directory's lock until :meth:`CrashSafeDatabase.close` or
    process exit; a second writer raises :class:`DatabaseLockedError` naming the holder's pid, unless
    ``wait=True``.  See :class:`CrashSafeDatabase` for the parameters.
    """
    if not isinstance(module_equality, str) or not module_equality:
        raise ValueError(f"module_equality must be a non-empty string, got {module_equality!r}")
    # CUDA tensor-core records name our wmma intrinsics: they must be registered before any trace parses.
    from ..schedule.cuda.intrin import ensure_tensor_intrinsics_for_database

    ensure_tensor_intrinsics_for_database(work_dir)
    return CrashSafeDatabase(work_dir, module_equality, readonly=readonly, wait=wait, lock_timeout=lock_timeout)


def _as_module(mod: tvm.IRModule | tvm.tirx.PrimFunc) -> tvm.IRModule:
    if isinstance(mod, tvm.IRModule):
        return mod
    if isinstance(mod, tvm.tirx.PrimFunc):
        return tvm.IRModule({"main": mod.with_attr("global_symbol", "main")})
    raise ValueError(f"expected an IRModule or PrimFunc, got {type(mod).__name__}")


def _same_target(a: Target | None, b: Target) -> bool:
    if a is None:
        return False
    # Records keep the tuning target; compare its config without the host (MetaSchedule may add one).
    ca = {k: v for k, v in dict(a.export()).items() if k != "host"}
    cb = {k: v for k, v in dict(b.export()).items() if k != "host"}
    return str(ca) == str(cb)


def workload_records(db: ms.database.Database, mod: tvm.IRModule | tvm.tirx.PrimFunc,
                     target: Target | str | dict | None = None) -> list[TuningRecord]:
    """Every record of ``mod`` in ``db`` (failed measurements included), optionally for ``target`` only."""
    mod = _as_module(mod)
    if not db.has_workload(mod):
        return []
    workload = db.commit_workload(mod)  # already present: a lookup, nothing is written
    if target is not None and not isinstance(target, Target):
        from tvm_winograd.targets import resolve_target
        target = resolve_target(target)
    out = []
    for record in db.get_all_tuning_records():
        if not (record.workload.same_as(workload) or tvm_ffi.structural_equal(record.workload.mod, mod)):
            continue
        if target is not None and not _same_target(record.target, target):
            continue
        out.append(record)
    return out


def measured_count(db: ms.database.Database, mod: tvm.IRModule | tvm.tirx.PrimFunc,
                   target: Target | str | dict | None = None) -> int:
    """How many candidates of ``mod`` (for ``target``) were already measured, failures included.

    A resumed tuning run spends ``max(0, trials - measured_count(db, mod, target))`` more trials on the
    workload, so a run killed after k measurements and restarted measures ``trials - k`` new candidates.
    """
    return len(workload_records(db, mod, target))
