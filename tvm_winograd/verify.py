"""The one numerical check of a compiled convolution against float64, shared by every caller.

The CPU tuner (:func:`tvm_winograd.tune.verification.verify_func`, which picks the records it stores) and the
CUDA CPU-emulation check (:func:`tvm_winograd.cuda.verify.check_numerics`) both

1. draw the inputs here (:func:`make_inputs`: signed standard normals from a seeded generator),
2. prepare the arguments here (:func:`prepare`: the kernel pack is the float64 weight transform rounded
   once to the pack dtype, in the function's kernel layout),
3. run the function their own way (built for llvm, or serialized GPU TIR built for llvm),
4. and judge the output here (:meth:`Case.assess`): the error model of :mod:`tvm_winograd.accuracy` for
   the stage dtypes the function *should* compute in (``config.resolved_pack_dtype`` etc.), so a
   function that stores or accumulates in a narrower dtype than intended fails, as does any result
   outside the worst-case bound or inconsistent with the random-rounding model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .accuracy import Assessment, ErrorModel, Precision, assess, error_model
from .compute import Epilogue, WinogradConfig, block_kernel_pack
from .reference import winograd_weight_transform
from .workload import Conv2dSpec

__all__ = ["Case", "make_inputs", "prepare", "run_cpu"]


def make_inputs(spec: Conv2dSpec, epilogue: Epilogue, seed: int) -> dict[str, np.ndarray]:
    """Signed standard-normal ``x``, ``w`` (and ``bias``, ``residual`` when the epilogue has them),
    rounded to the layer's dtypes, from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = {"x": rng.standard_normal(spec.input_shape).astype(spec.dtype),
           "w": rng.standard_normal(spec.weight_shape).astype(spec.dtype)}
    if epilogue.bias:
        out["bias"] = rng.standard_normal((spec.out_channels,)).astype(spec.dtype)
    if epilogue.residual:
        out["residual"] = rng.standard_normal(spec.output_shape).astype(spec.out_dtype)
    return out


@dataclass(frozen=True)
class Case:
    """One verification: the arguments to run a function on and the model to judge its output by."""

    spec: Conv2dSpec
    algorithm: str  # "winograd" | "direct"
    m: int | None
    args: tuple[np.ndarray, ...]  # in the PrimFunc's parameter order, output excluded
    model: ErrorModel

    def assess(self, got: np.ndarray) -> Assessment:
        """The verdict on ``got`` (see :func:`tvm_winograd.accuracy.assess`)."""
        return assess(got, self.model)


def prepare(spec: Conv2dSpec, epilogue: Epilogue, algorithm: str, config: WinogradConfig | None = None, *,
            seed: int = 0, kernel_block: int | None = None, pack_arg_dtype: str | None = None) -> Case:
    """The :class:`Case` for a ``direct`` function or a ``winograd`` one compiled from ``config``.

    ``kernel_block`` and ``pack_arg_dtype`` describe the function's kernel_pack parameter (its panel
    width and dtype) when they differ from what ``config`` says; the model always follows ``config``.
    """
    data = make_inputs(spec, epilogue, seed)
    if algorithm == "winograd":
        if config is None:
            raise ValueError("a winograd verification needs the WinogradConfig it was compiled from")
        pack_dtype, kernel_dtype = config.resolved_pack_dtype(spec), config.resolved_kernel_dtype(spec)
        u = winograd_weight_transform(data["w"].astype(np.float64), config.m, spec.layout, points=config.points)
        u = block_kernel_pack(u.astype(kernel_dtype), kernel_block).astype(pack_arg_dtype or kernel_dtype)
        args = [data["x"], u]
        precision = Precision(acc_dtype=config.acc_dtype, pack_dtype=pack_dtype, out_dtype=spec.out_dtype,
                              separable=config.separable, kernel_dtype=config.kernel_dtype)
        m, points = config.m, config.points
    elif algorithm == "direct":
        args = [data["x"], data["w"]]
        precision, m, points = Precision(out_dtype=spec.out_dtype), None, None
    else:
        raise ValueError(f"algorithm {algorithm!r}: expected 'winograd' or 'direct'")
    args += [data[k] for k in ("bias", "residual") if k in data]
    geometry = {} if m is not None else dict(stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    model = error_model(data["x"], data["w"], m=m, padding=spec.padding, layout=spec.layout, precision=precision,
                        points=points, bias=data.get("bias"), residual=data.get("residual"), relu=epilogue.relu,
                        activation=epilogue.activation, **geometry)
    return Case(spec, algorithm, m, tuple(np.ascontiguousarray(a) for a in args), model)


def run_cpu(function, case: Case) -> np.ndarray:
    """Call a built CPU function (``ex["main"]`` or ``module["main"]``) on the case's arguments; the
    output as a float64 array."""
    dev = tvm.cpu(0)
    tensors = [tvm.runtime.tensor(a, dev) for a in case.args]
    out = tvm.runtime.empty(case.spec.output_shape, case.spec.out_dtype, dev)
    function(*tensors, out)
    return out.numpy().astype(np.float64)
