"""Layers as functions: linear, activations, softmax, normalisation, dropout and losses.

Every op takes Tensors and returns a Tensor, computing in the input's dtype (float32 stays float32)
and on the input's device. Hot or numerically delicate ops (layer_norm, batch_norm, softmax,
log_softmax, cross_entropy, gelu) are fused: the forward keeps what the backward needs and the
backward is written out by hand, instead of recording a graph of a dozen elementwise nodes. On the CPU,
gelu (float32), layer_norm, softmax and batch_norm (batch statistics) run block by block so that their
temporaries stay in the cache (``_chunked``); their whole-array versions, the GPU's, stay beside them as
references (``*_IMPL``).
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend, distributed
from ..tensor import Tensor

__all__ = ["linear", "relu", "erf", "gelu", "softmax", "log_softmax", "layer_norm", "batch_norm",
           "dropout", "drop_path", "cross_entropy", "nll_loss", "mse_loss"]

_REDUCTIONS = ("none", "mean", "sum")


# --- linear --------------------------------------------------------------------------------------
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = x W^T + b``.  input (*, in), weight (out, in), bias (out,) -> (*, out).

    One GEMM over the flattened leading dims, X (M, in) @ W^T (in, out), and the bias added in place.
    Backward: dX = G W, dW = G^T X, db = sum_M G, each one GEMM (or one sum), skipped when not needed.
    """
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be (out_features, in_features), got shape {weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input must be (*, {weight.shape[1]}) (in_features of weight "
                         f"{weight.shape}), got shape {input.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if weight.dtype != input.dtype:
        raise ValueError(f"linear: weight dtype {weight.dtype} differs from input dtype {input.dtype}")
    x, w = input.data, weight.data
    x2 = x.reshape(-1, x.shape[-1])
    out = x2 @ w.T
    if bias is not None:
        out += bias.data
    parents = (input, weight) if bias is None else (input, weight, bias)

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ w).reshape(x.shape) if input.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None
        gb = g2.sum(axis=0) if bias is not None and bias.requires_grad else None
        return (gx, gw, gb)[:len(parents)]
    return Tensor.from_op(out.reshape(x.shape[:-1] + (w.shape[0],)), parents, backward, "linear")


# --- activations ---------------------------------------------------------------------------------
def relu(input: Tensor) -> Tensor:
    """``max(x, 0)``; the gradient is 1 where x > 0 and 0 elsewhere (0 at x = 0, as PyTorch)."""
    x = input.data
    return Tensor.from_op(input.xp.maximum(x, 0), (input,), lambda g: (g * (x > 0),), "relu")


# --- the CPU's chunked elementwise path ------------------------------------------------------------
# A chain of k NumPy ufuncs over a large array streams it through main memory k times. Run chunk by chunk
# (CHUNK elements, a few chunk-sized scratch buffers) the chain's temporaries stay in the L1/L2 cache and
# only the inputs and outputs travel: on 3.6M float32 (D1's stage-1 GELU), 24 passes take 40 ms whole
# and 14 ms chunked (1 thread). NumPy releases the GIL inside its loops, so a large array's chunks are
# also shared among ELEMENTWISE_THREADS threads (the blocks, hence the values, do not depend on the
# number of threads). CPU (NumPy) only: on CuPy whole-array kernels are the fast way and Python loops
# over chunks would only add launches.
def _l2_cache_bytes(default: int = 1 << 19, path: str = "/sys/devices/system/cpu/cpu0/cache/index2/size") -> int:
    """The first CPU's L2 cache size in bytes, from Linux's sysfs ("2048K"); ``default`` where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return default


# Elements per block: four float32 buffers of one block fill the L2 cache (2 MiB of L2: 1 << 17; 512 KiB,
# the fallback: 1 << 15), a power of two between 1 << 14 and 1 << 18. Larger blocks pay NumPy's per-call
# overhead less often: on a 2 MiB L2, 1 << 17 takes GELU from 26 to 16 ms and layer_norm from 7.2 to 3.7.
CHUNK = 1 << min(18, max(14, (_l2_cache_bytes() // 16).bit_length() - 1))
ELEMENTWISE_THREADS = min(2, os.cpu_count() or 1)
_SPLIT_MIN = 1 << 18  # elements; below this the threads' overhead outweighs the gain
_pool: tuple | None = None  # (pid, executor): a forked child makes its own (it has no pool threads)


def _split(run, n: int, size: int) -> None:
    """``run(lo, hi)`` over ``[0, n)``, cut into ELEMENTWISE_THREADS contiguous parts run in parallel when
    the work covers ``size >= _SPLIT_MIN`` elements (else one call). While the parts run, NumPy's BLAS
    runs on one thread (``_blas_single_threaded``): the parts' small matrix products would otherwise each
    wake BLAS's own threads, two threads per core fighting (fused attention: 37 ms against 15)."""
    global _pool
    threads = min(ELEMENTWISE_THREADS, n) if size >= _SPLIT_MIN else 1
    if threads < 2:
        run(0, n)
        return
    if _pool is None or _pool[0] != os.getpid() or _pool[1]._max_workers < threads - 1:
        _pool = (os.getpid(), ThreadPoolExecutor(threads - 1, thread_name_prefix="minivolo"))
    bounds = [n * i // threads for i in range(threads + 1)]
    with _blas_single_threaded():
        futures = [_pool[1].submit(run, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
        run(bounds[0], bounds[1])
        for f in futures:
            f.result()


_blas: list | None = None  # threadpoolctl's handles on the BLAS libraries loaded, found on first use


def _blas_libraries() -> list:
    """The BLAS libraries in this process as threadpoolctl controllers ([] without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # pragma: no cover - threadpoolctl is a dependency; a broken one only costs speed
            _blas = []
    return _blas


@contextlib.contextmanager
def _blas_single_threaded():
    """BLAS on one thread inside the block, its thread counts restored after (a few microseconds)."""
    libraries = _blas_libraries()
    before = [lib.get_num_threads() for lib in libraries]
    for lib in libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libraries, before):
            lib.set_num_threads(n)


def _chunked(kernel, arrays: list, rows: int | None = None, scratch: tuple = ()) -> None:
    """``kernel(b, *blocks, *buffers)`` for every block b of ``rows`` rows (CHUNK when None), along the first
    axis, of the NumPy ``arrays`` (of one length; those the kernel writes must be C-contiguous, e.g. fresh from
    ``np.empty``), with buffers of shapes (rows, *s) for s in ``scratch`` (the first array's dtype), one
    set per thread. The blocks are shared among ELEMENTWISE_THREADS threads when the arrays are large."""
    n, rows = arrays[0].shape[0], rows or CHUNK

    def run(lo, hi):
        buffers = [np.empty((min(rows, n),) + tuple(s), arrays[0].dtype) for s in scratch]
        for b in range(lo, hi):
            i, j = b * rows, min(b * rows + rows, n)
            kernel(b, *[a[i:j] for a in arrays], *[buf[:j - i] for buf in buffers])
    _split(run, -(-n // rows), arrays[0].size)


def _row_dots(a, b, out) -> None:
    """``out[i] = sum_j a[i, j] b[i, j]`` for NumPy (n, k) blocks: NumPy 2's ``vecdot`` (its dot kernel,
    1.3-2.6x faster than ``einsum`` on the blocks here), ``einsum`` on NumPy 1."""
    if _vecdot is None:
        np.einsum("ij,ij->i", a, b, out=out)
    else:
        _vecdot(a, b, out=out)


_vecdot = getattr(np, "vecdot", None)


def _erf(a):
    """``backend.erf(a)``; a large NumPy array in ELEMENTWISE_THREADS parts at once (the same values)."""
    if backend.get_array_module(a) is not np:
        return backend.erf(a)
    flat, out = a.reshape(-1), np.empty(a.shape, a.dtype)

    def run(lo, hi):
        out.reshape(-1)[lo:hi] = backend.erf(flat[lo:hi])
    _split(run, flat.size, flat.size)
    return out


def erf(input: Tensor) -> Tensor:
    """The error function ``erf(x) = 2/sqrt(pi) int_0^x exp(-t^2) dt``; d/dx = 2/sqrt(pi) exp(-x^2).

    Values from ``backend.erf`` (SciPy on the CPU, CuPy on the GPU), in the input's dtype, within 2 ulp of
    torch's in float32 too (gelu's float32 rational approximation is up to 8 ulp off near |erf| = 1: fine
    inside GELU, not as erf itself).
    """
    x = input.data
    return Tensor.from_op(_erf(x), (input,),
                          lambda g: (g * (2 / math.sqrt(math.pi)) * input.xp.exp(-x * x),), "erf")


# GELU's normal CDF in float32: Phi(x) = 1/2 + 1/2 erf(x / sqrt 2), with erf(u) ~ u P(u^2) / Q(u^2) on
# |u| <= 4 (beyond it erf(u) rounds to +-1 in float32): Eigen 3.3/3.4's 13/8-degree rational
# approximation for float (``generic_fast_erf_float`` in unsupported/Eigen/src/SpecialFunctions/
# SpecialFunctionsImpl.h; TensorFlow's float32 erf), its coefficients as published there, highest power first.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _phi_coefficients():
    """Substituting u = x / sqrt 2: Phi(x) = 1/2 + x P'(x^2) / Q'(x^2), with the power-k coefficients
    scaled by 2^-k, P' by 1 / (2 sqrt 2) more, and both divided by Q's leading one (Q' monic: one multiply
    less). Returns (P', Q' without its leading 1, the clamp 4 sqrt 2), as float32."""
    n, m = len(_ERF_P) - 1, len(_ERF_Q) - 1
    lead = _ERF_Q[0] / 2 ** m
    p = [c / 2 ** (n - i) / (2 * math.sqrt(2)) / lead for i, c in enumerate(_ERF_P)]
    q = [c / 2 ** (m - i) / lead for i, c in enumerate(_ERF_Q)]
    return tuple(map(np.float32, p)), tuple(map(np.float32, q[1:])), np.float32(4 * math.sqrt(2))


_PHI_P, _PHI_Q, _PHI_CLAMP = _phi_coefficients()
_HALF, _MINUS_HALF, _INV_SQRT_2PI = np.float32(0.5), np.float32(-0.5), np.float32(1 / math.sqrt(2 * math.pi))


def _normal_cdf_float32(x, out, xc, s, q):
    """``out = Phi(x)`` for a float32 chunk, branch-free: xc = clip(x, +-4 sqrt 2), s = xc^2, Horner for
    P'(s) and Q'(s), then 1/2 + xc P'/Q' (divided first, so that a subnormal x keeps its digits). NaN
    propagates, +-inf gives 1 and 0. Absolute error < 3e-7 (test_fast_paths.py)."""
    np.clip(x, -_PHI_CLAMP, _PHI_CLAMP, out=xc)
    np.multiply(xc, xc, s)
    np.multiply(s, _PHI_P[0], out)
    out += _PHI_P[1]
    for c in _PHI_P[2:]:
        out *= s
        out += c
    np.add(s, _PHI_Q[0], q)
    for c in _PHI_Q[1:]:
        q *= s
        q += c
    out /= q
    out *= xc
    out += _HALF
    return out


def _gelu_float32(input: Tensor) -> Tensor:
    """Exact GELU of a NumPy float32 array, chunk by chunk (``_chunked``): forward y = x Phi(x) with the
    rational Phi above, keeping Phi for the backward g (Phi(x) + x exp(-x^2/2) / sqrt(2 pi))."""
    x = input.data
    out, cdf = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)

    def forward(_, x, out, cdf, xc, s, q):
        _normal_cdf_float32(x, cdf, xc, s, q)
        np.multiply(x, cdf, out)
    _chunked(forward, [a.reshape(-1) for a in (x, out, cdf)], scratch=((),) * 3)

    def backward(g):
        dx = np.empty(x.shape, np.float32)

        def grad(_, x, cdf, g, dx):
            np.multiply(x, x, dx)
            dx *= _MINUS_HALF
            np.exp(dx, dx)
            dx *= x
            dx *= _INV_SQRT_2PI                       # x phi(x)
            dx += cdf
            dx *= g
        _chunked(grad, [a.reshape(-1) for a in (x, cdf, g, dx)])
        return (dx,)
    return Tensor.from_op(out, (input,), backward, "gelu")


# Which GELU computes (approximate="none"): "reference" is x Phi(x) with backend.erf over whole arrays;
# "auto" takes _gelu_float32 for float32 NumPy arrays and the reference elsewhere (float64: SciPy's erf
# is exact to float64; the GPU: CuPy's erf kernel is fast).
GELU_IMPL = "auto"


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """GELU: ``x Phi(x)`` with the normal CDF ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``.

    approximate="tanh": ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``.
    Fused: d/dx = Phi(x) + x Phi'(x), with Phi' = exp(-x^2/2)/sqrt(2 pi) (exact) or the derivative
    of the tanh form, from the values kept by the forward. float32 on the CPU: see ``GELU_IMPL``.
    """
    x, xp = input.data, input.xp
    if approximate == "none":
        if GELU_IMPL == "auto" and xp is np and x.dtype == np.float32:
            return _gelu_float32(input)
        cdf = _erf(x * (1 / math.sqrt(2)))
        cdf += 1
        cdf *= 0.5

        def dcdf(out):                                   # Phi'(x), written into ``out``
            xp.multiply(x, x, out=out)
            out *= -0.5
            xp.exp(out, out=out)
            out *= 1 / math.sqrt(2 * math.pi)
            return out
    elif approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        t = x * x
        t *= 0.044715
        t += 1
        t *= x
        t *= k
        xp.tanh(t, out=t)                               # t = tanh(k (x + 0.044715 x^3))
        cdf = t + 1
        cdf *= 0.5

        def dcdf(out):                                   # 0.5 k (1 - t^2) (1 + 3 * 0.044715 x^2)
            xp.multiply(t, t, out=out)
            xp.subtract(1, out, out=out)
            out *= 0.5 * k
            s = x * x
            s *= 3 * 0.044715
            s += 1
            out *= s
            return out
    else:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")

    def backward(g):                                     # g * (Phi(x) + x Phi'(x)), in one buffer
        dx = dcdf(xp.empty_like(cdf))
        dx *= x
        dx += cdf
        dx *= g
        return (dx,)
    return Tensor.from_op(x * cdf, (input,), backward, "gelu")


# --- softmax -------------------------------------------------------------------------------------
def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """``y_i = exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``dim`` (shifted by the max: stable).

    Fused: dx = y * (g - sum_j g_j y_j). Over the last dim of a NumPy array: by blocks of rows
    (``SOFTMAX_IMPL``).
    """
    xp = input.xp
    if SOFTMAX_IMPL == "auto" and xp is np and input.size and input.dtype.kind == "f" and \
            dim in (-1, input.ndim - 1):
        return _softmax_rows(input)
    y = _shift_by_max(input.data, dim, copy=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=dim, keepdims=True)

    def backward(g):                                     # one buffer: gy, then (g - sum gy) * y
        gx = xp.multiply(g, y)
        s = gx.sum(axis=dim, keepdims=True)
        xp.subtract(g, s, out=gx)
        gx *= y
        return (gx,)
    return Tensor.from_op(y, (input,), backward, "softmax")


# Which softmax computes: "reference" is the whole-array softmax above; "auto" takes ``_softmax_rows``
# over the last dim of NumPy arrays (the GPU keeps the reference).
SOFTMAX_IMPL = "auto"


def _softmax_rows(input: Tensor) -> Tensor:
    """softmax over the last dim of a NumPy array as (n, k) rows, in blocks of rows that stay in the
    cache (``_chunked``); the math of ``softmax``, the row sums as matrix-vector products (BLAS), the row
    maxima of short rows (outlook attention's k = 9) as a loop over the columns."""
    k = input.shape[-1]
    x = input.data.reshape(-1, k)
    dtype, rows = x.dtype, max(1, CHUNK // k)
    ones = np.ones(k, dtype)
    y = np.empty(x.shape, dtype)

    def forward(_, x, y, m):
        if k <= 16:  # NumPy's reduce over a short last axis pays a call per row: 6x slower at k = 9
            np.maximum(x[:, :1], x[:, 1:2] if k > 1 else x[:, :1], out=m)
            for j in range(2, k):
                np.maximum(m, x[:, j:j + 1], out=m)
        else:
            np.maximum.reduce(x, axis=1, keepdims=True, out=m)
        np.subtract(x, m, y)
        np.exp(y, y)
        np.matmul(y, ones, m[:, 0])
        y /= m
    _chunked(forward, [x, y], rows, scratch=[(1,)])

    def backward(g):
        dx = np.empty(x.shape, dtype)

        def grad(_, g, y, dx, s):
            np.multiply(g, y, dx)
            np.matmul(dx, ones, s[:, 0])                    # sum_j g_j y_j
            np.subtract(g, s, dx)
            dx *= y
        _chunked(grad, [g.reshape(-1, k), y, dx], rows, scratch=[(1,)])
        return (dx.reshape(input.shape),)
    return Tensor.from_op(y.reshape(input.shape), (input,), backward, "softmax")


def _shift_by_max(x, dim: int, copy: bool = False):
    """``x - max x`` along ``dim`` (so that exp cannot overflow), a new array; an empty ``x`` as it is
    (no max), or a copy when ``copy`` (so that the caller may write into the result)."""
    if not x.size:
        return x.copy() if copy else x
    return x - x.max(axis=dim, keepdims=True)


def _log_softmax(x, dim: int):
    """log softmax of an array along ``dim``: ``x - max - log sum exp(x - max)``."""
    xp = backend.get_array_module(x)
    if not x.size:
        return x.copy()  # empty in, empty out (log of the empty sum would be -inf)
    y = _shift_by_max(x, dim)
    y -= xp.log(xp.exp(y).sum(axis=dim, keepdims=True))
    return y


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """``y_i = x_i - log sum_j exp(x_j)`` along ``dim``, computed as (x - max) - log sum exp(x - max).

    Fused: dx = g - softmax(x) * sum_j g_j, with softmax(x) = exp(y).
    """
    xp = input.xp
    y = _log_softmax(input.data, dim)

    def backward(g):                                     # one buffer: exp(y), then g - exp(y) sum g
        gx = xp.exp(y)
        gx *= g.sum(axis=dim, keepdims=True)
        xp.subtract(g, gx, out=gx)
        return (gx,)
    return Tensor.from_op(y, (input,), backward, "log_softmax")


# --- normalisation -------------------------------------------------------------------------------
def _normalize(op: str, input: Tensor, weight, bias, stat_axes: tuple, param_shape: tuple, eps: float,
               mean=None, var=None, means=None):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias``, the core of layer_norm and batch_norm.

    With ``mean``/``var`` None they are the biased statistics of x over ``stat_axes`` and the backward
    differentiates through them: with xhat = (x - mean) * rstd and gh = g * weight,
        dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))        (means over stat_axes).
    Given ``mean``/``var`` (batch_norm in eval mode) they are constants and dx = gh * rstd.
    ``means(*arrays)`` computes those means over stat_axes (default: ``a.mean(axis=stat_axes)`` each);
    SyncBatchNorm's also averages over the processes of a data-parallel run.
    weight and bias are viewed as ``param_shape`` (broadcastable to x); their gradients are
    sum(g * xhat) and sum(g) over the axes where param_shape is 1.
    Returns (y, mean, var), the statistics as arrays shaped for broadcasting.
    """
    x, xp = input.data, input.xp
    batch_stats = mean is None
    if means is None:
        def means(*arrays):
            return [a.mean(axis=stat_axes, keepdims=True) for a in arrays]
    if batch_stats:
        mean, = means(x)
    else:
        mean = xp.array(mean)  # a view of running stats may change before the backward normalises again
    xhat = x - mean                                      # x - mean, normalised in place below
    if batch_stats:
        var, = means(xp.square(xhat))
    rstd = 1 / xp.sqrt(var + eps)
    xhat *= rstd
    w = None if weight is None else weight.data.reshape(param_shape)
    b = None if bias is None else bias.data.reshape(param_shape)
    out = xhat if w is None else xhat * w
    if b is not None:
        out = out + b if out is xhat or xp.result_type(out, b) != out.dtype else xp.add(out, b, out=out)
    del xhat  # the backward normalises x again (two passes) rather than keep a copy of x alive

    def normalized():
        xhat = x - mean
        xhat *= rstd
        return xhat
    parents = [input] + [p for p in (weight, bias) if p is not None]
    param_axes = tuple(i for i, n in enumerate(param_shape) if n == 1)

    def backward(g):  # three full-size buffers: xhat, g * xhat (for dw and mean(gh * xhat)) and gx
        gx = gw = gb = None
        need_gw = weight is not None and weight.requires_grad
        xhat = normalized() if need_gw or (input.requires_grad and batch_stats) else None
        gxhat = g * xhat if xhat is not None else None
        if need_gw:
            gw = gxhat.sum(axis=param_axes).reshape(weight.shape)
        if input.requires_grad:
            gx = g * rstd if w is None else g * w
            if batch_stats:
                if w is not None:
                    gxhat *= w                                    # gh * xhat
                mean_gh, mean_ghxhat = means(g if w is None else gx, gxhat)   # gx is gh here when w is given
                gx_mean, proj = mean_gh * rstd, mean_ghxhat * rstd
                del gxhat
                if w is not None:
                    gx *= rstd                                    # rstd * gh
                xhat *= proj
                gx -= gx_mean
                gx -= xhat                                        # rstd * (gh - mean(gh) - xhat mean(gh xhat))
            elif w is not None:
                gx *= rstd
        if bias is not None and bias.requires_grad:
            gb = g.sum(axis=param_axes).reshape(bias.shape)
        return [gx] + [gp for p, gp in ((weight, gw), (bias, gb)) if p is not None]
    return Tensor.from_op(out, parents, backward, op), mean, var


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims: ``(x - E[x]) / sqrt(Var[x] + eps) * w + b``.

    input (*, *normalized_shape); weight, bias normalized_shape. Var is biased (divides by n), as
    PyTorch. Fused forward/backward (see ``_normalize``); on the CPU by blocks of rows (``LAYER_NORM_IMPL``).
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.ndim < k or input.shape[input.ndim - k:] != shape:
        raise ValueError(f"layer_norm: input must end in normalized_shape {shape}, got shape {input.shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != shape:
            raise ValueError(f"layer_norm: {name} must have normalized_shape {shape}, got {p.shape}")
    lead = input.ndim - k
    if LAYER_NORM_IMPL == "auto" and input.xp is np and input.size and input.dtype.kind == "f" and \
            all(p is None or p.dtype == input.dtype for p in (weight, bias)):
        return _layer_norm_rows(input, weight, bias, eps, math.prod(shape))
    return _normalize("layer_norm", input, weight, bias, tuple(range(lead, input.ndim)),
                      (1,) * lead + shape, eps)[0]


# Which layer_norm computes: "reference" is ``_normalize`` over whole arrays (also batch_norm's);
# "auto" takes ``_layer_norm_rows`` for NumPy arrays (the GPU keeps the whole-array reference).
LAYER_NORM_IMPL = "auto"


def _layer_norm_rows(input: Tensor, weight, bias, eps: float, c: int) -> Tensor:
    """layer_norm of a NumPy array as (n, c) rows, in blocks of rows that stay in the cache (``_chunked``);
    the same math as ``_normalize``.

    Forward keeps mean and rstd = 1 / sqrt(var + eps) per row (n, 1). With gh = g w, xc = x - mean and
    xhat = rstd xc, the backward's dx = rstd (gh - mean(gh) - xhat mean(gh xhat)) (means over the row) is
    gathered per row as rstd gh - rstd mean(gh) - rstd^3 mean(gh xc) xc, with the row means
    mean(gh) = g @ w / c and mean(gh xc) = (g xc) @ w / c; dw = sum_rows g xhat = rstd^T (g xc),
    db = sum_rows g (per block, then over the blocks' partial sums). NumPy is slow where an operand is
    broadcast over short rows, so the row sums are matrix-vector products (BLAS), the sums of squares
    ``_row_dots``, and w and b are tiled to a block's shape once.
    """
    x = input.data.reshape(-1, c)
    n, dtype = x.shape[0], x.dtype
    rows = min(n, max(1, CHUNK // c))
    w, b = ((None if p is None else np.tile(p.data.reshape(c), (rows, 1))) for p in (weight, bias))
    ones_c, ones_rows, eps_ = np.ones(c, dtype), np.ones(rows, dtype), dtype.type(eps)
    out, mean, rstd = np.empty(x.shape, dtype), np.empty((n, 1), dtype), np.empty((n, 1), dtype)

    def forward(_, x, out, mean, rstd, xhat):
        r = len(x)
        np.matmul(x, ones_c, mean[:, 0])
        mean /= c
        np.subtract(x, mean, xhat)
        _row_dots(xhat, xhat, rstd[:, 0])
        rstd /= c                                            # the biased variance
        rstd += eps_
        np.sqrt(rstd, rstd)
        np.divide(1, rstd, rstd)
        if w is None:
            np.multiply(xhat, rstd, out)
        else:
            xhat *= rstd
            np.multiply(xhat, w[:r], out)
        if b is not None:
            out += b[:r]
    _chunked(forward, [x, out, mean, rstd], rows, scratch=[(c,)])
    parents = [input] + [p for p in (weight, bias) if p is not None]

    def backward(g):
        g = g.reshape(-1, c)
        need_w, need_b = (p is not None and p.requires_grad for p in (weight, bias))
        dx = np.empty(x.shape, dtype)
        dw, db = (np.empty((-(-n // rows), c), dtype) if need else None for need in (need_w, need_b))

        wvec = ones_c if weight is None else weight.data.reshape(c)
        xc_scale, shift_scale = -rstd ** 3 / c, -rstd / c

        def grad(blk, x, g, mean, rstd, xc_scale, shift_scale, dx, xc, gxc, m, k):
            r = len(x)
            np.subtract(x, mean, xc)                           # x - mean
            np.multiply(g, xc, gxc)                            # g (x - mean)
            if need_w:
                np.matmul(rstd[:, 0], gxc, dw[blk])            # sum_rows g xhat
            if need_b:
                np.matmul(ones_rows[:r], g, db[blk])
            if not input.requires_grad:
                return
            np.matmul(gxc, wvec, m[:, 0])                      # c mean(gh (x - mean))
            np.matmul(g, wvec, k[:, 0])                        # c mean(gh)
            m *= xc_scale
            k *= shift_scale
            if w is None:
                np.multiply(g, rstd, dx)
            else:
                np.multiply(g, w[:r], dx)
                dx *= rstd                                     # rstd gh
            xc *= m
            dx += xc                                           # - rstd^3 mean(gh (x - mean)) (x - mean)
            dx += k                                            # - rstd mean(gh)
        _chunked(grad, [x, g, mean, rstd, xc_scale, shift_scale, dx], rows, scratch=[(c,), (c,), (1,), (1,)])
        grads = [dx.reshape(input.shape) if input.requires_grad else None]
        for p, part in ((weight, dw), (bias, db)):
            if p is not None:
                grads.append(None if part is None else part.sum(axis=0).reshape(p.shape))
        return grads
    return Tensor.from_op(out.reshape(input.shape), parents, backward, "layer_norm")


def batch_norm(input: Tensor, running_mean, running_var, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5, *, all_reduce=None) -> Tensor:
    """Normalise each channel over the batch and the spatial dims.  input (N, C, *) -> (N, C, *).

    training: use the batch's mean and biased variance, and (when given) update the running
    statistics in place, ``r = (1 - momentum) r + momentum s``, with the *unbiased* variance for
    running_var (exactly as PyTorch). Not training: use running_mean/running_var.
    running_* are Tensors (their ``.data`` is updated), arrays, or None; on another device than the
    input (host arrays with a GPU input) they are read there and written back in place. weight, bias: (C,).
    Fused forward/backward (see ``_normalize``). ``all_reduce`` (minivolo's, for SyncBatchNorm: e.g.
    ``distributed.all_reduce``, summing an array over the processes): the statistics and the two
    gradient means of the backward are then those of the global batch: per-process sums all-reduced
    (one call for the count, one per statistic, one in the backward) and divided by the global count.
    """
    if input.ndim < 2:
        raise ValueError(f"batch_norm: input must be (N, C, *), got shape {input.shape}")
    c = input.shape[1]
    running = [r.data if isinstance(r, Tensor) else r for r in (running_mean, running_var)]
    for name, p in (("running_mean", running[0]), ("running_var", running[1]), ("weight", weight),
                    ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},) (C of input {input.shape}), "
                             f"got {tuple(p.shape)}")
    axes = (0,) + tuple(range(2, input.ndim))
    param_shape = (1, c) + (1,) * (input.ndim - 2)
    if not training:
        if running[0] is None or running[1] is None:
            raise ValueError("batch_norm: running_mean and running_var are needed when training=False")
        stats = [backend.to_device(r, input.device).reshape(param_shape).astype(input.dtype, copy=False)
                 for r in running]
        return _normalize("batch_norm", input, weight, bias, axes, param_shape, eps, *stats)[0]
    n = input.size // c
    means = None
    if all_reduce is not None:
        n = int(all_reduce(np.array([n], np.int64))[0])  # over all processes

        def means(*arrays):
            sums = all_reduce(input.xp.stack([a.sum(axis=axes, keepdims=True) for a in arrays]))
            return list(sums / sums.dtype.type(n))
    if n <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {input.shape}")
    if BATCH_NORM_IMPL == "auto" and means is None and input.xp is np and input.dtype.kind == "f" and \
            all(p is None or p.dtype == input.dtype for p in (weight, bias)):
        out, mean, var = _batch_norm_rows(input, weight, bias, eps)
    else:
        out, mean, var = _normalize("batch_norm", input, weight, bias, axes, param_shape, eps, means=means)
    for r, stat in zip(running, (mean, var * (n / (n - 1)))):
        if r is not None:
            new = momentum * stat.reshape(c).astype(r.dtype) + (1 - momentum) * backend.to_device(r, input.device)
            r[...] = backend.to_device(new, backend.device_of(r))
    return out


# Which batch_norm computes with batch statistics: "reference" is ``_normalize`` over whole arrays; "auto"
# takes ``_batch_norm_rows`` for NumPy arrays of one process (SyncBatchNorm and the GPU keep the reference).
BATCH_NORM_IMPL = "auto"


def _batch_norm_rows(input: Tensor, weight, bias, eps: float):
    """batch_norm with batch statistics on a NumPy array (N, C, *), as (N*C, L) rows (one per sample and
    channel) in blocks of rows that stay in the cache (``_chunked``): ``_normalize``'s math in four passes
    over x instead of a dozen. With n = N*L values per channel, per-channel sums gathered from row sums
    (matrix-vector products):
        forward:  mean = sum x / n;  var = sum (x - mean)^2 / n;  y = (x - mean) * (rstd w) + b
        backward: with sg = sum g and sgx = sum g (x - mean):  db = sg, dw = rstd sgx and
                  dx = a (g - sg / n) - a rstd^2 (sgx / n) (x - mean),  a = rstd w
    (``_normalize``'s rstd (gh - mean(gh) - xhat mean(gh xhat)) with the per-channel factors gathered).
    Returns (y, mean, var), the statistics shaped (1, C, 1, ...) as ``_normalize``'s.
    """
    x = input.data
    N, C = x.shape[:2]
    x2 = x.reshape(N * C, -1)
    L, dtype = x2.shape[1], x.dtype
    n, rows = N * L, max(1, CHUNK // L)
    ones = np.ones(L, dtype)
    per_row = lambda v: np.tile(v, N)[:, None]              # noqa: E731  (C,) -> (N*C, 1), row = (sample, channel)
    per_channel = lambda v: v.reshape(N, C).sum(axis=0)     # noqa: E731  row sums (N*C,) -> (C,)
    w = None if weight is None else weight.data.reshape(C)
    mean = per_channel(x2 @ ones) / n
    mean_rows, sq = per_row(mean), np.empty(N * C, dtype)

    def squares(_, x, m, sq, xc):
        np.subtract(x, m, xc)
        _row_dots(xc, xc, sq)
    _chunked(squares, [x2, mean_rows, sq], rows, scratch=[(L,)])
    var = per_channel(sq) / n
    rstd = 1 / np.sqrt(var + dtype.type(eps))
    scale = per_row(rstd if w is None else rstd * w)
    shift = None if bias is None else per_row(bias.data.reshape(C))
    out = np.empty(x2.shape, dtype)

    def normalize(_, x, m, a, out, *b):
        np.subtract(x, m, out)
        out *= a
        if b:
            out += b[0]
    _chunked(normalize, [x2, mean_rows, scale, out] + ([] if shift is None else [shift]), rows)
    parents = [input] + [p for p in (weight, bias) if p is not None]

    def backward(g):
        g2 = g.reshape(x2.shape)
        sgx = np.empty(N * C, dtype)

        def sums(_, x, g, m, sgx, xc):
            np.subtract(x, m, xc)
            _row_dots(xc, g, sgx)
        _chunked(sums, [x2, g2, mean_rows, sgx], rows, scratch=[(L,)])
        sg, sgx = per_channel(g2 @ ones), per_channel(sgx)
        grads = [None]
        if input.requires_grad:
            a = rstd if w is None else rstd * w
            gshift, xscale = per_row(sg / n), per_row(-a * rstd * rstd * sgx / n)
            dx = np.empty(x2.shape, dtype)

            def grad(_, x, g, m, gshift, xscale, a, dx, t):
                np.subtract(x, m, dx)
                dx *= xscale
                np.subtract(g, gshift, t)
                t *= a
                dx += t
            _chunked(grad, [x2, g2, mean_rows, gshift, xscale, per_row(a), dx], rows, scratch=[(L,)])
            grads[0] = dx.reshape(x.shape)
        if weight is not None:
            grads.append((rstd * sgx).reshape(weight.shape) if weight.requires_grad else None)
        if bias is not None:
            grads.append(sg.reshape(bias.shape) if bias.requires_grad else None)
        return grads
    stat_shape = (1, C) + (1,) * (x.ndim - 2)
    out = Tensor.from_op(out.reshape(x.shape), parents, backward, "batch_norm")
    return out, mean.reshape(stat_shape), var.reshape(stat_shape)


# --- dropout -------------------------------------------------------------------------------------
def _keep_mask(x: Tensor, shape: tuple, keep_prob: float, scale: bool, global_batch: bool = False):
    """A Bernoulli(keep_prob) mask of ``shape`` in x's dtype and device, divided by keep_prob when
    ``scale``, drawn from ``backend.generator`` of x's device. ``global_batch``: drawn for the global
    batch of a data-parallel run and cut to this rank's rows (``distributed.global_batch_rows``)."""
    generator = backend.generator(x.device)
    draw = lambda s: generator.random(s, dtype=np.float32)  # noqa: E731
    keep = (distributed.global_batch_rows(draw, shape) if global_batch else draw(shape)) < keep_prob
    mask = keep.astype(x.dtype)
    if scale and keep_prob > 0:
        mask /= x.dtype.type(keep_prob)  # a NumPy scalar: no host array to copy
    return Tensor(mask, device=x.device)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity unless training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return input
    return input * _keep_mask(input, input.shape, 1 - p, scale=True)


def drop_path(x: Tensor, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Stochastic depth (as timm): drop each *sample* of the batch with probability ``drop_prob``.

    x (B, *) times a mask (B, 1, ..., 1) of Bernoulli(1 - drop_prob), divided by 1 - drop_prob when
    ``scale_by_keep``; identity unless training. In a data-parallel run the mask is drawn for the global
    batch and sliced, so that the ranks together drop the paths one process would.
    """
    if not 0 <= drop_prob <= 1:
        raise ValueError(f"drop_path: drop_prob must be in [0, 1], got {drop_prob}")
    if not training or drop_prob == 0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * _keep_mask(x, shape, 1 - drop_prob, scale_by_keep, global_batch=True)


# --- losses --------------------------------------------------------------------------------------
def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _class_distribution(op: str, input: Tensor, target, weight, ignore_index: int, smoothing: float):
    """For class-index targets: the per-element target distribution q (N, C, *), the mean's divisor,
    and the mask (N, 1, *) of the elements that count.

        q_ic = ((1 - smoothing) [c = t_i] + smoothing / C) * w_c,   zero for rows with t_i = ignore_index
        divisor = sum over non-ignored i of w_{t_i}   (their count without weights)
    """
    xp, c = input.xp, input.shape[1]
    t = target
    expected = input.shape[:1] + input.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(f"{op}: class-index target must have shape {expected} (input {input.shape} "
                         f"without the class dim), got {tuple(t.shape)}")
    valid = t != ignore_index
    t = xp.where(valid, t, 0)
    bad = ((t < 0) | (t >= c)).any()
    if xp is np and bad:  # on a GPU this check would wait for the device: a bad target makes q NaN there
        raise ValueError(f"{op}: target values must be in [0, {c}) or ignore_index={ignore_index}")
    classes = xp.arange(c).reshape((1, c) + (1,) * (input.ndim - 2))
    q = (xp.expand_dims(t, 1) == classes).astype(input.dtype)
    if smoothing:
        q *= 1 - smoothing
        q += smoothing / c
    q *= xp.expand_dims(valid, 1)
    if xp is not np:
        q += xp.where(bad, xp.nan, 0).astype(q.dtype)
    if weight is None:
        return q, valid.sum().astype(input.dtype), xp.expand_dims(valid, 1)
    w = weight.reshape(classes.shape).astype(input.dtype, copy=False)
    return q * w, (weight.astype(input.dtype, copy=False)[t] * valid).sum(), xp.expand_dims(valid, 1)


def _reduce(loss, reduction: str, divisor):
    """The per-element losses reduced, and the function mapping the output gradient back to them."""
    if reduction == "none":
        return loss, lambda g: g
    xp = backend.get_array_module(loss)
    if reduction == "sum":
        return xp.asarray(loss.sum()), lambda g: g
    # nothing counted (an empty batch, all ignored): 0/0 = NaN, as torch; on a GPU the division gives that
    # NaN by itself, and testing the divisor would wait for the device
    if not loss.size or (xp is np and not divisor):
        nan = xp.full((), math.nan, dtype=loss.dtype)
        return nan, lambda g: g * nan
    return xp.asarray(loss.sum() / divisor), lambda g: g / divisor


def cross_entropy(input: Tensor, target, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """``-sum_c q_c log softmax(x)_c`` per element, where q is the target distribution.

    input (N, C) or (N, C, d1, ...) logits (or (C,) unbatched). target either
      * class indices, integers (N,) / (N, d1, ...): q = (1 - ls) onehot(t) + ls / C, times the class
        weights w_c; elements with t = ignore_index count nothing; "mean" divides by the summed weight
        w_{t_i} of the counted elements (their number without weights), as PyTorch;
      * class probabilities, floats shaped like input: q = (p (1 - ls) + ls / C) w_c; "mean" divides
        by the number of elements N d1 ... (weights or not), as PyTorch; gradients flow to the target
        and to the weights.
    Fused: dx = r (softmax(x) sum_c q_c - q), r the reduction's factor (dx = 0 for ignored elements, also
    when all are ignored and the mean is 0/0 = NaN, as PyTorch); d target = -r (1 - ls) w log p;
    d w_c = -sum r (p (1 - ls) + ls / C) log p_c.
    """
    _check_reduction("cross_entropy", reduction)
    weight = weight if weight is None or isinstance(weight, Tensor) else Tensor(weight, device=input.device)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    target = target if isinstance(target, Tensor) else Tensor(target, device=input.device)
    if input.ndim == 1:  # unbatched: (C,) with a scalar class index or (C,) probabilities
        out = cross_entropy(input.reshape(1, -1), target.reshape((1,) + target.shape), weight,
                            ignore_index, reduction, label_smoothing)
        return out.reshape(()) if reduction == "none" else out
    if input.ndim < 2:
        raise ValueError(f"cross_entropy: input must be (N, C, *) or (C,), got shape {input.shape}")
    xp, c = input.xp, input.shape[1]
    if weight is not None and weight.shape != (c,):
        raise ValueError(f"cross_entropy: weight must have shape ({c},) (one per class), got {weight.shape}")
    w = None if weight is None else weight.data
    logp = _log_softmax(input.data, 1)
    probs = target.dtype.kind == "f"
    if probs:
        if target.shape != input.shape:
            raise ValueError(f"cross_entropy: probability target must have the input's shape {input.shape}, "
                             f"got {target.shape}")
        wb = 1 if w is None else w.reshape((1, c) + (1,) * (input.ndim - 2))
        smoothed = target.data * (1 - label_smoothing) + label_smoothing / c if label_smoothing else target.data
        q, valid = smoothed * wb, None
        divisor = xp.full((), input.size // c, dtype=input.dtype)
    else:
        q, divisor, valid = _class_distribution("cross_entropy", input, target.data, w, ignore_index,
                                                label_smoothing)
    out, back = _reduce(-(q * logp).sum(axis=1), reduction, divisor)
    # with probability targets the loss is differentiable in the target and in the class weights too
    parents = (input,) + ((target,) + (() if weight is None else (weight,)) if probs else ())

    def backward(g):
        r = xp.expand_dims(back(g), 1) if reduction == "none" else back(g)
        gx = gt = gw = None
        if input.requires_grad:
            gx = r * (xp.exp(logp) * q.sum(axis=1, keepdims=True) - q)
            if valid is not None:  # ignored elements get exactly 0 (not 0 * inf when all are ignored)
                gx = xp.where(valid, gx, xp.zeros((), gx.dtype))
        if probs and target.requires_grad:
            gt = -(1 - label_smoothing) * r * wb * logp
        if probs and weight is not None and weight.requires_grad:
            gw = -(r * smoothed * logp).sum(axis=(0,) + tuple(range(2, input.ndim)))
        return (gx, gt, gw)[:len(parents)]
    return Tensor.from_op(out, parents, backward, "cross_entropy")


def nll_loss(input: Tensor, target, weight: Tensor | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """``-w_{t_i} x_{i, t_i}`` per element for log-probabilities x (N, C, *) (or (C,) unbatched) and
    class indices t (N, *) (or a scalar).

    Elements with t = ignore_index count nothing; "mean" divides by the summed weights w_{t_i}.
    dx = -r q with q the weighted one-hot targets and r the reduction's factor (0 for ignored elements).
    """
    _check_reduction("nll_loss", reduction)
    target = target.data if isinstance(target, Tensor) else input.xp.asarray(target)
    if input.ndim == 1:  # unbatched: (C,) with a scalar class index
        out = nll_loss(input.reshape(1, -1), target.reshape((1,) + target.shape), weight, ignore_index,
                       reduction)
        return out.reshape(()) if reduction == "none" else out
    if input.ndim < 2:
        raise ValueError(f"nll_loss: input must be (N, C, *) or (C,), got shape {input.shape}")
    weight = weight.data if isinstance(weight, Tensor) else None if weight is None else input.xp.asarray(weight)
    q, divisor, valid = _class_distribution("nll_loss", input, target, weight, ignore_index, 0.0)
    out, back = _reduce(-(q * input.data).sum(axis=1), reduction, divisor)
    xp = input.xp

    def backward(g):
        r = xp.expand_dims(back(g), 1) if reduction == "none" else back(g)
        return (xp.where(valid, -r * q, xp.zeros((), q.dtype)),)
    return Tensor.from_op(out, (input,), backward, "nll_loss")


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """``(x - y)^2`` per element, reduced by mean (default), sum or none. Composed of Tensor ops."""
    _check_reduction("mse_loss", reduction)
    diff = input - target
    loss = diff * diff
    return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())
