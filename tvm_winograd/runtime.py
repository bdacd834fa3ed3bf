"""Running a compiled library with the TVM runtime alone: thread pool, loading, inputs.

This module imports only the standard library, ``numpy``, ``tvm.runtime`` and ``tvm_ffi`` (no compiler,
no Relax Python, no frontend), so it works in a process started with ``TVM_USE_RUNTIME_LIB=1`` where
``libtvm_compiler.so`` is absent.

Threads
-------
The CPU thread pool is sized by :func:`tvm_winograd.threads.configure_threads` (every allowed core, a
user's ``TVM_NUM_THREADS`` wins) before the first call: :func:`load_vm` does it.

Library integrity
-----------------
A library that was cut short (an interrupted copy or download) makes ``dlopen`` map pages past the end
of the file, and the process dies with SIGBUS on first touch.  :func:`check_library` refuses such a
file before it is loaded, with one line naming it.  :func:`append_trailer` (called by
``tvm_winograd.export.export_library``) appends to every ``.so`` it writes::

    JSON metadata | u64 little-endian length of the JSON | sha256 of all bytes before it (32) | MAGIC (16)

ELF loaders ignore bytes after the sections (checked: ``tvm.runtime.load_module`` loads such a file
and runs it unchanged).  The JSON starts with ``{"format": "tvm-winograd-library"`` and holds the
format version, the package and TVM versions, the target and the inputs of ``main`` (name, shape with
symbolic dimensions as strings, dtype), which :func:`run` checks inputs against.  A library without
the trailer (exported by plain TVM) gets a structural ELF check instead: ELF magic, a shared object,
the program and section header tables, every ``PT_LOAD`` segment and every section within the file.

Separate params
---------------
A library compiled with ``--params separate`` (:mod:`tvm_winograd.params`) holds no weights: its
trailer's ``params`` entry names the params file (TVM's parameter-dict format, looked up beside the
library unless another path is given), with its sha256, size and parameter order.  :func:`load_vm`
checks the file against that entry (a missing, truncated, damaged or other model's file is one line
naming it), loads it to the device, runs ``main_transform_params`` once there (the Winograd weight
transforms, the direct convolutions' weight packing) and keeps the transformed weights on the VM;
:func:`run` passes them to every call of ``main`` after the inputs.

Cost of the check at load time, measured on this project's 2-core host with the README's ResNet-18
library (97.4 MB, page cache warm, median of 5): the trailer check (sha256 of the whole file, read in
4 MiB blocks) 74 ms, about 0.75 ms per MB; the ELF check alone 0.05 ms.  For scale,
``tvm.runtime.load_module`` plus creating the VM took 195-225 ms on the same file, so the digest adds
about a third to loading; running the model is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .threads import configure_threads

__all__ = [
    "append_trailer",
    "check_library",
    "load_vm",
    "load_and_run",
    "run",
    "library_metadata",
    "input_names",
    "check_inputs",
    "TRANSFORM_FUNC",
    "TRAILER_MAGIC",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The trailer: JSON | u64 LE length | sha256 | MAGIC
# --------------------------------------------------------------------------------------------------


#: The last 16 bytes of a library written by ``tvm_winograd.export.export_library``.
TRAILER_MAGIC = b"\x00TVM-WINOGRAD\x00v1"
#: Version of the trailer's layout and of its JSON metadata (a reader refuses a newer one).
FORMAT_VERSION = 1
#: What the trailer's JSON starts with (found after a structurally sound ELF: a trailer cut short).
_JSON_PREFIX = b'{"format": "tvm-winograd-library"'
_FIXED = 8 + 32 + len(TRAILER_MAGIC)  # length, digest, magic
_CHUNK = 1 << 22


def _sha256(f, start: int, stop: int) -> bytes:
    """sha256 of the bytes ``[start, stop)`` of the open file ``f``."""
    digest = hashlib.sha256()
    f.seek(start)
    left = stop - start
    while left > 0:
        block = f.read(min(_CHUNK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest.digest()


def append_trailer(path: str | os.PathLike, metadata: Mapping[str, object]) -> dict:
    """Append the integrity trailer with ``metadata`` to the library at ``path``; returns the JSON
    object written (``format`` and ``format_version`` first, then ``metadata``)."""
    path = Path(path)
    record = {"format": "tvm-winograd-library", "format_version": FORMAT_VERSION,
              **{k: v for k, v in metadata.items() if k not in ("format", "format_version")}}
    text = json.dumps(record).encode()  # starts with _JSON_PREFIX (the first key, json's default separators)
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(text + struct.pack("<Q", len(text)))
        f.flush()
        end = f.tell()
        digest = _sha256(f, 0, end)
        f.seek(end)
        f.write(digest + TRAILER_MAGIC)
    return record


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(f"library {str(path)!r} is damaged: {why}")


def _truncated(path: Path, why: str) -> ValueError:
    return ValueError(f"library {str(path)!r} is truncated or not a shared library: {why}")


def _elf_extent(f, size: int, path: Path) -> int:
    """Structural check of the ELF shared object in the first ``size`` bytes of ``f``; returns the end
    of its last header table, segment or section (where appended bytes start)."""
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise _truncated(path, "no ELF header")
    cls, data = ident[4], ident[5]
    if cls not in (1, 2) or data not in (1, 2):
        raise _truncated(path, f"ELF class {cls} / data encoding {data} is not valid")
    end = "<" if data == 1 else ">"
    wide = cls == 2
    header_size = 64 if wide else 52
    if len(ident) < header_size or size < header_size:
        raise _truncated(path, f"the ELF header needs {header_size} bytes, the file has {size}")
    if wide:
        e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack(
            end + "HHIQQQIHHHHHH", ident[16:64])
    else:
        e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack(
            end + "HHIIIIIHHHHHH", ident[16:52])
    if e_type != 3:  # ET_DYN
        raise _truncated(path, f"ELF type {e_type} is not a shared object (3)")
    extent = header_size

    def table(name: str, offset: int, entsize: int, count: int, minsize: int) -> bytes:
        if count and entsize < minsize:
            raise _truncated(path, f"its {name} entries are {entsize} bytes, less than {minsize}")
        stop = offset + entsize * count
        if stop > size:
            raise _truncated(path, f"its {name} table (bytes {offset}..{stop}) is beyond the file's {size} bytes")
        f.seek(offset)
        return f.read(entsize * count)

    ph = table("program header", phoff, phentsize, phnum, 56 if wide else 32)
    extent = max(extent, phoff + phentsize * phnum)
    for i in range(phnum):
        entry = ph[i * phentsize:(i + 1) * phentsize]
        if wide:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack(end + "IIQQQQ", entry[:40])
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack(end + "IIIII", entry[:20])
        if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
            raise _truncated(path, f"its loadable segment {i} (bytes {p_offset}..{p_offset + p_filesz}) is "
                                   f"beyond the file's {size} bytes")
        extent = max(extent, p_offset + p_filesz)
    if shoff:
        shmin = 64 if wide else 40
        if shnum == 0:  # extended numbering: the count is section 0's sh_size
            first = table("section header", shoff, shentsize, 1, shmin)
            shnum = struct.unpack(end + ("Q" if wide else "I"), first[32:40] if wide else first[20:24])[0]
        sh = table("section header", shoff, shentsize, shnum, shmin)
        extent = max(extent, shoff + shentsize * shnum)
        for i in range(shnum):
            entry = sh[i * shentsize:(i + 1) * shentsize]
            if wide:
                _, sh_type, _, _, sh_offset, sh_size = struct.unpack(end + "IIQQQQ", entry[:40])
            else:
                _, sh_type, _, _, sh_offset, sh_size = struct.unpack(end + "IIIIII", entry[:24])
            if sh_type in (0, 8):  # SHT_NULL, SHT_NOBITS: nothing in the file
                continue
            if sh_offset + sh_size > size:
                raise _truncated(path, f"its section {i} (bytes {sh_offset}..{sh_offset + sh_size}) is beyond "
                                       f"the file's {size} bytes")
            extent = max(extent, sh_offset + sh_size)
    return extent


def check_library(path: str | os.PathLike) -> dict | None:
    """Refuse a damaged library before it is loaded; return its trailer's metadata (``None`` without one).

    Parameters
    ----------
    path
        A library file (``.so``).  Files of other suffixes (``.tar``, ``.dylib``, ``.dll``) are checked
        only when they carry the trailer.

    Returns
    -------
    dict or None
        The trailer's JSON object, or ``None`` for a structurally sound library without a trailer.

    Raises
    ------
    ValueError
        One line naming ``path``: ``is damaged`` (the trailer's sha256 does not match, or the trailer
        is cut, unreadable or of a newer format) or ``is truncated or not a shared library`` (no
        trailer, and the ELF structure does not fit in the file).

    Notes
    -----
    Cost: one sha256 pass over the file (~0.75 ms per MB here: 74 ms for a 97 MB ResNet-18 library,
    see the module docstring), or, without a trailer, reading the ELF header tables (0.05 ms).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = b""
        if size >= _FIXED:
            f.seek(size - len(TRAILER_MAGIC))
            magic = f.read(len(TRAILER_MAGIC))
        if magic == TRAILER_MAGIC:
            f.seek(size - _FIXED)
            (length,) = struct.unpack("<Q", f.read(8))
            digest = f.read(32)
            json_start = size - _FIXED - length
            if json_start < 0:
                raise _damaged(path, f"its trailer claims {length} bytes of metadata, more than the file holds "
                                     "(cut or overwritten)")
            if _sha256(f, 0, size - 32 - len(TRAILER_MAGIC)) != digest:
                raise _damaged(path, "its sha256 does not match the one written at compile time")
            f.seek(json_start)
            try:
                record = json.loads(f.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise _damaged(path, f"its metadata is not JSON ({err})") from None
            version = record.get("format_version") if isinstance(record, dict) else None
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ValueError(f"library {str(path)!r} has trailer format {version!r}; this tvm-winograd "
                                 f"reads format {FORMAT_VERSION} or older: use a newer tvm-winograd")
            if path.suffix == ".so":
                _elf_extent(f, json_start, path)
            return record
        if path.suffix != ".so":
            logger.debug("library %s has no tvm-winograd trailer and is not a .so: not checked", path)
            return None
        extent = _elf_extent(f, size, path)
        if extent < size:  # bytes after the ELF: a trailer cut short starts with the JSON prefix
            f.seek(extent)
            tail = f.read(min(size - extent, 1 << 20))
            if _JSON_PREFIX in tail:
                raise _damaged(path, f"its tvm-winograd trailer is cut ({size - extent} of its bytes are left)")
    logger.debug("library %s has no tvm-winograd trailer (exported by plain TVM?): its ELF structure is sound",
                 path)
    return None


# --------------------------------------------------------------------------------------------------
# Loading and running
# --------------------------------------------------------------------------------------------------

_METADATA_ATTR = "_tvm_winograd_metadata"
#: The VM attribute holding the transformed weights of a library with separate params.
_WEIGHTS_ATTR = "_tvm_winograd_weights"
#: The function Relax's ``LiftTransformParams`` makes for ``main``: weights tuple -> transformed weights tuple.
TRANSFORM_FUNC = "main_transform_params"


def _last_line(err: BaseException) -> str:
    """The last non-blank line of an error's text (TVM puts its message after the C++ context)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def library_metadata(vm) -> dict | None:
    """The trailer metadata of the library ``vm`` was loaded from by :func:`load_vm` (else ``None``)."""
    return getattr(vm, _METADATA_ATTR, None)


def _check_params(params: Path, record: Mapping[str, object], library: Path, given: bool) -> None:
    """Refuse the params file ``params`` unless it is the one the library's trailer ``record`` names
    (its size, then its sha256, read in blocks)."""
    if not params.is_file() and given:
        raise ValueError(f"params file {str(params)!r} does not exist")
    if not params.is_file():
        raise ValueError(f"library {str(library)!r} takes its weights from {str(params)!r}, which does not exist "
                         "(give its params file with --params)")
    size, want = params.stat().st_size, int(record.get("bytes", -1))
    if size != want:
        raise ValueError(f"params file {str(params)!r} does not belong to library {str(library)!r}: it has "
                         f"{size} bytes, the library's has {want} (truncated, or another model's)")
    with open(params, "rb") as f:
        digest = _sha256(f, 0, size).hex()
    if digest != record.get("sha256"):
        raise ValueError(f"params file {str(params)!r} does not belong to library {str(library)!r}: its sha256 "
                         "differs from the one written at compile time (damaged, or another model's)")


def _transform_weights(vm, dev, record: Mapping[str, object], params: Path) -> list:
    """Load the params file's weights to ``dev`` and run ``main_transform_params`` on them once."""
    import tvm

    try:
        loaded = tvm.runtime.load_param_dict_from_file(str(params))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"params file {str(params)!r} is not a TVM params file: {_last_line(err)}") from None
    names = [str(n) for n in record.get("names", [])]
    missing = [n for n in names if n not in loaded]
    if missing:
        raise ValueError(f"params file {str(params)!r} lacks {len(missing)} of the library's weights "
                         f"({missing[0]!r}, ...)")
    on_host = dev.dlpack_device_type() == tvm.cpu(0).dlpack_device_type()
    weights = [loaded[n] if on_host else loaded[n].copyto(dev) for n in names]
    try:
        return list(vm[TRANSFORM_FUNC](weights))
    except (RuntimeError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"params file {str(params)!r}: the library's {TRANSFORM_FUNC} failed: "
                         f"{_last_line(err)}") from None


