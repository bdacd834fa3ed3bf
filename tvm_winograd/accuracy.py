"""Error analysis of Winograd (and direct) convolution in floating point: what tests and the tuner accept.

Two models of the same computation, stage by stage (compute.py's stages and dtypes)::

    data_pack    V = B_T d B        computed in acc_dtype, stored in pack_dtype
    kernel_pack  U = G g G_T        computed in acc_dtype (or float64, rounded once), stored in pack_dtype
                                    (or in kernel_dtype: fp16 U of an fp32 layer)
    bgemm        M = sum_c U V      products and a C-term sum in acc_dtype
    inverse      Y = A_T M A        in acc_dtype
    epilogue     relu(Y + bias + residual), rounded to out_dtype

**Worst case** (:func:`error_bound`; Higham, "Accuracy and Stability of Numerical Algorithms" §3).  A
Winograd output is a sum of products ``y = sum_t prod(t)`` where every term passes through at most ``n``
rounded operations; with unit roundoff ``u`` each computed term is ``prod(t) (1 + theta_t)``,
``|theta_t| <= gamma_n = n u / (1 - n u)``, so::

    |y_hat - y| <= gamma_n * S + u_out * |y|,     S = sum_t |prod(t)|
                 = gamma_n * sum_c |A_T| [ (|G||g||G_T|) . (|B_T||d||B|) ] |A|

``S`` is computed exactly in float64 (:func:`reference.conv2d_winograd_abs`); ``n`` counts the longest path
(:func:`rounding_depth`); a narrower storage dtype of V and U adds its ``u_pack`` twice.  It is rigorous but
far from the errors seen: as a fraction of ``max|y|`` it is ~7e-5 for fp32 F(2,3) and ~1e-2 for F(6,3),
where the errors are ~1e-7-1e-6, so it cannot see a precision bug.  It stays the outer guard.

**Random rounding** (:func:`error_model`; the probabilistic analysis of Higham & Mary, SIAM J. Sci.
Comput. 2019, made per stage and per element).  Every rounding of a value ``x`` commits an independent,
zero-mean error, uniform over the rounding interval: variance ``ulp(x)^2 / 12 <= u^2 x^2 / 3`` (``RHO =
1/3``: the interval is widest at the bottom of a binade).  The variance each stage introduces is
computed from the exact float64 intermediates (:func:`reference.winograd_stages`):

* a stored value (V, U in a narrower ``pack_dtype``, the output in ``out_dtype``) is one rounding of a
  known value: ``ulp(x)^2 / 12`` exactly;
* a sum of ``n`` nonzero terms ``t_j`` in acc_dtype rounds ``n - 1`` partial sums; with random signs
  ``E[s_k^2] = sum_{j <= k} t_j^2``, which over the positions of a sequential chain (the deepest order a
  schedule can pick) averages ``D(n) = (n - 1)(n + 2) / (2n)`` times ``sum t_j^2``;
* a product by a transform constant rounds unless the constant is a power of two (``RHO u^2 t^2``), and
  the constant itself is stored with relative error ``eps_c`` (known exactly: ``eps_c^2 t^2``);
  a product of two pack values is exact when ``2 p_pack <= p_acc`` (fp16 x fp16 in fp32);
* each error then reaches the outputs through the linear stages after it, so its variance is carried
  with the squared coefficients (``A_T^2``, ``U^2``, ...).

The result is ``sigma_i``, the RMS rounding error of every output under the model, and ``gain_sd``, the
standard deviation of ``sum_i y_i err_i`` (computed by the adjoint: each rounding's coefficient in that
sum), which is zero-mean because round-to-nearest is unbiased.  :func:`assess` accepts a computed output
when, besides the worst-case bound, the RMS error, the largest error in units of ``sigma_i`` and the fitted
gain are all within what the model allows (thresholds and their justification there).  Measured on the
llvm compute over m in 2..8, r in 3, 5, 7, fp32/fp16, NCHW/NHWC: see tests/test_compute.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import activations
from .reference import conv2d_direct, conv2d_winograd_abs, to_nchw, winograd_stages
from .transforms import as_float_matrix, exact_matrices, winograd_matrices
from .workload import Padding

__all__ = [
    "FALSE_ALARM",
    "PUBLISHED_FP32",
    "RHO",
    "Assessment",
    "ErrorModel",
    "Precision",
    "assess",
    "direct_error_bound",
    "error_bound",
    "error_model",
    "relative_errors",
    "rms_limit",
    "rounding_depth",
    "unit_roundoff",
    "weight_transform_bound",
]

#: Barabasz et al. (arXiv:1803.10986), fp32 errors of F(m, 3) as quoted in TVM's winograd_util.py.
PUBLISHED_FP32 = {"direct": 4.63e-8, 2: 7.65e-8, 3: 2.35e-7, 4: 3.29e-7, 5: 6.81e-7, 6: 8.79e-7, 7: 3.71e-6, 8: 7.35e-6}

#: Variance of one rounding error per ``(u x)^2``: uniform on ``[-u|x|, u|x|]``, the widest interval.
RHO = 1.0 / 3.0

_PRECISION_BITS = {"float16": 11, "float32": 24, "float64": 53}


def unit_roundoff(dtype: str) -> float:
    """``u = 2^-p`` for a dtype with p-bit significand (round to nearest)."""
    return {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}[str(dtype)]


def rounding_depth(channels: int, m: int, r: int) -> int:
    """``n``: the most rounded operations any term of a Winograd output goes through."""
    alpha = m + r - 1
    data_transform = alpha * alpha + 1
    weight_transform = r * r + 1
    gemm = channels + 1
    inverse = alpha * alpha + 1
    return data_transform + weight_transform + gemm + inverse + 1


def error_bound(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int,
    padding: Padding,
    layout: str = "NCHW",
    acc_dtype: str = "float32",
    pack_dtype: str | None = None,
    out_dtype: str = "float32",
    points=None,
    kernel_dtype: str | None = None,
) -> np.ndarray:
    """Componentwise bound on ``|winograd(x, w) - conv(x, w)|`` for the computed (not exact) result.

    ``x`` and ``w`` are the actual (already rounded to the input dtype) inputs; the reference must be
    computed in float64 from those same values.  ``kernel_dtype``: U's storage where it is not
    ``pack_dtype``'s.
    """
    channels = x.shape[1] if layout == "NCHW" else x.shape[3]
    r = w.shape[2] if layout == "NCHW" else w.shape[0]
    n = rounding_depth(channels, m, r)
    u = unit_roundoff(acc_dtype)
    gamma = n * u / (1 - n * u)
    stored = (pack_dtype, kernel_dtype or pack_dtype)  # V, U: each stored value is one more rounding
    u_pack = sum(unit_roundoff(d) for d in stored if d not in (None, acc_dtype))
    s = conv2d_winograd_abs(x, w, m=m, padding=padding, layout=layout, points=points)
    y_abs = np.abs(conv2d_direct(x, w, padding=padding, layout=layout))
    return (gamma + u_pack) * s + unit_roundoff(out_dtype) * y_abs


def weight_transform_bound(w: np.ndarray, m: int, layout: str = "NCHW", *, acc_dtype: str = "float32",
                           points=None) -> np.ndarray:
    """Componentwise worst-case bound on a computed ``U = G g G_T`` (``(alpha, alpha, C, K)``).

    Each entry is one ``r^2``-term sum of ``G[a, i] g[i, j] G[b, j]``: on the longest path two rounded
    constants, two rounded products and ``r^2 - 1`` partial sums, so ``gamma_{r^2 + 3}`` of
    ``|G| |g| |G_T|`` (Higham §3.1), plus the rounding of the stored result."""
    w = np.asarray(w, dtype=np.float64)
    oihw = w if layout == "NCHW" else w.transpose(3, 2, 0, 1)
    r = oihw.shape[2]
    g = as_float_matrix(exact_matrices(m, r, points).G)
    terms = np.einsum("ai,kcij,bj->abck", np.abs(g), np.abs(oihw), np.abs(g), optimize=True)
    exact = np.einsum("ai,kcij,bj->abck", g, oihw, g, optimize=True)
    n, u = r * r + 3, unit_roundoff(acc_dtype)
    return n * u / (1 - n * u) * terms + u * np.abs(exact)


def direct_error_bound(x: np.ndarray, w: np.ndarray, *, padding: Padding, layout: str = "NCHW",
                       acc_dtype: str = "float32", out_dtype: str = "float32", stride=1, dilation=1,
                       groups: int = 1) -> np.ndarray:
    """Componentwise worst-case bound for direct convolution: ``gamma_{(C/groups) r^2 + 1} * conv(|x|, |w|)``
    plus the output rounding (a ``(C/groups) r^2``-term dot product per output, Higham §3.1)."""
    channels = x.shape[1] if layout == "NCHW" else x.shape[3]
    taps = w.shape[2] * w.shape[3] if layout == "NCHW" else w.shape[0] * w.shape[1]
    n = channels // groups * taps + 1
    u = unit_roundoff(acc_dtype)
    geometry = dict(padding=padding, stride=stride, dilation=dilation, groups=groups, layout=layout)
    s = conv2d_direct(np.abs(x), np.abs(w), **geometry)
    return n * u / (1 - n * u) * s + unit_roundoff(out_dtype) * np.abs(conv2d_direct(x, w, **geometry))


# --------------------------------------------------------------------------------------------------
# The random-rounding model
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """Where one convolution rounds (compute.py's dtypes) and how its kernel pack was made.

    ``kernel_pack_computed``: ``True`` when U = G g G_T was computed in ``acc_dtype`` and then stored (the
    compiled weight transform); ``False`` when it is the float64 transform rounded once to the pack dtype
    (what the verification harnesses pass).  ``separable``: the transforms are two 1-D passes (the llvm
    compute); ``False`` models one joint sum of ``nnz^2`` terms, whose longer chain can only round more.
    Inputs must be no wider than ``acc_dtype`` (their cast is then exact).
    """

    acc_dtype: str = "float32"
    pack_dtype: str | None = None  # storage of data_pack / kernel_pack; None: acc_dtype
    out_dtype: str = "float32"
    kernel_pack_computed: bool = False
    separable: bool = False
    kernel_dtype: str | None = None  # storage of kernel_pack alone (WinogradConfig.kernel_dtype); None: pack

    @property
    def pack(self) -> str:
        return self.pack_dtype or self.acc_dtype

    @property
    def kernel(self) -> str:
        """U's storage dtype."""
        return self.kernel_dtype or self.pack

    def packs_narrower(self) -> bool:
        return _PRECISION_BITS[self.pack] < _PRECISION_BITS[self.acc_dtype]

    def kernel_narrower(self) -> bool:
        return _PRECISION_BITS[self.kernel] < _PRECISION_BITS[self.acc_dtype]

    def exact_pack_products(self) -> bool:
        """A product of a U and a V value is exact in acc_dtype (fp16 x fp16 in fp32: 22 <= 24 bits;
        fp16 U x fp32 V is not)."""
        return _PRECISION_BITS[self.kernel] + _PRECISION_BITS[self.pack] <= _PRECISION_BITS[self.acc_dtype]


@dataclass(frozen=True)
class ErrorModel:
    """What a computed convolution is compared with: the float64 result and its two error models."""

    reference: np.ndarray  # float64 exact result (epilogue applied), in the layout of the inputs
    expected: np.ndarray  # reference + the known change from the transform constants rounded to acc_dtype
    bound: np.ndarray  # componentwise worst case of |computed - reference| (rigorous)
    sigma: np.ndarray  # RMS rounding error of each output under the random model
    gain_sd: float  # standard deviation of sum_i expected_i * err_i under the model
    coherent: int  # outputs one rounding reaches with fixed coefficients (a tile's m^2; 1 for direct)


def _ulp_variance(values: np.ndarray, dtype: str) -> np.ndarray:
    """Variance of the error of rounding ``values`` to ``dtype``: ``ulp^2 / 12`` (uniform error)."""
    with np.errstate(over="ignore"):
        spacing = np.spacing(np.abs(values).astype(dtype)).astype(np.float64)
    return spacing**2 / 12.0


def _chain(n: np.ndarray) -> np.ndarray:
    """``D(n) = (n - 1)(n + 2) / (2n)``: the mean number of rounded partial sums a term of a sequential
    ``n``-term sum is part of (``sum_{k=2..n} E[s_k^2] = D(n) sum_j t_j^2`` for random-sign terms of equal
    size); any other summation order has fewer."""
    n = np.asarray(n, dtype=np.float64)
    return np.where(n > 1, (n - 1) * (n + 2) / (2 * np.maximum(n, 1)), 0.0)


def _product_variance(exact: tuple, dtype: str) -> np.ndarray:
    """Per entry ``c`` of a transform matrix, per ``t^2`` of a term ``t = c x``: ``RHO u^2`` when the
    product rounds (``c`` is not a power of two), else 0.  (That ``c`` itself is stored rounded is a known,
    fixed change of the result: :func:`error_model` adds it to the expected output.)"""
    u2 = RHO * unit_roundoff(dtype) ** 2
    out = np.zeros((len(exact), len(exact[0])))
    for i, row in enumerate(exact):
        for j, c in enumerate(row):
            mag = abs(c)
            power_of_two = mag.numerator & (mag.numerator - 1) == 0 and mag.denominator & (mag.denominator - 1) == 0
            if c != 0 and not power_of_two:
                out[i, j] = u2
    return out


def _transform_variance(exact: tuple, x: np.ndarray, dtype: str, separable: bool) -> np.ndarray:
    """Variance the rounding of ``Z = T X T^T`` (over the first two axes of ``x``) in ``dtype`` commits
    to each entry of ``Z``: partial sums (``D(nnz)``) and products by the constants of ``T``."""
    t = as_float_matrix(exact)
    t2 = t * t
    pi = _product_variance(exact, dtype)
    ru2 = RHO * unit_roundoff(dtype) ** 2
    nnz = (t != 0).sum(axis=1)
    x2 = x * x
    if separable:  # R = T X (rows), then Z = R T^T: each pass is an nnz-term sum
        f = t2 * (ru2 * _chain(nnz)[:, None] + pi)
        rows2 = np.einsum("ia,ab...->ib...", t, x, optimize=True) ** 2
        return (np.einsum("ia,jb,ab...->ij...", f, t2, x2, optimize=True)
                + np.einsum("jb,ib...->ij...", f, rows2, optimize=True))
    depth = ru2 * _chain(np.multiply.outer(nnz, nnz))  # one joint sum of nnz_i * nnz_j terms
    s2 = np.einsum("ia,jb,ab...->ij...", t2, t2, x2, optimize=True)
    prods = (np.einsum("ia,jb,ab...->ij...", t2 * pi, t2, x2, optimize=True)
             + np.einsum("ia,jb,ab...->ij...", t2, t2 * pi, x2, optimize=True))
    return depth.reshape(depth.shape + (1,) * (x.ndim - 2)) * s2 + prods


def _rounded(mat: tuple, dtype: str) -> np.ndarray:
    """A transform matrix as the compute holds it: float64 from the exact value, then cast to ``dtype``."""
    return as_float_matrix(mat, dtype).astype(np.float64)


def _winograd_variances(x, w, m, padding, layout, prec: Precision, points):
    """``(conv, shift, var, gain_variance)``: the float64 convolution (NCHW), the change the rounded
    transform constants make, each output's model variance, and a function of the final output giving
    the variance of ``sum y err`` (through the adjoint: the stages' roundings are shared by outputs)."""
    acc = prec.acc_dtype
    r = w.shape[2] if layout == "NCHW" else w.shape[0]
    mats = exact_matrices(m, r, points)
    exact = winograd_stages(x, w, m=m, padding=padding, layout=layout, points=points)
    g_used = _rounded(mats.G, acc) if prec.kernel_pack_computed else as_float_matrix(mats.G)
    st = winograd_stages(x, w, m=m, padding=padding, layout=layout, points=points,
                         matrices=(_rounded(mats.A_T, acc), g_used, _rounded(mats.B_T, acc)))
    u, v, mm = st.kernel_pack, st.data_pack, st.bgemm
    # data_pack: V = B_T d B in acc, stored in pack
    var_v = _transform_variance(mats.B_T, st.tiles, acc, prec.separable)
    if prec.packs_narrower():
        var_v = var_v + _ulp_variance(v, prec.pack)
    # kernel_pack: U = G g G_T (a joint r^2-term sum in acc) then stored, or float64 rounded once
    if prec.kernel_pack_computed:
        oihw = w if layout == "NCHW" else w.transpose(3, 2, 0, 1)
        var_u = _transform_variance(mats.G, oihw.transpose(2, 3, 1, 0), acc, False)
        if prec.kernel_narrower():
            var_u = var_u + _ulp_variance(u, prec.kernel)
    else:
        var_u = _ulp_variance(u, prec.kernel)
    # bgemm: a C-term sum of U V in acc (products exact when the packs are narrow enough)
    products = 0.0 if prec.exact_pack_products() else 1.0
    uv2 = np.einsum("ijck,ijcp->ijkp", u * u, v * v, optimize=True)
    var_m_own = RHO * unit_roundoff(acc) ** 2 * (_chain(v.shape[2]) + products) * uv2
    var_m = (var_m_own + np.einsum("ijck,ijcp->ijkp", u * u, var_v, optimize=True)
             + np.einsum("ijck,ijcp->ijkp", var_u, v * v, optimize=True))
    # inverse: Y = A_T M A in acc; (m, m, K, P) -> (K, P, m, m)
    var_y_own = _transform_variance(mats.A_T, mm, acc, prec.separable).transpose(2, 3, 0, 1)
    a_t = _rounded(mats.A_T, acc)
    var_y = var_y_own + np.einsum("xi,ijkp,yj->kpxy", a_t**2, var_m, a_t**2, optimize=True)

    def gain_variance(y_nchw: np.ndarray) -> float:
        ybar = st.to_tiles(y_nchw)  # the coefficient of each Y in sum(y err) is y
        mbar = np.einsum("xi,kpxy,yj->ijkp", a_t, ybar, a_t, optimize=True)
        vbar = np.einsum("ijck,ijkp->ijcp", u, mbar, optimize=True)
        ubar = np.einsum("ijcp,ijkp->ijck", v, mbar, optimize=True)
        return float(np.sum(var_v * vbar**2) + np.sum(var_u * ubar**2) + np.sum(var_m_own * mbar**2)
                     + np.sum(var_y_own * ybar**2))

    xn, oihw = to_nchw(x, w, layout)
    shift = st.to_output(st.inverse) - exact.to_output(exact.inverse)
    return conv2d_direct(xn, oihw, padding=padding), shift, st.to_output(var_y), gain_variance


def _direct_variances(x, w, padding, layout, prec: Precision, geometry: dict):
    """Direct convolution: one ``(C/groups) r^2``-term sum per output (products exact when the inputs are
    narrow).  ``geometry``: stride, dilation and groups."""
    xn, wn = to_nchw(x, w, layout)
    terms = wn.shape[1] * wn.shape[2] * wn.shape[3]  # OIHW: I is C/groups
    in_bits = _PRECISION_BITS.get(str(x.dtype), 53)
    products = 0.0 if 2 * in_bits <= _PRECISION_BITS[prec.acc_dtype] else 1.0
    t2 = conv2d_direct(xn.astype(np.float64) ** 2, wn.astype(np.float64) ** 2, padding=padding, **geometry)
    var = RHO * unit_roundoff(prec.acc_dtype) ** 2 * (_chain(terms) + products) * t2
    conv = conv2d_direct(xn, wn, padding=padding, **geometry)
    return conv, np.zeros_like(conv), var, lambda y: float(np.sum(var * y**2))


def error_model(
    x: np.ndarray,
    w: np.ndarray,
    *,
    m: int | None,
    padding: Padding,
    layout: str = "NCHW",
    precision: Precision = Precision(),
    points=None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    relu: bool = False,
    activation: str | None = None,
    stride=1,
    dilation=1,
    groups: int = 1,
) -> ErrorModel:
    """Reference, worst-case bound and random-rounding model of ``f(conv(x, w) + bias + residual)``
    computed by Winograd F(m, r) (``m``) or directly (``m=None``) with the stages' dtypes in ``precision``;
    ``f`` is ReLU (``relu``), one of :data:`tvm_winograd.activations.ACTIVATIONS` or the identity.

    A smooth activation carries the convolution's error to first order, scaled by ``|f'(y)|`` (both
    the bound and sigma: the error is ~1e-6 relative, far inside f's linear range), relu6 at most
    unchanged (1-Lipschitz, as ReLU); each adds its own
    evaluation error ``ULP[f] u |f(y)|``: to the bound, and to sigma as if uniform over that width
    (its polynomial error need not be zero-mean, so the gain's spread gets it as a worst case,
    ``sum |y| ULP u |f(y)|``, added to its standard deviation).

    ``x``, ``w`` (OIHW for NCHW, HWIO for NHWC), ``bias`` (K,) and ``residual`` (output shape) are the
    actual inputs, in their own dtype (whether products of inputs are exact depends on it).
    ``stride``, ``dilation`` and ``groups`` (as in :func:`~tvm_winograd.reference.conv2d_direct`) are
    direct convolution's only (Winograd takes stride 1, dilation 1, one group).
    """
    prec = precision
    x64, w64 = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    geometry = dict(stride=stride, dilation=dilation, groups=groups)
    if m is None:
        conv, shift, var, gain_variance = _direct_variances(np.asarray(x), np.asarray(w), padding, layout, prec,
                                                            geometry)
        bound = direct_error_bound(x64, w64, padding=padding, layout=layout, acc_dtype=prec.acc_dtype,
                                   out_dtype=prec.acc_dtype, **geometry)
    elif geometry != dict(stride=1, dilation=1, groups=1):
        raise ValueError(f"Winograd F({m}, r) takes stride 1, dilation 1 and one group, not {geometry}")
    else:
        conv, shift, var, gain_variance = _winograd_variances(x64, w64, m, padding, layout, prec, points)
        bound = error_bound(x64, w64, m=m, padding=padding, layout=layout, acc_dtype=prec.acc_dtype,
                            pack_dtype=prec.pack, out_dtype=prec.acc_dtype, points=points,
                            kernel_dtype=prec.kernel_dtype)
    bound = _nchw(bound, layout)
    # epilogue (NCHW here): each addition rounds the running sum once in acc; the cast rounds once more
    ru2, u_acc = RHO * unit_roundoff(prec.acc_dtype) ** 2, unit_roundoff(prec.acc_dtype)
    y, expected = conv, conv + shift
    var_epi = np.zeros_like(conv)
    for addend in (None if bias is None else np.asarray(bias, np.float64)[None, :, None, None],
                   None if residual is None else _nchw(np.asarray(residual, np.float64), layout)):
        if addend is not None:
            y, expected = y + addend, expected + addend
            var_epi = var_epi + ru2 * y * y
            bound = bound + u_acc * np.abs(y)
    if relu:  # 1-Lipschitz: neither model grows
        y, expected = np.maximum(y, 0.0), np.maximum(expected, 0.0)
    act_width = np.zeros_like(y)
    if activation is not None:
        if activation not in activations.PIECEWISE_LINEAR:
            slope = activations.derivative(activation, y)
            var, var_epi, bound = var * slope**2, var_epi * slope**2, bound * slope
        y, expected = activations.apply(activation, y), activations.apply(activation, expected)
        act_width = activations.ULP[activation] * u_acc * np.abs(y)
        bound = bound + act_width
        var_epi = var_epi + act_width**2 / 3.0
    if prec.out_dtype != prec.acc_dtype:
        var_epi = var_epi + _ulp_variance(y, prec.out_dtype)
    bound = bound + unit_roundoff(prec.out_dtype) * np.abs(y)
    gain_var = gain_variance(expected) + float(np.sum(var_epi * expected**2))
    if activation is not None:  # a systematic evaluation error: its worst case, added to the spread
        gain_var = (math.sqrt(gain_var) + float(np.sum(np.abs(expected) * act_width))) ** 2
    back = (lambda a: a) if layout == "NCHW" else (lambda a: a.transpose(0, 2, 3, 1))
    return ErrorModel(back(y), back(expected), back(bound), back(np.sqrt(var + var_epi)), math.sqrt(gain_var),
                      1 if m is None else m * m)


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------
# Acceptance
# --------------------------------------------------------------------------------------------------

#: Probability, per statistic and per check, of rejecting a correct result under the model.
FALSE_ALARM = 1e-9


@dataclass(frozen=True)
class Assessment:
    """The verdict on one computed output: every statistic, its limit, and the first that failed."""

    ok: bool
    reason: str  # "" when ok
    outputs: int
    bound_ratio: float  # max |err| / worst-case bound (<= 1)
    rms_ratio: float  # sqrt(sum err^2 / sum sigma^2)
    rms_limit: float
    peak_ratio: float  # max |err| / sigma
    peak_limit: float
    gain: float  # sum(y err) / sum(y^2): the fitted relative scale error of the output
    gain_z: float  # |sum(y err)| / gain_sd
    gain_limit: float
    max_relative_error: float  # max |err| / max |y|

    @property
    def worst(self) -> float:
        """The largest statistic as a fraction of its limit: <= 1 passes."""
        return max(self.bound_ratio, self.rms_ratio / self.rms_limit, self.peak_ratio / self.peak_limit,
                   self.gain_z / self.gain_limit)


def rms_limit(n_eff: float) -> float:
    """Largest accepted ``sqrt(sum err^2 / sum sigma^2)`` for ``n_eff`` independent outputs.

    ``sum err^2`` is a quadratic form ``sum_k lambda_k z_k^2`` of (approximately, by the central limit
    theorem) Gaussian errors; Laurent & Massart (Ann. Statist. 2000, Lemma 1) give
    ``P(Q >= E Q + 2 sqrt(x sum lambda^2) + 2 x max lambda) <= exp(-x)``; with ``E Q <= sum sigma^2`` and
    ``max lambda = sum sigma^2 / n_eff``, ``Q / sum sigma^2 <= 1 + 2 sqrt(x / n_eff) + 2 x / n_eff`` with
    ``x = ln(1 / FALSE_ALARM)``: 1.05 for n_eff = 10^4, 1.15 for 10^3, 1.52 for 100.
    """
    x = math.log(1.0 / FALSE_ALARM)
    n = max(n_eff, 1e-12)
    return math.sqrt(1.0 + 2.0 * math.sqrt(x / n) + 2.0 * x / n)


def assess(got: np.ndarray, model: ErrorModel) -> Assessment:
    """Accept ``got`` if it is within the worst-case bound everywhere and consistent with the model.

    Under the model each error is a sum of independent, zero-mean, uniform (hence strictly
    sub-Gaussian: ``E exp(l e) <= exp(l^2 var / 2)``) rounding errors, so a linear statistic ``L`` has
    ``P(|L| > t sd(L)) <= 2 exp(-t^2 / 2)``.  With ``FALSE_ALARM`` the probability each test rejects a
    correct result:

    * peak: ``max_i |err_i| / sigma_i <= sqrt(2 ln(2 N / FALSE_ALARM))`` (union bound over the N outputs;
      7.2 for N = 100, 8.1 for N = 10^5): an error confined to a few outputs;
    * gain: ``|sum_i y_i err_i| / gain_sd <= sqrt(2 ln(2 / FALSE_ALARM))`` (6.5): an output scaled by
      ``1 + s``, or any error correlated with the output, once ``s`` exceeds ~6.5 sigma / (|y| sqrt(N_eff)),
      far below the per-output noise;
    * RMS: ``sqrt(sum err^2 / sum sigma^2) <= rms_limit(N_eff)``: a stage computed with fewer bits (every
      output's error grows).  The model's variances are upper estimates (each rounding at ``RHO``, sums in
      their deepest order; storage roundings exact), so the expected ratio is <= 1.
      ``N_eff = (sum sigma^2)^2 / sum sigma^4 / coherent``: the outputs' participation ratio, divided by the
      ``m^2`` outputs of a tile that each of its roundings reaches with fixed coefficients (across output
      channels and tiles the coefficients are weights and data: random signs).

    Errors are taken against ``model.expected`` (the exact result plus the known effect of the rounded
    transform constants) for the statistics, and against ``model.reference`` for the bound.
    """
    got = np.asarray(got, dtype=np.float64)
    tiny = np.finfo(np.float64).tiny
    sigma = np.maximum(model.sigma, tiny)
    finite = bool(np.all(np.isfinite(got)))
    err = np.where(np.isfinite(got), got - model.expected, np.inf)
    abs_err = np.abs(err)
    bound_ratio = float(np.max(np.abs(np.where(np.isfinite(got), got - model.reference, np.inf))
                               / np.maximum(model.bound, tiny)))
    var_sum = float(np.sum(sigma**2))
    rms_ratio = float(np.sqrt(np.sum(abs_err**2) / var_sum))
    peak_ratio = float(np.max(abs_err / sigma))
    yy = float(np.sum(model.expected**2))
    corr = float(np.sum(model.expected * err)) if finite else math.inf
    gain = corr / yy if yy > 0 else 0.0
    gain_z = abs(corr) / model.gain_sd if model.gain_sd > 0 else (0.0 if corr == 0 else math.inf)
    n = err.size
    n_eff = var_sum**2 / float(np.sum(sigma**4)) / model.coherent
    peak_limit = math.sqrt(2 * math.log(2 * n / FALSE_ALARM))
    gain_limit = math.sqrt(2 * math.log(2 / FALSE_ALARM))
    rms_max = rms_limit(n_eff)
    checks = [
        (finite, "non-finite output"),
        (bound_ratio <= 1.0, f"error {bound_ratio:.3g}x the worst-case bound"),
        (peak_ratio <= peak_limit, f"largest error {peak_ratio:.3g} sigma > {peak_limit:.3g}"),
        (rms_ratio <= rms_max, f"RMS error {rms_ratio:.3g}x the model's > {rms_max:.3g}"),
        (gain_z <= gain_limit, f"output gain off by {gain:.3g} ({gain_z:.3g} sd > {gain_limit:.3g})"),
    ]
    reason = next((why for ok, why in checks if not ok), "")
    if reason and finite:
        worst = np.unravel_index(int(np.argmax(abs_err / sigma)), err.shape)
        reason += (f"; worst output {tuple(int(i) for i in worst)}: error {abs_err[worst]:.3g}, sigma "
                   f"{sigma[worst]:.3g}, bound {model.bound[worst]:.3g}")
    scale = max(float(np.abs(model.reference).max()), tiny)
    return Assessment(not reason, reason, n, bound_ratio, rms_ratio, rms_max, peak_ratio, peak_limit, gain,
                      gain_z, gain_limit, float(abs_err.max()) / scale)


# --------------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------------

def rms_amplification(m: int, r: int) -> float:
    """2D amplification of random-sign rounding errors by F(m, r): the square of the root-sum-square row
    norm ``max_i sqrt(sum_j (A_T[i,j] |G[j,:]|_2 |B_T[j,:]|_2)^2)`` (31.3 for F(4,3), against 876 for
    the worst-case L1 norm; 1 for direct convolution)."""
    a_t, g, b_t = winograd_matrices(m, r)
    rows = [np.sqrt(sum((a_t[i, j] * np.linalg.norm(g[j]) * np.linalg.norm(b_t[j])) ** 2
                        for j in range(a_t.shape[1]))) for i in range(a_t.shape[0])]
    return float(max(rows)) ** 2


def model_tolerance(convs, scale: float, dtype: str = "float32") -> float:
    """A derived bound on ``max |output - reference|`` of a whole model computed in ``dtype``.

    ``convs``: ``(m, r, fan_in)`` per convolution (``m`` None for direct; ``fan_in`` the reduction length
    C r^2 / groups); ``scale``: the largest output magnitude.  Each convolution adds a rounding error of
    about ``eps * kappa * sqrt(fan_in)`` relative to the activation magnitude (``kappa``:
    :func:`rms_amplification`; ``sqrt(fan_in)`` the random-sign growth of the reduction); in models that
    keep activations O(1) and each layer's gain near 1 (He init, scaled residual branches, as the built-in
    models are) the layers' errors add at most linearly to the output: the bound is their sum times
    ``scale``.  Wrong results are O(1) errors, far above it."""
    eps = float(np.finfo(dtype).eps)
    return scale * sum(eps * (rms_amplification(m, r) if m is not None else 1.0) * float(np.sqrt(fan_in))
                       for m, r, fan_in in convs)


def relative_errors(y: np.ndarray, y_ref: np.ndarray) -> tuple[float, float]:
    """``(max, mean)`` of ``|y - y_ref| / max|y_ref|`` (normwise-relative, as in accuracy reports)."""
    err = np.abs(np.asarray(y, dtype=np.float64) - y_ref) / np.max(np.abs(y_ref))
    return float(err.max()), float(err.mean())


def accuracy_markdown(rows: list[dict]) -> str:
    """The rows of :func:`tvm_winograd.accuracy_report.measure_accuracy` as a markdown table."""
    lines = ["| dtype | algorithm | max rel. error | mean rel. error | published fp32 (Barabasz et al.) |",
             "|---|---|---|---|---|"]
    for row in rows:
        pub = f"{row['published']:.2e}" if row["published"] is not None else "-"
        lines.append(f"| {row['dtype']} | {row['algorithm']} | {row['max_rel']:.2e} | {row['mean_rel']:.2e} | {pub} |")
    return "\n".join(lines)
