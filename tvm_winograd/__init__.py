"""tvm-winograd: Winograd minimal-filtering convolution for Apache TVM (Relax + MetaSchedule).

``tvm_winograd.conv2d`` and friends are imported lazily, so that ``tvm-winograd --help`` does not
pay for importing TVM.
"""

from __future__ import annotations

from ._version import __version__
__all__ = ["conv2d", "Conv2dSpec", "make_spec", "__version__"]

_LAZY = {"conv2d": ".api", "Conv2dSpec": ".workload", "make_spec": ".workload"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'tvm_winograd' has no attribute {name!r}")