def load_vm(path: str | os.PathLike, device: str = "cpu", *, threads: int | None = None,
            params: str | os.PathLike | None = None):
    """Load an exported library with the TVM runtime alone (no frontend, no compiler pass).

    Parameters
    ----------
    path
        A library written by ``tvm_winograd.export.export_library`` (or by TVM's ``export_library``).
    device
        ``"cpu"`` or ``"cuda"`` (the first GPU, which must exist).
    threads
        CPU worker threads (:func:`configure_threads`, for the calling thread); ``None``: the user's
        ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` if set, else every CPU this process may use.
    params
        The params file of a library compiled with separate params; ``None``: the file its trailer
        names, in the library's directory.  A library with its weights inside takes none.

    Returns
    -------
    (tvm.runtime.vm.VirtualMachine, tvm.runtime.Device)
        The library's Relax VM on ``device``, and that device (for :func:`run`).  With separate
        params the weights were transformed on ``device`` (``main_transform_params``, once) and are
        kept on the VM for :func:`run`.

    Raises
    ------
    ValueError
        One line naming ``path``, ``device``, ``threads`` or the params file: the file is missing,
        damaged or truncated (:func:`check_library`), not loadable, not a Relax VM executable, or no
        CUDA GPU is visible; the params file is missing, is not the one the library was compiled
        with (size or sha256), or is given for a library that has its weights inside.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    path = Path(path)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not 'cpu' or 'cuda'")
    if threads is not None and threads < 1:
        raise ValueError(f"threads {threads} must be at least 1")
    if not path.is_file():
        raise ValueError(f"library {str(path)!r} does not exist")
    metadata = check_library(path)
    record = metadata.get("params") if metadata else None
    if params is not None and record is None:
        raise ValueError(f"library {str(path)!r} has its weights inside: it takes no params file "
                         f"(got {str(params)!r})")
    params_file = None
    if record is not None:
        params_file = Path(params) if params is not None else path.parent / str(record["file"])
        _check_params(params_file, record, path, given=params is not None)
    try:
        rt_mod = tvm.runtime.load_module(str(path))
    except (RuntimeError, ValueError, OSError) as err:  # TVM raises its own error types for a bad file
        raise ValueError(f"cannot load library {str(path)!r}: {_last_line(err)}") from None
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if device == "cuda" and not dev.exist:
        raise ValueError("device 'cuda': no CUDA GPU is visible on this machine")
    try:
        vm = VirtualMachine(rt_mod, dev)
    except (RuntimeError, ValueError, AttributeError) as err:
        raise ValueError(f"library {str(path)!r} is not a Relax VM executable: {_last_line(err)}") from None
    setattr(vm, _METADATA_ATTR, metadata)
    configure_threads(threads)  # before the first parallel call: the weight transforms below
    setattr(vm, _WEIGHTS_ATTR, [] if record is None else _transform_weights(vm, dev, record, params_file))
    return vm, dev


def input_names(vm, func: str = "main") -> list[str]:
    """The names of ``func``'s inputs (for ``main`` of a library with separate params: without the
    transformed weights :func:`load_vm` passes after them)."""
    arity = vm._get_function_arity(func)
    bound = len(getattr(vm, _WEIGHTS_ATTR, None) or []) if func == "main" else 0
    return [vm._get_function_param_name(func, i) for i in range(arity - bound)]


def _describe(dtype: str, shape: Sequence[object]) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def check_inputs(signature: Sequence[Mapping[str, object]], inputs: Mapping[str, np.ndarray]) -> None:
    """Check named numpy inputs against a signature (``[{"name", "shape", "dtype"}]``, the trailer's
    ``inputs``): string dimensions are symbolic and match any size.

    Raises
    ------
    ValueError
        One line naming the input, what was given and what the model takes, e.g.
        ``input 'x' is float64[1,16,20,20]; the model takes float32[1,16,20,20]``.
    """
    for entry in signature:
        name = str(entry["name"])
        want_shape = list(entry["shape"])
        want_dtype = str(entry["dtype"])
        value = np.asarray(inputs[name])
        got_shape, got_dtype = list(value.shape), str(value.dtype)
        fits = got_dtype == want_dtype and len(got_shape) == len(want_shape) and all(
            isinstance(w, str) or int(w) == g for w, g in zip(want_shape, got_shape))
        if not fits:
            raise ValueError(f"input {name!r} is {_describe(got_dtype, got_shape)}; the model takes "
                             f"{_describe(want_dtype, want_shape)}")


def _to_numpy(value) -> list[np.ndarray]:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        out = []
        for item in value:
            out.extend(_to_numpy(item))
        return out
    return [np.asarray(value)]


def run(vm, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray], device=None,
        func: str = "main") -> list[np.ndarray]:
    """Run ``func`` of a VM on named (or positional) numpy inputs; outputs as numpy arrays.

    Inputs are checked against the signature in the library's trailer when ``vm`` came from
    :func:`load_vm` (names, dtypes, ranks and static dimensions); otherwise TVM's own argument checks
    apply and their last line is reported.

    Raises
    ------
    ValueError
        One line: unknown or missing input names (naming the model's inputs), or an input whose
        dtype/shape the model does not take.
    """
    import tvm

    device = device or tvm.cpu(0)
    names = input_names(vm, func)
    arity = len(names)
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise ValueError(f"inputs {sorted(inputs)} do not match the model's inputs {names}"
                             + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
        named = {n: np.asarray(inputs[n]) for n in names}
    else:
        ordered = list(inputs)
        if len(ordered) != arity:
            raise ValueError(f"{len(ordered)} inputs given, the model takes {arity} ({names})")
        named = {n: np.asarray(a) for n, a in zip(names, ordered)}
    metadata = library_metadata(vm)
    signature = metadata.get("inputs") if metadata and func == "main" else None
    if signature and [str(e["name"]) for e in signature] == names:
        check_inputs(signature, named)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in named.values()]
    if func == "main":
        args += getattr(vm, _WEIGHTS_ATTR, None) or []
    try:
        result = vm[func](*args)
    except (ValueError, TypeError) as err:  # the VM's argument checks (shape, dtype, rank)
        raise ValueError(", ".join(f"input {n!r} is {_describe(str(a.dtype), a.shape)}"
                                   for n, a in named.items())
                         + f": the model does not take it ({_last_line(err)})") from None
    return _to_numpy(result)


def load_and_run(path: str | os.PathLike, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                 device: str = "cpu", *, threads: int | None = None,
                 params: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Load an exported library with the TVM runtime alone (:func:`load_vm`, ``params`` its params
    file if not beside it) and run ``main`` on ``inputs``."""
    vm, dev = load_vm(path, device, threads=threads, params=params)
    return run(vm, inputs, dev)
