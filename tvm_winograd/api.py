"""A small functional API on numpy arrays: ``tvm_winograd.conv2d(x, w, m=4, padding=1)``.

Each distinct (shape, dtype, m, layout, target) is built once and cached; weights are transformed by
their own compiled function (as a compiler would do ahead of time), then the main function runs.
TVM's thread pool is sized (:func:`tvm_winograd.threads.configure_threads`) before the first compiled
call of each calling thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tvm

from .compute import (Epilogue, WinogradConfig, check_kernel_dtype, kernel_dtype_for, target_config,
                      weight_transform_func, winograd_func)
from .lowering import build_tir
from .threads import configure_threads
from .schedule.default import schedule_llvm_default
from .targets import resolve_target
from .workload import Conv2dSpec, Padding, check_winograd, make_spec

__all__ = ["conv2d", "build_winograd", "CompiledWinograd"]

_LOCK = threading.Lock()
_THREADS = threading.local()  # TVM's pool settings are per calling thread


def _configure_threads_once() -> None:
    """Size TVM's pool (every allowed CPU unless TVM_NUM_THREADS is set) before this thread's first call."""
    if not getattr(_THREADS, "configured", False):
        configure_threads()
        _THREADS.configured = True


@dataclass
class CompiledWinograd:
    """The two compiled functions of one Winograd layer and the device they run on."""

    spec: Conv2dSpec
    config: WinogradConfig
    weight_fn: tvm.runtime.Module
    conv_fn: tvm.runtime.Module
    device: tvm.runtime.Device

    def transform_weight(self, w: np.ndarray) -> tvm.runtime.Tensor:
        from .compute import kernel_pack_shape

        _configure_threads_once()
        w_dev = tvm.runtime.tensor(np.ascontiguousarray(w, dtype=self.spec.dtype), self.device)
        pack = tvm.runtime.empty(kernel_pack_shape(self.spec, self.config.m, self.config.kernel_block),
                                 self.config.resolved_kernel_dtype(self.spec), self.device)
        self.weight_fn(w_dev, pack)
        return pack

    def __call__(self, x: np.ndarray, kernel_pack: tvm.runtime.Tensor) -> np.ndarray:
        _configure_threads_once()
        x_dev = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=self.spec.dtype), self.device)
        out = tvm.runtime.empty(self.spec.output_shape, self.spec.out_dtype, self.device)
        self.conv_fn(x_dev, kernel_pack, out)
        return out.numpy()


@lru_cache(maxsize=64)
def _build_cached(spec: Conv2dSpec, config: WinogradConfig, target_json: str) -> CompiledWinograd:
    target = tvm.target.Target(target_json)
    if target.kind.name != "llvm":
        raise NotImplementedError(
            f"conv2d() runs on the CPU (target 'llvm'), not {target.kind.name!r}: "
            "compile CUDA modules with tvm_winograd.export"
        )
    def build(func):
        return build_tir(schedule_llvm_default(func, spec.layout), target)

    weight_fn = build(weight_transform_func(spec, config))
    conv_fn = build(winograd_func(spec, config, Epilogue()))
    return CompiledWinograd(spec, config, weight_fn["main"], conv_fn["main"], tvm.cpu(0))


def build_winograd(spec: Conv2dSpec, config: WinogradConfig, target: object = "llvm") -> CompiledWinograd:
    """Build (or fetch from the cache) the default-scheduled Winograd functions for ``spec``."""
    check_winograd(spec, config.m)
    tgt = resolve_target(target)
    with _LOCK:
        return _build_cached(spec, config, str(tgt))


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int = 4,
    padding: Padding = 1,
    layout: str = "NCHW",
    out_dtype: str | None = None,
    acc_dtype: str = "float32",
    target: object = "llvm",
    kernel_dtype: str | None = None,
) -> np.ndarray:
    """Winograd F(m x m, r x r) convolution of numpy arrays (stride 1, dilation 1, groups 1).

    Parameters
    ----------
    x
        Input, NCHW or NHWC (``layout``), float32 or float16.
    w
        Weights, OIHW for NCHW and HWIO for NHWC, same dtype as ``x``; square ``r x r``, r in {3, 5, 7}.
    m
        Output tile size (2..8; 2, 4 and 6 are the tested ones).
    padding
        int, pair ``(h, w)``, 4-tuple ``(top, left, bottom, right)``, ``"SAME"`` or ``"VALID"``.
    out_dtype, acc_dtype
        Output dtype (default: the input dtype) and accumulation dtype of the transforms and GEMM.
    kernel_dtype
        Storage of the transformed weights U: ``None`` (the pack dtype) or ``"float16"`` (fp32 layers
        up to alpha 6, see :func:`~tvm_winograd.compute.kernel_dtype_for`).
    """
    x = np.asarray(x)
    w = np.asarray(w)
    if x.dtype != w.dtype:
        raise ValueError(f"input dtype {x.dtype} and weight dtype {w.dtype} differ")
    if x.dtype.kind != "f":
        raise NotImplementedError(f"dtype {x.dtype} is not supported: Winograd needs float16 or float32")
    spec = make_spec(x.shape, w.shape, padding=padding, layout=layout, dtype=str(x.dtype), out_dtype=out_dtype)
    check_winograd(spec, m)
    if acc_dtype not in ("float16", "float32"):
        raise ValueError(f"acc_dtype {acc_dtype!r} is not supported: use 'float32' or 'float16'")
    kind = resolve_target(target).kind.name
    check_kernel_dtype(kernel_dtype, kind)
    config = target_config(spec, m, kind, acc_dtype=acc_dtype, kernel_dtype=kernel_dtype_for(spec, m, kernel_dtype))
    compiled = build_winograd(spec, config, target)
    return compiled(x, compiled.transform_weight(w))
