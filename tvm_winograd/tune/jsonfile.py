"""Small JSON state files of the tuner (``choices.json``, ``search_state.json``): read tolerantly, written
atomically under a lock, never silently overwritten when unreadable.

- :func:`read_object` returns the JSON object of a file, or ``None`` with the reason when the file is
  unreadable, not JSON or not an object.
- :func:`write_atomic` writes a temporary file in the same directory, fsyncs it and renames it over the
  target (readers see the old or the new file, never half of one).
- :func:`locked` holds an exclusive ``flock`` on a lock file beside the target for a read-modify-write,
  so two writers (threads or processes) merging into one file do not lose each other's entries.
- :func:`keep_aside` copies an unreadable file to ``<name>.corrupt[.N]`` before it is replaced, so
  nothing that was on disk is lost without a trace (once: a copy with the same bytes is reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["read_object", "write_atomic", "locked", "keep_aside"]


def read_object(path: Path) -> tuple[dict | None, str | None]:
    """``(object, None)`` for a readable JSON object in ``path``; ``({}, None)`` when it does not exist;
    ``(None, reason)`` when it exists but cannot be used."""
    if not path.exists():
        return {}, None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{type(err).__name__}: {err}"
    if not isinstance(raw, dict):
        return None, f"it holds a JSON {type(raw).__name__}, not an object"
    return raw, None


def keep_aside(path: Path) -> Path:
    """Copy ``path`` to the first free ``<name>.corrupt``, ``<name>.corrupt.1``, ...; return the copy.

    A copy already holding the same bytes is returned instead of making another (the same unreadable
    file is kept once, however often it is met)."""
    content = path.read_bytes()
    target = path.with_name(path.name + ".corrupt")
    n = 0
    while target.exists():
        if target.is_file() and target.read_bytes() == content:
            return target
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    shutil.copy2(path, target)
    return target


def write_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` (blocking; released on exit or death)."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # per open file description: excludes other threads' opens too
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
