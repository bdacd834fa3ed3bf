"""nvcc builds of GPU-scheduled PrimFuncs, ptxas resource reports, and proof that a module holds a cubin.

TVM compiles CUDA through the global callback ``tvm_callback_cuda_compile``.  :func:`build_cuda` swaps in
:func:`nvcc_compile` for the duration of one build: nvcc with the flags TVM's own nvcc mode uses, for the
target's exact ``sm_XX``, plus ``-Xptxas -v`` whose report (registers, spills, shared memory per kernel)
TVM would otherwise discard.  Whatever builds a module, :func:`module_cuda_images` /
:func:`file_cuda_images` find the device images in it (a fatbin's entries, or a bare ELF cubin), and
:func:`require_cubin` refuses a source-only module -- what TVM silently returns when its CUDA runtime is
not loaded (see :mod:`tvm_winograd.cuda.driver_stub`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Iterator

import tvm
import tvm_ffi
from tvm.target import Target

from ..lowering import build_tir

logger = logging.getLogger(__name__)

__all__ = [
    "CudaImage",
    "KernelResources",
    "CudaBuild",
    "SourceOnlyModuleError",
    "target_sm",
    "nvcc_compile",
    "parse_ptxas",
    "cuda_images",
    "module_cuda_images",
    "file_cuda_images",
    "require_cubin",
    "build_cuda",
    "export_cuda",
    "cuda_builder",
    "dynamic_shared_bytes",
]

_FATBIN_MAGIC = 0xBA55ED50
_EM_CUDA = 190


class SourceOnlyModuleError(RuntimeError):
    """A CUDA build produced CUDA source only (no cubin): TVM's CUDA runtime was not loaded."""


@dataclass(frozen=True)
class CudaImage:
    """One device image in a module: ``kind`` is ``"cubin"`` (ELF SASS) or ``"ptx"``; ``sm`` e.g. 80."""

    kind: str
    sm: int


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for one kernel (``-Xptxas -v``)."""

    name: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int  # static shared memory (ptxas)
    stack_bytes: int
    threads: int | None = None  # __launch_bounds__ from the generated source, when TVM emits it
    #: dynamic shared memory per block, passed at launch (ptxas cannot see it; from TVM's host code)
    dynamic_shared_bytes: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def total_shared_bytes(self) -> int:
        """Static + dynamic shared memory per block."""
        return self.shared_bytes + self.dynamic_shared_bytes


@dataclass
class CudaBuild:
    """The result of :func:`build_cuda`."""

    module: tvm.runtime.Module
    arch: str
    binary: bytes
    images: list[CudaImage]
    kernels: list[KernelResources] = field(default_factory=list)
    source: str = ""
    ptxas_log: str = ""


def target_sm(target: Target) -> str:
    """``"sm_80"`` for a CUDA target (its ``arch`` attribute)."""
    arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
    if not re.fullmatch(r"sm_\d+a?", arch):
        raise ValueError(f"target {target} is not a CUDA target with an sm_XX arch")
    return arch


# --------------------------------------------------------------------------------------------------
# nvcc
# --------------------------------------------------------------------------------------------------

#: The flags TVM 0.27's nvcc mode passes (tvm/support/nvcc.py), so our builds are the ones deployed.
_NVCC_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "--ptxas-options=-v,--warn-on-local-memory-usage",
]


def nvcc_compile(code: str, arch: str) -> tuple[bytes, str]:
    """Compile CUDA source with nvcc to a cubin for ``arch`` (``"sm_90"``); returns (cubin, ptxas log)."""
    nvcc = os.environ.get("NVCC", "nvcc")
    num = arch[3:]
    with tempfile.TemporaryDirectory(prefix="tvm_winograd_nvcc_") as tmp:
        src, out = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.cubin")
        with open(src, "w") as f:
            f.write(code)
        cmd = [nvcc, "--cubin", "-gencode", f"arch=compute_{num},code=sm_{num}", *_NVCC_FLAGS, "-o", out, src]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError(f"nvcc not found ({nvcc!r}): install the CUDA toolkit or set NVCC") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {arch}:\n{log}")
        with open(out, "rb") as f:
            return f.read(), log


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_RE_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_USED = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str, source: str = "") -> list[KernelResources]:
    """Per-kernel registers, spills and shared memory from ptxas ``-v`` output.

    ``source`` (the CUDA source) supplies each kernel's ``__launch_bounds__`` thread count.
    """
    bounds = dict((name, int(n)) for n, name in re.findall(r"__launch_bounds__\((\d+)\)\s*(\w+)\s*\(", source))
    kernels: list[KernelResources] = []
    current: dict | None = None

    def flush() -> None:
        if current is not None and "registers" in current:
            kernels.append(KernelResources(threads=bounds.get(current["name"]), **current))

    for line in log.splitlines():
        if m := _RE_ENTRY.search(line):
            flush()
            current = {"name": m.group(1), "arch": m.group(2), "registers": 0, "spill_stores": 0, "spill_loads": 0,
                       "shared_bytes": 0, "stack_bytes": 0}
        elif current is not None and (m := _RE_FRAME.search(line)):
            current["stack_bytes"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        elif current is not None and (m := _RE_USED.search(line)):
            current["registers"] = int(m.group(1))
            if s := _RE_SMEM.search(line):
                current["shared_bytes"] = int(s.group(1))
    flush()
    return kernels


@contextlib.contextmanager
def _compile_callback(arch: str, sink: list) -> Iterator[None]:
    """Route TVM's ``tvm_callback_cuda_compile`` to :func:`nvcc_compile` for ``arch`` while inside."""
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_with_report(code: str) -> bytearray:
        binary, log = nvcc_compile(str(code), arch)
        sink.append((str(code), binary, log))
        return bytearray(binary)

    with _CALLBACK_LOCK:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_with_report, override=True)
        try:
            yield
        finally:
            if previous is not None:
                tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)


