"""The CUDA path without (or with) a GPU: driver stand-in, nvcc builds, verification, ``cuda-check``.

* :mod:`.driver_stub`  -- ``ensure_cuda_runtime()``: TVM's CUDA runtime, with a driver stand-in on a
  machine without a GPU (never pretends a device exists);
* :mod:`.build`        -- ``build_cuda`` (nvcc + ptxas report), ``export_cuda`` / ``require_cubin``
  (refuse source-only modules), ``cuda_builder`` (MetaSchedule);
* :mod:`.verify`       -- GPU verification, occupancy estimate, serial CPU execution of GPU schedules;
* :mod:`.check`        -- ``cuda_check(layers, target, samples, seed)`` -> per-layer rows (layers: specs or a
  model's ``relax_pass.conv_workloads``, passed in by the caller);
* :mod:`.measure`      -- ``require_gpu_measurement``: tuning refuses without a GPU or an RPC tracker.

Nothing here runs at import time.  This package's own names are the low-level toolchain (driver stand-in,
builds, the measurement refusal) that tuning uses; :mod:`.verify` and :mod:`.check` sit above the schedules
and are imported by their module names.
"""

from importlib import import_module

from .driver_stub import CudaRuntimeStatus, ensure_cuda_runtime

__all__ = ["CudaRuntimeStatus", "ensure_cuda_runtime", "build_cuda", "export_cuda", "require_gpu_measurement",
           "NoGPUError", "SourceOnlyModuleError"]

_LAZY = {
    "build_cuda": "build", "export_cuda": "build", "SourceOnlyModuleError": "build",
    "require_gpu_measurement": "measure", "NoGPUError": "measure",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
