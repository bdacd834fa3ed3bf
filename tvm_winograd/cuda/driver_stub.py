"""A stand-in for the CUDA driver library, so TVM's CUDA runtime loads on a machine without a GPU.

TVM's CUDA runtime (``libtvm_runtime_cuda.so``) links against ``libcuda.so.1``, which only an NVIDIA
driver installs.  Without it the runtime fails to load, ``tvm.runtime.enabled("cuda")`` is False and
``target.build.cuda`` *silently* returns a source-only module: nvcc is never called and an exported
library cannot be loaded.  To prove on a CPU-only machine that our schedules compile to real cubins,
tests, CI and ``cuda-check`` load a stand-in first:

* NVIDIA's link stub (``<toolkit>/lib64/stubs/libcuda.so``) when the toolkit ships it, else
* a tiny C library built here with gcc, whose every entry point returns ``CUDA_ERROR_NO_DEVICE``.

Neither pretends a GPU exists: ``tvm.cuda(0).exist`` stays False and any launch fails.  The stand-in is
used only when the real driver is absent, and only when a caller asks for it (never at import time).

What works (checked on TVM 0.27): ``ctypes.CDLL(stub, RTLD_GLOBAL)`` registers the soname
``libcuda.so.1`` with the dynamic linker, after which loading ``libtvm_runtime_cuda.so`` resolves its
``NEEDED libcuda.so.1`` to the stand-in -- this works even after ``import tvm``, so no subprocess or
``LD_LIBRARY_PATH`` is needed.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tvm

logger = logging.getLogger(__name__)

__all__ = ["CUDA_ERROR_NO_DEVICE", "STUB_SOURCE", "CudaRuntimeStatus", "ensure_cuda_runtime", "build_stub",
           "find_nvidia_stub"]

#: ``cudaError_enum::CUDA_ERROR_NO_DEVICE``: what every entry point of our stand-in returns.
CUDA_ERROR_NO_DEVICE = 100

#: The driver entry points ``libtvm_runtime_cuda.so`` imports (``nm -D --undefined-only``) plus the
#: ones ``libcudart`` looks up when it initializes.  Every one fails with CUDA_ERROR_NO_DEVICE.
STUB_SOURCE = r"""
/* tvm-winograd: CUDA driver STAND-IN for machines without a GPU.  NOT a driver: every entry point
 * returns CUDA_ERROR_NO_DEVICE (100).  It exists only so that TVM's CUDA runtime library can be
 * loaded, and nvcc-built cubins packed and exported, on CPU-only test machines. */