_CALLBACK_LOCK = threading.RLock()


# --------------------------------------------------------------------------------------------------
# Device images inside binaries
# --------------------------------------------------------------------------------------------------

def _elf_sm(data: bytes, at: int) -> int | None:
    """The SM of a CUDA ELF at ``at`` (None if it is not one)."""
    if data[at:at + 4] != b"\x7fELF" or len(data) < at + 64 or data[at + 4] != 2:
        return None
    if struct.unpack_from("<H", data, at + 18)[0] != _EM_CUDA:
        return None
    flags = struct.unpack_from("<I", data, at + 48)[0]
    abi_version = data[at + 8]
    # CUDA 12.8+ ELF ABI v8 keeps the SM in bits 8..15; older cubins in bits 0..7.
    return (flags >> 8) & 0xFF if abi_version >= 8 else flags & 0xFF


def cuda_images(data: bytes) -> list[CudaImage]:
    """Every device image in ``data`` (a cubin, a fatbin, or a host library that embeds them)."""
    images: list[CudaImage] = []
    covered: list[tuple[int, int]] = []
    pos = data.find(struct.pack("<I", _FATBIN_MAGIC))
    while pos != -1 and pos + 16 <= len(data):
        header_size, fat_size = struct.unpack_from("<HQ", data, pos + 6)[0], struct.unpack_from("<Q", data, pos + 8)[0]
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry + 32 <= min(end, len(data)):
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            if kind in (1, 2) and entry_header >= 32:
                images.append(CudaImage("ptx" if kind == 1 else "cubin", sm))
            if entry_header == 0:
                break
            entry += entry_header + payload
        covered.append((pos, end))
        pos = data.find(struct.pack("<I", _FATBIN_MAGIC), max(end, pos + 4))
    pos = data.find(b"\x7fELF")
    while pos != -1:
        sm = _elf_sm(data, pos)
        if sm is not None and not any(a <= pos < b for a, b in covered):
            images.append(CudaImage("cubin", sm))
        pos = data.find(b"\x7fELF", pos + 4)
    return images


