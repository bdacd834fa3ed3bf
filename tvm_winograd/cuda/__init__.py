"""The CUDA path without (or with) a GPU: driver stand-in, nvcc builds, verification, ``cuda-check``.

Nothing here runs at import time; submodules import TVM's CUDA pieces lazily.
"""

from .driver_stub import CudaRuntimeStatus, ensure_cuda_runtime

__all__ = ["CudaRuntimeStatus", "ensure_cuda_runtime"]