typedef int CUresult;
#define NO_DEVICE 100
static const char *kName = "CUDA_ERROR_NO_DEVICE";
static const char *kText = "no CUDA-capable device (tvm-winograd driver stand-in, not a real driver)";
CUresult cuInit(unsigned int flags) { return NO_DEVICE; }
CUresult cuDriverGetVersion(int *v) { if (v) *v = 0; return NO_DEVICE; }
CUresult cuDeviceGetCount(int *c) { if (c) *c = 0; return NO_DEVICE; }
CUresult cuDeviceGet(int *d, int ordinal) { return NO_DEVICE; }
CUresult cuGetProcAddress(const char *s, void **p, int v, unsigned long long f) { if (p) *p = 0; return NO_DEVICE; }
CUresult cuGetProcAddress_v2(const char *s, void **p, int v, unsigned long long f, void *st) { if (p) *p = 0; return NO_DEVICE; }
CUresult cuGetExportTable(const void **t, const void *id) { if (t) *t = 0; return NO_DEVICE; }
CUresult cuDeviceGetName(char *n, int len, int d) { if (n && len > 0) n[0] = 0; return NO_DEVICE; }
CUresult cuFuncSetAttribute(void *f, int a, int v) { return NO_DEVICE; }
CUresult cuGetErrorName(CUresult e, const char **s) { if (s) *s = kName; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { if (s) *s = kText; return 0; }
CUresult cuLaunchKernelEx(const void *c, void *f, void **a, void **e) { return NO_DEVICE; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { return NO_DEVICE; }
CUresult cuModuleLoadData(void **m, const void *image) { return NO_DEVICE; }
CUresult cuModuleUnload(void *m) { return NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *t, int dt, unsigned r, void *g, const void *d, const void *s,
                                const void *b, const void *e, int i, int sw, int l2, int oob) { return NO_DEVICE; }
"""


@dataclass(frozen=True)
class CudaRuntimeStatus:
    """How TVM's CUDA runtime was made available.

    ``driver`` is ``"system"`` (a real driver library was found: a GPU machine), ``"nvidia-stub"``
    (NVIDIA's link stub), ``"stand-in"`` (our C stub) ; ``library`` is the loaded path, if any.
    """

    driver: str
    library: str | None
    gpu_present: bool


def find_nvidia_stub() -> str | None:
    """NVIDIA's ``libcuda.so`` link stub from an installed toolkit, if any."""
    roots = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    roots += sorted(glob.glob("/usr/local/cuda*"))
    for root in roots:
        for sub in ("lib64/stubs/libcuda.so", "lib/stubs/libcuda.so", "targets/x86_64-linux/lib/stubs/libcuda.so"):
            path = os.path.join(root, sub) if root else ""
            if path and os.path.isfile(path):
                return path
    return None


def _cache_dir() -> Path:
    base = os.environ.get("TVM_WINOGRAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tvm-winograd")
    path = Path(base) / "cuda-driver-stand-in"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # read-only home: fall back to the temp dir
        path = Path(tempfile.gettempdir()) / "tvm-winograd-cuda-driver-stand-in"
        path.mkdir(parents=True, exist_ok=True)
        return path


def build_stub(directory: str | os.PathLike | None = None) -> str:
    """Compile :data:`STUB_SOURCE` with gcc into ``directory`` (a cache dir by default); returns the path.

    The library's soname is ``libcuda.so.1`` so that the dynamic linker resolves TVM's dependency to it.
    """
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise RuntimeError("building the CUDA driver stand-in needs a C compiler (gcc or cc) on PATH")
    digest = hashlib.sha256(STUB_SOURCE.encode()).hexdigest()[:12]
    out_dir = Path(directory) if directory is not None else _cache_dir() / digest
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libcuda.so.1"
    if lib.is_file():
        return str(lib)
    src = out_dir / "cuda_driver_stand_in.c"
    src.write_text(STUB_SOURCE)
    tmp = out_dir / f".libcuda.so.1.{os.getpid()}"
    cmd = [cc, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the CUDA driver stand-in failed: {' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, lib)  # atomic: concurrent test processes never see a half-written library
    return str(lib)


_STATUS: CudaRuntimeStatus | None = None


def _load_tvm_cuda_runtime() -> None:
    """Load ``libtvm_runtime_cuda.so`` (TVM tried once at import and gave up without a driver)."""
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent

    def load():
        return load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                               mode="RTLD_LOCAL")

    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load()
    except OSError as err:  # e.g. "libcudart.so.13: cannot open shared object file"
        missing = str(err).split(":")[0].strip()
        if not missing.startswith("libcudart") or not _preload_toolkit_library(missing):
            raise
        _LOADED_LIBS["tvm_runtime_cuda"] = load()


def toolkit_library_dirs() -> list[Path]:
    """The CUDA toolkit's library directories: ``$CUDA_HOME``/``$CUDA_PATH``, next to the ``nvcc`` on
    PATH (through wrapper scripts such as ``/usr/local/bin/nvcc``), and ``/usr/local/cuda``."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
        roots += glob.glob("/usr/local/cuda-*")
    dirs = []
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            d = Path(root) / sub
            if d.is_dir() and d not in dirs:
                dirs.append(d)
    return dirs


def _preload_toolkit_library(name: str) -> bool:
    """Load ``name`` (a library TVM's CUDA runtime links, e.g. ``libcudart.so.13``) from the toolkit
    when the dynamic loader's path lacks it (a machine with the toolkit but no ld.so entry for it)."""
    for d in toolkit_library_dirs():
        lib = d / name
        if lib.is_file():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            logger.info("loaded %s from the CUDA toolkit (%s)", name, d)
            return True
    return False


def ensure_cuda_runtime(allow_stand_in: bool = True) -> CudaRuntimeStatus:
    """Make TVM's CUDA runtime available in this process, with a driver stand-in if there is no driver.

    Parameters
    ----------
    allow_stand_in
        If False, only a real driver is accepted and ``RuntimeError`` is raised without one.

    Returns
    -------
    CudaRuntimeStatus
        Which driver library is in use and whether a GPU is present (never True with a stand-in).
    """
    global _STATUS
    if _STATUS is not None:
        return _STATUS
    if tvm.runtime.enabled("cuda"):
        _STATUS = CudaRuntimeStatus("system", None, bool(tvm.cuda(0).exist))
        return _STATUS
    if not allow_stand_in:
        raise RuntimeError("TVM's CUDA runtime is not loaded: libcuda.so.1 (the NVIDIA driver) was not found")
    path, kind = find_nvidia_stub(), "nvidia-stub"
    if path is None:
        path, kind = build_stub(), "stand-in"
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    _load_tvm_cuda_runtime()
    if not tvm.runtime.enabled("cuda"):
        raise RuntimeError(f"TVM's CUDA runtime still not enabled after loading the driver stand-in {path}")
    gpu = bool(tvm.cuda(0).exist)
    if gpu:  # cannot happen with a stub; refuse rather than mix a stub with a real device
        raise RuntimeError(f"a CUDA device appeared after loading the driver stand-in {path}")
    logger.info("loaded CUDA driver %s %s (no GPU: every driver call fails with CUDA_ERROR_NO_DEVICE)", kind, path)
    _STATUS = CudaRuntimeStatus(kind, path, False)
    return _STATUS