def _cuda_imports(module: object) -> list:
    rt = getattr(module, "mod", module)  # a relax/tirx Executable wraps the runtime module
    found, stack = [], [rt]
    while stack:
        mod = stack.pop()
        if mod.kind == "cuda":
            found.append(mod)
        stack.extend(mod.imports)
    return found


def module_cuda_images(module: object) -> list[CudaImage]:
    """Device images of a built (not yet exported) module; an empty list for a source-only module.

    TVM keeps a compiled CUDA module's image in memory only (``get_write_formats()`` is empty), so the
    module is exported to a temporary library and that file is scanned.
    """
    if not _cuda_imports(module):
        return []
    if not all(m.is_runnable() for m in _cuda_imports(module)):
        return []  # TVM's source-only fallback module (CUDAFallbackModuleNode) is never runnable
    with tempfile.TemporaryDirectory(prefix="tvm_winograd_export_") as tmp:
        path = os.path.join(tmp, "module.so")
        getattr(module, "export_library")(path)
        return file_cuda_images(path)


def file_cuda_images(path: str | os.PathLike) -> list[CudaImage]:
    """Device images in an exported library (``.so``), a (compressed) ``.tar`` of objects as
    MetaSchedule's builder exports, or a cubin/fatbin file."""
    import tarfile

    if tarfile.is_tarfile(path):
        images: list[CudaImage] = []
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member) if member.isfile() else None
                if f is not None:
                    images.extend(cuda_images(f.read()))
        return images
    with open(path, "rb") as f:
        return cuda_images(f.read())


def require_cubin(images: object, arch: str, what: str | None = None) -> list[CudaImage]:
    """Raise :class:`SourceOnlyModuleError` unless ``images`` hold a cubin for ``arch`` (``"sm_80"``).

    ``images`` is a list of :class:`CudaImage`, a path (exported library, cubin or fatbin) or a built
    module; returns the images found.
    """
    if isinstance(images, (str, os.PathLike)):
        what = what or f"library {os.fspath(images)}"
        images = file_cuda_images(images)
    elif not isinstance(images, list):
        what = what or "module"
        images = module_cuda_images(images)
    what = what or "module"
    match = re.fullmatch(r"sm_(\d+)a?", str(arch))
    if match is None:
        raise ValueError(f"arch {arch!r} is not of the form sm_XX")
    sm = int(match.group(1))
    if not any(img.kind == "cubin" and img.sm == sm for img in images):
        got = ", ".join(f"{i.kind} sm_{i.sm}" for i in images) or "no device code (CUDA source only)"
        raise SourceOnlyModuleError(
            f"{what} has no cubin for {arch} ({got}): TVM's CUDA runtime was not loaded when it was built, so "
            "nvcc never ran; call tvm_winograd.cuda.ensure_cuda_runtime() first")
    return images


# --------------------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------------------

def build_cuda(mod: tvm.IRModule | tvm.tirx.PrimFunc, target: Target) -> CudaBuild:
    """Build a GPU-scheduled module with nvcc for ``target``'s arch; refuse a source-only result.

    Loads the driver stand-in if no driver is present (:func:`~tvm_winograd.cuda.driver_stub.ensure_cuda_runtime`).
    """
    from .driver_stub import ensure_cuda_runtime

    ensure_cuda_runtime()
    arch = target_sm(target)
    if isinstance(mod, tvm.tirx.PrimFunc):
        mod = tvm.IRModule({"main": mod})
    sink: list = []
    with _compile_callback(arch, sink), target:
        built = build_tir(mod, target).mod
    if not sink:
        raise SourceOnlyModuleError(f"building for {arch} never called nvcc (TVM returned a source-only module)")
    source = "\n".join(s for s, _, _ in sink)
    binary = b"".join(b for _, b, _ in sink)
    log = "\n".join(l for _, _, l in sink)
    images = cuda_images(binary)
    require_cubin(images, arch, "nvcc output")
    if not all(m.is_runnable() for m in _cuda_imports(built)):
        raise SourceOnlyModuleError(f"build for {arch} returned a source-only CUDA module")
    kernels = parse_ptxas(log, source)
    if "extern __shared__" in source:  # a kernel with dynamic shared memory (sized at launch)
        dynamic = dynamic_shared_bytes(mod, target)
        kernels = [dataclasses.replace(k, dynamic_shared_bytes=dynamic.get(k.name, 0)) for k in kernels]
    return CudaBuild(built, arch, binary, images, kernels, source, log)


