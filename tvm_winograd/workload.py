"""Convolution workloads: one validated description and Winograd eligibility (standard library only).

A :class:`Conv2dSpec` is made once at the boundary (API, CLI, graph pass) by :func:`make_spec`, which
validates user input and raises ``ValueError`` / ``NotImplementedError`` naming the bad value.  Code
behind the boundary trusts the spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Sequence, Union

from .transforms import ALPHA_MAX, M_RANGE

__all__ = [
    "Conv2dSpec",
    "Padding",
    "normalize_padding",
    "make_spec",
    "winograd_ineligibility",
    "check_winograd",
    "WINOGRAD_KERNELS",
    "FLOAT_DTYPES",
]

Padding = Union[int, str, Sequence[int]]

#: Kernel sizes the Winograd compute is built and tested for.
WINOGRAD_KERNELS = (3, 5, 7)
FLOAT_DTYPES = ("float16", "float32", "float64")
LAYOUTS = ("NCHW", "NHWC")


def normalize_padding(padding: Padding, kernel: tuple[int, int] = (3, 3), dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """Padding as ``(top, left, bottom, right)``, TVM's order for a 4-tuple.

    Accepts an int (all sides), a pair ``(h, w)``, a 4-tuple ``(top, left, bottom, right)``,
    ``"VALID"`` (none) or ``"SAME"`` (output size = input size at stride 1; the odd pixel goes to
    the bottom/right, as in TensorFlow and ONNX ``SAME_UPPER``).
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0, 0, 0)
        if mode == "SAME":
            th = (kernel[0] - 1) * dilation[0]
            tw = (kernel[1] - 1) * dilation[1]
            return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        raise ValueError(f"padding {padding!r} is not supported: use an int, a pair, a 4-tuple, 'SAME' or 'VALID'")
    if isinstance(padding, bool):
        raise ValueError(f"padding {padding!r} is not an integer")
    if isinstance(padding, int):
        pads: tuple[int, ...] = (padding,) * 4
    else:
        try:
            vals = tuple(padding)
        except TypeError:
            raise ValueError(f"padding {padding!r} is not an int, a pair, a 4-tuple, 'SAME' or 'VALID'") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"padding {padding!r} must hold integers")
        if len(vals) == 2:
            pads = (vals[0], vals[1], vals[0], vals[1])
        elif len(vals) == 4:
            pads = vals
        else:
            raise ValueError(f"padding {padding!r} must have 1, 2 or 4 values, not {len(vals)}")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding {padding!r} is negative")
    return tuple(int(p) for p in pads)  # type: ignore[return-value]