_RE_DYN_LAUNCH = re.compile(r'T\.call_ffi_kernel\("(\w+)",[^\n]*?T\.int64\((\d+)\), launch_params=\[[^\]]*'
                            r'"tirx\.use_dyn_shared_memory"\]')


def dynamic_shared_bytes(mod: tvm.IRModule, target: Target) -> dict[str, int]:
    """Dynamic shared memory bytes per kernel name, as TVM's host code passes them at launch.

    Lowers ``mod`` with TVM's default TIR pipeline for ``target`` (as ``tvm.tirx.build`` does) and reads
    the constant size argument of every kernel launch marked ``tirx.use_dyn_shared_memory``.  Raises if
    a kernel launches with dynamic shared memory of a size that is not a constant.
    """
    from tvm.tirx.build import split_host_device_mods

    host = target.host if target.host is not None else Target("llvm")
    with target:
        lowered = tvm.tirx.transform.BindTarget(target.with_host(host))(mod)
        pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
        host_mod, _ = split_host_device_mods(pipeline(lowered))
    text = host_mod.script()
    sizes = {name: int(size) for name, size in _RE_DYN_LAUNCH.findall(text)}
    launches = text.count('"tirx.use_dyn_shared_memory"]')
    if launches != len(sizes):
        raise RuntimeError(f"{launches} kernel launches use dynamic shared memory, {len(sizes)} with a constant "
                           "size: TVM's host code changed")
    return sizes


def export_cuda(module: object, path: str | os.PathLike, arch: str) -> list[CudaImage]:
    """``module.export_library(path)`` and check the library embeds a cubin for ``arch``; returns its images."""
    if not _cuda_imports(module):
        raise SourceOnlyModuleError(f"module has no CUDA part to export for {arch}")
    if not all(m.is_runnable() for m in _cuda_imports(module)):
        raise SourceOnlyModuleError(f"refusing to export a source-only CUDA module for {arch}")
    getattr(module, "export_library")(str(path))
    images = file_cuda_images(path)
    require_cubin(images, arch, f"exported library {path}")
    return images


def _build_under_target(mod: tvm.IRModule, target: Target, _params: dict | None) -> tvm.runtime.Module:
    """MetaSchedule build function for CUDA candidates, run in a builder worker process.

    * nvcc (``TVM_CUDA_COMPILE_MODE=nvcc``): NVRTC needs the ``cuda-bindings`` package;
    * under ``with target:``: nvcc needs the current target (else "No CUDA architecture");
    * TVM's CUDA runtime loaded (with the driver stand-in on a host without a GPU, e.g. when measuring
      through RPC): otherwise the build is a source-only module the remote cannot load;
    * no ``import tvm.s_tir.tensor_intrin`` (minutes per worker on a loaded machine; not needed to build).
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from .driver_stub import ensure_cuda_runtime

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    ensure_cuda_runtime()
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    with target:
        built = build_tir(mod, target).mod
    if not all(m.is_runnable() for m in _cuda_imports(built)):
        raise SourceOnlyModuleError(f"CUDA build for {target_sm(target)} returned a source-only module")
    return built


def cuda_builder(target: Target, max_workers: int | None = None, timeout_sec: float = 120.0):
    """A MetaSchedule ``LocalBuilder`` for CUDA candidates (see :func:`_build_under_target`)."""
    from tvm.s_tir import meta_schedule as ms

    target_sm(target)
    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec, f_build=_build_under_target)