@dataclass(frozen=True)
class Conv2dSpec:
    """One 2D convolution (cross-correlation, as in every DL framework).

    Shapes are in the logical order N, C, H, W / K, C/groups, R, S whatever the ``layout``.
    """

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int] = (3, 3)
    padding: tuple[int, int, int, int] = (1, 1, 1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    layout: str = "NCHW"
    dtype: str = "float32"
    out_dtype: str = "float32"

    @property
    def r(self) -> int:
        return self.kernel[0]

    @property
    def out_height(self) -> int:
        eff = (self.kernel[0] - 1) * self.dilation[0] + 1
        return (self.height + self.padding[0] + self.padding[2] - eff) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        eff = (self.kernel[1] - 1) * self.dilation[1] + 1
        return (self.width + self.padding[1] + self.padding[3] - eff) // self.stride[1] + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.batch, self.in_channels, self.height, self.width
        return (n, c, h, w) if self.layout == "NCHW" else (n, h, w, c)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """OIHW for NCHW, HWIO for NHWC."""
        k, c, (kh, kw) = self.out_channels, self.in_channels // self.groups, self.kernel
        return (k, c, kh, kw) if self.layout == "NCHW" else (kh, kw, c, k)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        n, k, h, w = self.batch, self.out_channels, self.out_height, self.out_width
        return (n, k, h, w) if self.layout == "NCHW" else (n, h, w, k)

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs (2 per multiply-add): the one scale every algorithm is judged on."""
        kh, kw = self.kernel
        return 2 * self.batch * self.out_channels * (self.in_channels // self.groups) * kh * kw * self.out_height * self.out_width

    def key(self) -> str:
        """A stable, readable name for logs, files and databases."""
        pt, pl, pb, pr = self.padding
        parts = [
            f"n{self.batch}", f"c{self.in_channels}", f"h{self.height}", f"w{self.width}",
            f"k{self.out_channels}", f"r{self.kernel[0]}x{self.kernel[1]}", f"p{pt}.{pl}.{pb}.{pr}",
        ]
        if self.stride != (1, 1):
            parts.append(f"s{self.stride[0]}.{self.stride[1]}")
        if self.dilation != (1, 1):
            parts.append(f"d{self.dilation[0]}.{self.dilation[1]}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        parts += [self.layout.lower(), self.dtype]
        if self.out_dtype != self.dtype:
            parts.append(f"o{self.out_dtype}")
        return "_".join(parts)

    def with_batch(self, batch: int) -> "Conv2dSpec":
        return replace(self, batch=batch)


def _pair(value: object, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not an integer")
    if isinstance(value, int):
        return (value, value)
    try:
        vals = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} {value!r} is not an int or a pair") from None
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"{what} {value!r} is not an int or a pair of ints")
    return (int(vals[0]), int(vals[1]))


def make_spec(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    padding: Padding = 0,
    stride: object = 1,
    dilation: object = 1,
    groups: int = 1,
    layout: str = "NCHW",
    dtype: str = "float32",
    out_dtype: str | None = None,
) -> Conv2dSpec:
    """Validate a convolution given as shapes (weights OIHW for NCHW, HWIO for NHWC)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not supported: use 'NCHW' or 'NHWC'")
    dtype = str(dtype)
    out_dtype = dtype if out_dtype is None else str(out_dtype)
    for name, dt in (("dtype", dtype), ("out_dtype", out_dtype)):
        if dt not in FLOAT_DTYPES:
            raise NotImplementedError(f"{name} {dt!r} is not supported: Winograd needs float16, float32 or float64")
    input_shape = tuple(int(s) for s in input_shape)
    weight_shape = tuple(int(s) for s in weight_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input shape {input_shape} is not 4-D ({layout})")
    if len(weight_shape) != 4:
        raise ValueError(f"weight shape {weight_shape} is not 4-D ({'OIHW' if layout == 'NCHW' else 'HWIO'})")
    if any(s <= 0 for s in input_shape + weight_shape):
        raise ValueError(f"shapes must be positive: input {input_shape}, weight {weight_shape}")
    if layout == "NCHW":
        n, c, h, w = input_shape
        k, ci, kh, kw = weight_shape
    else:
        n, h, w, c = input_shape
        kh, kw, ci, k = weight_shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups {groups!r} must be a positive integer")
    if c % groups or k % groups:
        raise ValueError(f"groups={groups} must divide input channels {c} and output channels {k}")
    if ci * groups != c:
        raise ValueError(
            f"channel mismatch: input has {c} channels but weight {weight_shape} expects {ci * groups} "
            f"({ci} per group x {groups} groups)"
        )
    stride_p, dil_p = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride_p) < 1 or min(dil_p) < 1:
        raise ValueError(f"stride {stride_p} and dilation {dil_p} must be >= 1")
    pads = normalize_padding(padding, (kh, kw), dil_p)
    spec = Conv2dSpec(n, c, h, w, k, (kh, kw), pads, stride_p, dil_p, groups, layout, dtype, out_dtype)
    if spec.out_height < 1 or spec.out_width < 1:
        raise ValueError(
            f"output would be empty: input {h}x{w} with padding {pads} is smaller than the {kh}x{kw} kernel"
        )
    return spec


def winograd_ineligibility(spec: Conv2dSpec) -> tuple[type[Exception], str] | None:
    """Why Winograd cannot compute ``spec`` (exception type and message), or ``None`` if it can."""
    if spec.groups != 1:
        return NotImplementedError, f"groups={spec.groups}: Winograd here needs groups=1"
    if spec.stride != (1, 1):
        return NotImplementedError, f"stride={spec.stride}: Winograd needs stride 1"
    if spec.dilation != (1, 1):
        return NotImplementedError, f"dilation={spec.dilation}: Winograd needs dilation 1"
    kh, kw = spec.kernel
    if kh != kw:
        return NotImplementedError, f"kernel {kh}x{kw} is not square"
    if kh not in WINOGRAD_KERNELS:
        return NotImplementedError, f"kernel size r={kh} is not supported (r in {WINOGRAD_KERNELS})"
    if spec.dtype not in ("float16", "float32"):
        return NotImplementedError, f"dtype {spec.dtype!r}: Winograd is built for float16 and float32"
    return None


def check_winograd(spec: Conv2dSpec, m: int) -> None:
    """Raise ``ValueError`` / ``NotImplementedError`` naming the value if F(m, r) cannot run ``spec``."""
    why = winograd_ineligibility(spec)
    if why is not None:
        raise why[0](why[1])
    if not isinstance(m, int) or isinstance(m, bool) or m not in M_RANGE:
        raise ValueError(f"tile size m={m!r} is not supported: m must be an integer in 2..8")
    if m + spec.r - 1 > ALPHA_MAX:
        raise ValueError(f"F({m}, {spec.r}) has alpha = {m + spec.r - 1} > {ALPHA_MAX}")


def spec_from_dict(values: dict) -> Conv2dSpec:
    """The :class:`Conv2dSpec` of ``dataclasses.asdict(spec)`` read back from JSON (lists as tuples; other
    keys ignored)."""
    names = {f.name for f in dataclasses.fields(Conv2dSpec)}
    return Conv2dSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})
