"""Sliding-window ops on NCHW images, with the names, arguments and numbers of ``torch.nn.functional``.

Everything here is built on two array kernels that are each other's adjoint:

    _im2col(x)  (B, C, H, W) -> (B, C, kh, kw, oh, ow)   cols[b, c, i, j, y, x] = xpad[b, c, y*sh + i*dh, x*sw + j*dw]
    _col2im(c)  (B, C, kh, kw, oh, ow) -> (B, C, H, W)   the same positions, overlapping windows summed

``_im2col`` is one copy of a strided view of the padded image; ``_col2im`` is a loop over the kh*kw kernel
offsets (``_offsets``), each adding one strided slice of the padded buffer (k^2 slice-adds, never a loop over
pixels). Since <im2col(x), y> = <x, col2im(y)>, unfold's backward is fold and fold's backward is unfold;
conv2d is im2col followed by one batched matmul (on the CPU block by block of output positions, so that
the columns stay in the cache: ``_conv2d_chunked``); the pools reduce over the same windows;
outlook attention's fused op (functional/outlook.py) runs the same two kernels on channels-last maps.
As in torch, unfold, fold, conv2d and the pools also take one unbatched sample ((C, H, W), or
(C*kh*kw, L) for fold), and a batch may be empty (B = 0: empty outputs and gradients) while no other dim may.

    unfold(input, kernel_size, dilation=1, padding=0, stride=1)              (B, C, H, W) -> (B, C*kh*kw, L)
    fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1)   (B, C*kh*kw, L) -> (B, C, H, W)
    conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
    avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None)
    max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)
    pad(input, pad, mode="constant", value=0.0)
    interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None)
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import numpy as np

from .. import backend
from ..tensor import Tensor

__all__ = ["unfold", "fold", "conv2d", "avg_pool2d", "max_pool2d", "pad", "interpolate"]


# --- arguments -------------------------------------------------------------------------------------
def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _check_input(x: Tensor, ndim: int, op: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{op}: input must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def _batched(layout: str, unbatched: str):
    """Let an op on batched input (``layout``, e.g. "(B, C, H, W)") take one ``unbatched`` sample too, as
    torch does: the sample gets a batch dim of 1 on the way in and loses it on the way out."""
    ndim = layout.count(",") + 1

    def decorate(op):
        @functools.wraps(op)
        def run(input, *args, **kwargs):
            x = _as_tensor(input)
            if x.ndim not in (ndim, ndim - 1):
                raise ValueError(f"{op.__name__}: input must be {ndim}-D {layout} or {ndim - 1}-D {unbatched}, "
                                 f"got shape {tuple(x.shape)}")
            _check_nonempty(x, op.__name__, batched=x.ndim == ndim)
            if x.ndim == ndim - 1:
                out = op(x.unsqueeze(0), *args, **kwargs)
                return out.reshape(out.shape[1:])
            return op(x, *args, **kwargs)
        return run
    return decorate


def _check_nonempty(x: Tensor, op: str, batched: bool = True) -> None:
    """As torch: a batch may be empty (B = 0 gives empty outputs and gradients), no other dim may."""
    if 0 in x.shape[int(batched):]:
        raise ValueError(f"{op}: only the batch dim may be empty (size 0), got input of shape {tuple(x.shape)}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(value, name: str = "value", op: str = "", minimum: int = 0) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as two ints, each at least ``minimum``; the one ``_pair`` of
    minivolo (layers, models and datasets import it), so that every size argument is read the same way."""
    items = (value, value) if _is_int(value) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    where = f"{op}: " if op else ""
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise ValueError(f"{where}{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{where}{name} must be {what}, got {value!r}")
    return int(items[0]), int(items[1])


class _Window(NamedTuple):
    """Where the kernel goes, per spatial dim (height, width).

    ``before`` is the padding on the top/left (where the input starts in the padded buffer), ``out`` the
    number of window positions, ``extent`` the padded buffer's size: enough for the input and for every
    window (in ceil mode the last window may run past the padding, onto implicit zeros / -inf).
    """
    kernel: tuple
    dilation: tuple
    stride: tuple
    before: tuple
    out: tuple
    extent: tuple


def _window(op: str, size: Sequence[int], kernel: tuple, dilation: tuple, stride: tuple,
            pads: Sequence[tuple], ceil_mode: bool = False) -> _Window:
    """The window geometry, with torch's output size along each dim (n in, p0/p1 padding before/after):

        o = floor((n + p0 + p1 - d*(k-1) - 1 + (s-1 if ceil_mode)) / s) + 1
        and in ceil mode the last window must start inside the input or the left padding:
        if (o-1)*s >= n + p0: o -= 1
    """
    out, extent = [], []
    for axis, n, k, d, s, (p0, p1) in zip(("height", "width"), size, kernel, dilation, stride, pads):
        span = d * (k - 1) + 1
        o = (n + p0 + p1 - span + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= n + p0:
            o -= 1
        if o < 1:
            raise ValueError(f"{op}: kernel_size {k} with dilation {d} spans {span} pixels, more than the "
                             f"padded input's {axis} {n} + {p0} + {p1} = {n + p0 + p1}")
        out.append(o)
        extent.append(max(p0 + n, (o - 1) * s + span))
    return _Window(kernel, dilation, stride, tuple(p0 for p0, _ in pads), tuple(out), tuple(extent))


def _symmetric(padding: tuple) -> tuple:
    return tuple((p, p) for p in padding)


def _sliding_window(op: str, size: Sequence[int], kernel_size, dilation, padding, stride) -> _Window:
    """The geometry of unfold/fold (and of outlook attention's windows) from the user's arguments."""
    return _window(op, size, _pair(kernel_size, "kernel_size", op, minimum=1),
                   _pair(dilation, "dilation", op, minimum=1), _pair(stride, "stride", op, minimum=1),
                   _symmetric(_pair(padding, "padding", op)))


# --- the two kernels -------------------------------------------------------------------------------
# Three layouts share them: "batch_major" cols (B, C, kh, kw, oh, ow) for unfold/fold and the pools,
# "channel_major" (C, kh, kw, B, oh, ow) for conv2d's one long matmul, and "channels_last"
# (B, oh, ow, ..., kh*kw, d) from maps (B, H, W, ..., d) for outlook attention's fused path.
def _at(axis: int, rows, columns) -> tuple:
    """The index that takes ``rows`` and ``columns`` of the spatial dims at ``axis`` and ``axis + 1``."""
    return (slice(None),) * axis + (rows, columns)


def _padded(x, window: _Window, fill: float = 0.0, axis: int = 2):
    """x, its spatial dims (H, W) at ``axis`` (2: NCHW, 1: channels-last), placed at ``window.before`` in a
    buffer filled with ``fill`` whose spatial dims are ``window.extent``."""
    (top, left), (H, W) = window.before, x.shape[axis:axis + 2]
    if (top, left) == (0, 0) and window.extent == (H, W):
        return x
    xp = backend.get_array_module(x)
    shape = x.shape[:axis] + window.extent + x.shape[axis + 2:]
    buf = xp.zeros(shape, x.dtype) if fill == 0 else xp.full(shape, fill, x.dtype)
    buf[_at(axis, slice(top, top + H), slice(left, left + W))] = x
    return buf


def _windows(buf, window: _Window, channels_last: bool = False):
    """The strided view of every window of a padded buffer (no copy):
    (B, C, H, W) -> (B, C, kh, kw, oh, ow), or channels-last (B, H, W, ..., d) -> (B, oh, ow, ..., kh, kw, d)."""
    xp = backend.get_array_module(buf)
    (dh, dw), (sh, sw) = window.dilation, window.stride
    if channels_last:
        sb, sy, sx = buf.strides[:3]
        shape = buf.shape[:1] + window.out + buf.shape[3:-1] + window.kernel + buf.shape[-1:]
        strides = (sb, sh * sy, sw * sx) + buf.strides[3:-1] + (dh * sy, dw * sx, buf.strides[-1])
    else:
        sb, sc, sy, sx = buf.strides
        shape, strides = buf.shape[:2] + window.kernel + window.out, (sb, sc, dh * sy, dw * sx, sh * sy, sw * sx)
    return xp.lib.stride_tricks.as_strided(buf, shape, strides)


def _offsets(window: _Window):
    """For each kernel offset (i, j): the rows and columns of the padded buffer it meets, one per output."""
    (kh, kw), (dh, dw), (sh, sw), (oh, ow) = window.kernel, window.dilation, window.stride, window.out
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)


def _im2col(x, window: _Window, layout: str = "batch_major"):
    """x -> cols, C-contiguous: pad, view the windows, copy once.

    batch_major:   (B, C, H, W) -> (B, C, kh, kw, oh, ow); the reshape to unfold's (B, C*kh*kw, L) is free
    channel_major: (B, C, H, W) -> (C, kh, kw, B, oh, ow); conv2d sees (G, K, B*L): one long matmul per group
    channels_last: (B, H, W, ..., d) -> (B, oh, ow, ..., kh*kw, d); the batched matmul's layout
    """
    xp = backend.get_array_module(x)
    channels_last = layout == "channels_last"
    view = _windows(_padded(x, window, axis=1 if channels_last else 2), window, channels_last)
    cols = xp.ascontiguousarray(view.transpose(1, 2, 3, 0, 4, 5) if layout == "channel_major" else view)
    if channels_last:
        return cols.reshape(cols.shape[:-3] + (window.kernel[0] * window.kernel[1], cols.shape[-1]))
    return cols


def _col2im(cols, size: tuple, window: _Window, layout: str = "batch_major"):
    """cols -> image (the adjoint of ``_im2col``, same layouts): every column added back where it came from.

    A loop over the kh*kw kernel offsets, each a strided slice-add into the padded buffer; when windows
    cannot overlap (stride >= the dilated kernel) each pixel receives at most one value, so it is stored
    rather than added. The channel_major buffer is (C, B, ...), so that cols and buffer are read and written
    in memory order. Returns a view of the buffer, cropped to ``size``: (B, C, H, W), or channels-last
    (B, H, W, ..., d).
    """
    xp = backend.get_array_module(cols)
    kw = window.kernel[1]
    if layout == "channels_last":  # cols (B, oh, ow, ..., kh*kw, d), buffer (B, H', W', ..., d)
        axis, shape = 1, cols.shape[:1] + window.extent + cols.shape[3:-2] + cols.shape[-1:]
    elif layout == "channel_major":  # cols (C, kh, kw, B, oh, ow), buffer (C, B, H', W')
        axis, shape = 2, (cols.shape[0], cols.shape[3]) + window.extent
    else:  # cols (B, C, kh, kw, oh, ow), buffer (B, C, H', W')
        axis, shape = 2, cols.shape[:2] + window.extent
    buf = xp.zeros(shape, cols.dtype)
    disjoint = all(s >= d * (k - 1) + 1 for k, d, s in zip(window.kernel, window.dilation, window.stride))
    for i, j, rows, columns in _offsets(window):
        if layout == "channels_last":
            tap = cols[..., i * kw + j, :]
        else:
            tap = cols[:, i, j] if layout == "channel_major" else cols[:, :, i, j]
        if disjoint:
            buf[_at(axis, rows, columns)] = tap
        else:
            buf[_at(axis, rows, columns)] += tap
    (top, left), (H, W) = window.before, size
    out = buf[_at(axis, slice(top, top + H), slice(left, left + W))]
    return out.transpose(1, 0, 2, 3) if layout == "channel_major" else out


# --- unfold / fold ---------------------------------------------------------------------------------
@_batched("(B, C, H, W)", "(C, H, W)")
def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Extract sliding local blocks, as ``torch.nn.functional.unfold``.

    input (B, C, H, W) -> (B, C*kh*kw, L), L = oh*ow, channel-major rows:
        out[b, c*kh*kw + i*kw + j, y*ow + x] = xpad[b, c, y*sh + i*dh, x*sw + j*dw]
    with xpad zero-padded by ``padding`` on every side and o = floor((n + 2p - d(k-1) - 1) / s) + 1.
    Backward: the gradient folds back, ``fold(g)`` (the adjoint: overlapping positions sum).
    """
    x = _as_tensor(input)
    window = _sliding_window("unfold", x.shape[2:], kernel_size, dilation, padding, stride)
    cols = _im2col(x.data, window)                                       # (B, C, kh, kw, oh, ow)
    (B, C), (kh, kw), (oh, ow) = x.shape[:2], window.kernel, window.out

    def backward(g):
        return (_col2im(g.reshape(cols.shape), x.shape[2:], window),)
    return Tensor.from_op(cols.reshape(B, C * kh * kw, oh * ow), (x,), backward, "unfold")


@_batched("(B, C*kh*kw, L)", "(C*kh*kw, L)")
def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Sum sliding local blocks into an image, as ``torch.nn.functional.fold`` (the adjoint of unfold).

    input (B, C*kh*kw, L) -> (B, C, H, W) with (H, W) = ``output_size`` and L = oh*ow the number of block
    positions unfold would give for that size:
        out[b, c, Y, X] = sum over (i, j, y, x) with y*sh + i*dh - ph = Y, x*sw + j*dw - pw = X
                          of input[b, c*kh*kw + i*kw + j, y*ow + x]
    Backward: ``unfold(g)``.
    """
    x = _as_tensor(input)
    size = _pair(output_size, "output_size", "fold", minimum=1)
    window = _sliding_window("fold", size, kernel_size, dilation, padding, stride)
    kernel = window.kernel
    B, CK, L = x.shape
    K = kernel[0] * kernel[1]
    if CK % K:
        raise ValueError(f"fold: input.shape[1] = {CK} must be divisible by the kernel_size product "
                         f"{kernel[0]}*{kernel[1]} = {K}")
    if L != window.out[0] * window.out[1]:
        raise ValueError(f"fold: input has L = {L} blocks, but output_size {size} with kernel_size {kernel}, "
                         f"dilation, padding and stride given yields {window.out[0]}*{window.out[1]} = "
                         f"{window.out[0] * window.out[1]} blocks")
    shape = (B, CK // K) + kernel + window.out

    def backward(g):
        return (_im2col(g, window).reshape(x.shape),)
    return Tensor.from_op(_col2im(x.data.reshape(shape), size, window), (x,), backward, "fold")


# --- convolution -----------------------------------------------------------------------------------
def _conv_padding(padding, kernel: tuple, dilation: tuple, stride: tuple) -> tuple:
    """int, pair, 'valid' (none) or 'same' (stride 1; the odd pixel of an even kernel goes right/bottom)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding != "same":
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"conv2d: padding='same' needs stride 1, got stride {stride}")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return _symmetric(_pair(padding, "padding", "conv2d"))


@_batched("(B, C, H, W)", "(C, H, W)")
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    input (B, C, H, W), weight (O, C/G, kh, kw), bias (O,) -> (B, O, oh, ow), G = groups:
        out[b, o, y, x] = bias[o] + sum over c in o's group, i, j of
                          weight[o, c, i, j] * xpad[b, c, y*sh + i*dh, x*sw + j*dw]
    Two kernels compute it (``CONV2D_IMPL``): the reference ``_conv2d_im2col`` (im2col, then one batched
    matmul) and, on the CPU, ``_conv2d_chunked`` (the same, by blocks of output positions whose columns
    stay in the cache). Backward: dW and dx from the same kernel, dbias = sum over b, y, x of g.
    """
    x, weight = _as_tensor(input), _as_tensor(weight)
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (O, C/groups, kh, kw), got shape {tuple(weight.shape)}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    B, C = x.shape[:2]
    O, Cg, kh, kw = weight.shape
    if Cg * groups != C:
        raise ValueError(f"conv2d: weight {tuple(weight.shape)} expects C/groups = {Cg} channels per group, "
                         f"so {Cg * groups} input channels with groups={groups}; input has {C}")
    if O % groups:
        raise ValueError(f"conv2d: weight.shape[0] = {O} output channels must be divisible by groups={groups}")
    if weight.dtype != x.dtype:
        raise ValueError(f"conv2d: weight dtype {weight.dtype} differs from input dtype {x.dtype}")
    if bias is not None:
        bias = _as_tensor(bias)
        if bias.shape != (O,) or bias.dtype != x.dtype:
            raise ValueError(f"conv2d: bias must have shape ({O},) and dtype {x.dtype}, "
                             f"got {tuple(bias.shape)} {bias.dtype}")
    stride_ = _pair(stride, "stride", "conv2d", minimum=1)
    dilation_ = _pair(dilation, "dilation", "conv2d", minimum=1)
    window = _window("conv2d", x.shape[2:], (kh, kw), dilation_, stride_,
                _conv_padding(padding, (kh, kw), dilation_, stride_))
    parents = (x, weight) if bias is None else (x, weight, bias)
    conv = _conv2d_chunked if CONV2D_IMPL == "auto" and _chunks_pay(x, window) else _conv2d_im2col
    out, grads = conv(x.data, weight.data, window, groups, x.requires_grad, weight.requires_grad)
    if bias is not None:
        out += bias.data[:, None, None]

    def backward(g):
        gx, gw = grads(g)
        gb = g.sum(axis=(0, 2, 3)) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    return Tensor.from_op(out, parents, backward, "conv2d")


# Which kernel conv2d runs: "im2col" (the readable reference, whole arrays) or "auto": the same math by
# blocks of output positions (``_conv2d_chunked``) where that pays (``_chunks_pay``), else the reference.
CONV2D_IMPL = "auto"


def _chunks_pay(x: Tensor, window: _Window) -> bool:
    """Whether ``_conv2d_chunked`` beats the reference (measured on VOLO's convolutions, 1 thread): on the
    CPU, when the windows overlap (the columns are then several times the input: D1's 3x3 stem conv and
    its 7x7 about 0.7x the reference's time forward + backward, tiny3's 3x3 0.6x) and the columns are
    large (more than 4 blocks). Disjoint windows (the patch projections, stride = kernel) make columns that are only a
    permutation of the input: the reference is as fast or faster there."""
    (B, C), (kh, kw), (oh, ow) = x.shape[:2], window.kernel, window.out
    overlap = any(s < d * (k - 1) + 1 for k, d, s in zip(window.kernel, window.dilation, window.stride))
    return x.xp is np and B > 0 and overlap and C * kh * kw * B * oh * ow > 4 * CONV_CHUNK


def _conv2d_im2col(x, w, window: _Window, G: int, need_gx: bool, need_gw: bool):
    """The reference conv2d kernel: cols = im2col(x) as (G, K, B*L), channel-major, then one batched matmul.

    x (B, C, H, W), w (O, C/G, kh, kw) -> (out (B, O, oh, ow), grads(g) -> (gx, gw)). With K = (C/G)*kh*kw
    and W viewed as (G, O/G, K):
        out[g] = W[g] @ cols[g]
        dW[g]  = g[g] @ cols[g]^T                     (sums over the batch inside the matmul)
        dcols  = W[g]^T @ g[g]  -> col2im             (only when the input needs a gradient)
    It materialises the k^2*C*B*L columns in the forward (kept for dW) and again in the backward (dcols).
    """
    xp = backend.get_array_module(x)
    (B, C), (O, Cg, kh, kw) = x.shape[:2], w.shape
    Og, K, L = O // G, Cg * kh * kw, window.out[0] * window.out[1]
    cols = _im2col(x, window, "channel_major").reshape(G, K, B * L)
    wmat = w.reshape(G, Og, K)
    out = xp.ascontiguousarray((wmat @ cols).reshape((O, B) + window.out).transpose(1, 0, 2, 3))
    if not need_gw:
        cols = None  # only dW needs the columns: do not keep them alive

    def grads(g):
        gx = gw = None
        gt = g.reshape(B, G, Og, L).transpose(1, 2, 0, 3).reshape(G, Og, B * L)  # one small copy
        if need_gx:
            dcols = (wmat.swapaxes(1, 2) @ gt).reshape((C, kh, kw, B) + window.out)
            gx = _col2im(dcols, x.shape[2:], window, "channel_major")
        if need_gw:
            gw = (gt @ cols.swapaxes(1, 2)).reshape(w.shape)
        return gx, gw
    return out, grads


def _blocks(B: int, window: _Window, C: int, Cg: int):
    """The blocks of output positions ``_conv2d_chunked`` works on, as (b0, b1, y0, y1): images b0..b1-1,
    output rows y0..y1-1, for C input channels (Cg per group). Whole images while one image's columns
    (K*oh*ow, K = C*kh*kw, or C*kw split by kernel row) fit CONV_CHUNK elements, else bands of rows of
    one image; either way one block's columns hold about CONV_CHUNK elements."""
    (kh, kw), (oh, ow) = window.kernel, window.out
    per_row = C * kw * (1 if _by_kernel_rows(window, Cg) else kh) * ow
    if per_row * oh <= CONV_CHUNK:
        n = max(1, CONV_CHUNK // (per_row * oh))
        return [(b0, min(B, b0 + n), 0, oh) for b0 in range(0, B, n)]
    r = max(1, CONV_CHUNK // per_row)
    return [(b, b + 1, y0, min(oh, y0 + r)) for b in range(B) for y0 in range(0, oh, r)]


# Elements of one block's columns in ``_conv2d_chunked`` (1 MiB of float32): small enough to stay in
# the cache between the copy that makes them and the matmul that reads them.
CONV_CHUNK = 1 << 18


def _conv2d_chunked(x, w, window: _Window, G: int, need_gx: bool, need_gw: bool):
    """The CPU's conv2d kernel: ``_conv2d_im2col``'s math, block by block of output positions
    (``_blocks``: a few images, or a band of rows of one image), so that a block's columns are made in
    a buffer that stays in the cache and are read there by the matmul, instead of the k^2*C*B*L columns
    going through main memory (for D1's 3x3 stem conv: 231 MB, twice). Per block and image, with cols
    (G, K, n) the block's columns (channel-major, as the reference's) and g (G, O/G, n) its output gradient:
        out[block] = W[g] @ cols
        dW^T      += cols @ g^T                    (the columns made again from x)
        dx: for stride 1 (and padding <= the dilated kernel's reach), the same kernel convolves the
            gradient, zero-padded, with the flipped kernel, W'[c, o, i, j] = W[o, c, kh-1-i, kw-1-j]
            (the adjoint of a stride-1 convolution); otherwise dxpad[block's windows] += col2im(W[g]^T @ g).
    With vertical stride 1 the columns are split by kernel row (``_by_kernel_rows``): cols = the kh
    row-columns stacked, so W @ cols = sum over i of W[:, :, i] @ rows_i, where rows_i are the columns
    of kernel row i: one buffer of kw shifted copies of the band's rows serves every i (rows_i starts
    i*dh rows down), about a third of the copying for a 3x3 kernel.
    Any stride, dilation, padding and groups; NumPy only (on CuPy one large matmul is the fast way).
    """
    (B, C, H, W), (O, Cg, kh, kw) = x.shape, w.shape
    Og, ow = O // G, window.out[1]
    blocks = _blocks(B, window, C, Cg)
    out = _conv_by_blocks(x, w, window, blocks, G)

    def grads(g):
        gx = gw = None
        if need_gw:  # accumulated transposed, dW^T += cols @ g^T: OpenBLAS runs that ~1.2x faster
            parts = _kernel_parts(window, Cg)
            gwt = [np.zeros((G, Cg * (rows.stop - rows.start) * kw, Og), g.dtype) for rows in parts]
            for (b0, b1, y0, y1), cols in _block_columns(x, window, blocks, G, len(parts) > 1):
                gt = g[b0:b1, :, y0:y1].reshape(b1 - b0, G, Og, -1).swapaxes(2, 3)    # (n_img, G, n, O/G)
                for acc, c in zip(gwt, cols):
                    acc += np.matmul(c, gt).sum(axis=0)
            gw = np.concatenate([a.reshape(G, Cg, -1, kw, Og) for a in gwt], axis=2)  # (G, C/G, kh, kw, O/G)
            gw = np.ascontiguousarray(gw.transpose(0, 4, 1, 2, 3)).reshape(w.shape)
        if not need_gx:
            return gx, gw
        (dh, dw), (sh, sw), (top, left) = window.dilation, window.stride, window.before
        reach = (dh * (kh - 1), dw * (kw - 1))
        pads = ((reach[0] - top, reach[0] - (window.extent[0] - top - H)),
                (reach[1] - left, reach[1] - (window.extent[1] - left - W)))
        if window.stride == (1, 1) and min(min(p) for p in pads) >= 0:
            flipped = w.reshape(G, Og, Cg, kh, kw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
            wt = np.ascontiguousarray(flipped).reshape(C, Og, kh, kw)                # (C, O/G, kh, kw)
            gwindow = _window("conv2d", window.out, window.kernel, window.dilation, (1, 1), pads)
            return _conv_by_blocks(g, wt, gwindow, _blocks(B, gwindow, O, Og), G), gw
        dxpad = np.zeros((B, C) + window.extent, g.dtype)
        wt = w.reshape(G, Og, Cg * kh * kw).swapaxes(1, 2)
        for b0, b1, y0, y1 in blocks:
            gblock = g[b0:b1, :, y0:y1].transpose(1, 0, 2, 3).reshape(G, Og, -1)      # (G, O/G, n)
            dcols = np.matmul(wt, gblock)                                              # (G, K, n)
            dcols = dcols.reshape(C, kh, kw, b1 - b0, y1 - y0, ow).transpose(3, 0, 1, 2, 4, 5)
            for i in range(kh):
                rows = slice(y0 * sh + i * dh, (y1 - 1) * sh + i * dh + 1, sh)
                for j in range(kw):
                    dxpad[b0:b1, :, rows, j * dw:j * dw + (ow - 1) * sw + 1:sw] += dcols[:, :, i, j]
        return dxpad[:, :, top:top + H, left:left + W], gw
    return out, grads


def _by_kernel_rows(window: _Window, channels: int) -> bool:
    """Whether ``_conv2d_chunked`` splits the columns by kernel row: for vertical stride 1 (row i's
    columns are then the shared buffer's rows shifted by i*dh) and enough channels (per group) that the
    matmuls' inner size channels*kw stays long (>= 64)."""
    return window.stride[0] == 1 and window.kernel[0] > 1 and channels * window.kernel[1] >= 64


def _kernel_parts(window: _Window, channels: int) -> list:
    """The kernel rows of each part of the columns: all of them, or one part per row (``_by_kernel_rows``)."""
    kh = window.kernel[0]
    return [slice(i, i + 1) for i in range(kh)] if _by_kernel_rows(window, channels) else [slice(0, kh)]


def _block_columns(x, window: _Window, blocks: list, G: int, by_rows: bool):
    """(block, its columns) for every block of output positions of a conv2d of x (B, C, H, W): a list of
    (n_img, G, K', n) arrays, n the positions of the block in one image, made in one reused buffer (so
    each is valid until the next). One array, K' = (C/G)*kh*kw, channel-major as ``_im2col``'s; or by
    kernel row (``by_rows``), one per row i, K' = (C/G)*kw, each a view of one buffer of kw shifted
    copies of the band's rows (B', C, kw, rows, ow), starting i*dh rows down.

    The block's windows are viewed on a padded band: the block's images and the input rows their windows
    meet, placed in a reused zero-bordered buffer, rather than on a padded copy of the whole input (a
    fresh buffer the size of x, written out to main memory and read back)."""
    (B, C, H, W), (kh, kw), ow = x.shape, window.kernel, window.out[1]
    (dh, dw), (sh, sw), (top, left), Wp = window.dilation, window.stride, window.before, window.extent[1]
    span = dh * (kh - 1) + 1
    sizes = [(b1 - b0, (y1 - y0 - 1) * sh + span, y1 - y0) for b0, b1, y0, y1 in blocks]
    rows_per_image = max(rows for _, rows, _ in sizes) if by_rows else kh * max(r for _, _, r in sizes)
    cols_buf = np.empty(max(nb for nb, _, _ in sizes) * C * kw * rows_per_image * ow, x.dtype)
    band_buf, shape = np.empty(C * max(nb * rows for nb, rows, _ in sizes) * Wp, x.dtype), None
    for b0, b1, y0, y1 in blocks:
        nb, rows, first = b1 - b0, (y1 - y0 - 1) * sh + span, y0 * sh - top  # x's row at the band's top
        band = band_buf[:nb * C * rows * Wp].reshape(nb, C, rows, Wp)
        if band.shape != shape:  # a new layout: zero it all (the padding columns then stay zero)
            band.fill(0)
            sb, sc, sy, sx = band.strides
            if by_rows:  # (n_img, C, 1, kw, rows, ow): every band row, kw shifts
                view = (nb, C, 1, kw, rows, ow), (sb, sc, 0, dw * sx, sy, sw * sx)
            else:        # (n_img, C, kh, kw, y1-y0, ow): the windows
                view = (nb, C, kh, kw, y1 - y0, ow), (sb, sc, dh * sy, dw * sx, sh * sy, sw * sx)
            windows = np.lib.stride_tricks.as_strided(band, *view)
            shape = band.shape
        lo = min(rows, max(0, -first))
        hi = max(lo, min(rows, H - first))                      # band rows lo..hi-1 hold x's rows
        band[:, :, :lo] = 0
        band[:, :, hi:] = 0
        band[:, :, lo:hi, left:left + W] = x[b0:b1, :, first + lo:first + hi]
        cols = cols_buf[:windows.size].reshape(windows.shape)
        np.copyto(cols, windows)
        if by_rows:
            parts = [cols[:, :, 0, :, i * dh:i * dh + y1 - y0] for i in range(kh)]    # (n_img, C, kw, r, ow)
        else:
            parts = [cols]
        yield (b0, b1, y0, y1), [c.reshape(nb, G, -1, (y1 - y0) * ow) for c in parts]


def _conv_by_blocks(x, w, window: _Window, blocks: list, G: int):
    """out (B, O, oh, ow) = the convolution of x (B, C, H, W) with w (O, C/G, kh, kw), block by block:
    out[block] = sum over the parts of the columns of W[part] @ cols[part], written in place."""
    (O, Cg, kh, kw), (oh, ow) = w.shape, window.out
    parts = _kernel_parts(window, Cg)
    wparts = [np.ascontiguousarray(w.reshape(G, O // G, Cg, kh, kw)[:, :, :, rows]).reshape(G, O // G, -1)
              for rows in parts]
    out = np.empty((x.shape[0], O) + window.out, x.dtype)
    flat = out.reshape(x.shape[0], G, O // G, oh * ow)
    tmp = np.empty(O * max((b1 - b0) * (y1 - y0) for b0, b1, y0, y1 in blocks) * ow, x.dtype)
    for (b0, b1, y0, y1), cols in _block_columns(x, window, blocks, G, len(parts) > 1):
        acc = flat[b0:b1, :, :, y0 * ow:y1 * ow]                                 # (n_img, G, O/G, n)
        np.matmul(wparts[0], cols[0], out=acc)
        for wp, c in zip(wparts[1:], cols[1:]):
            acc += np.matmul(wp, c, out=tmp[:acc.size].reshape(acc.shape))
    return out


# --- pooling ---------------------------------------------------------------------------------------
def _pool_window(op: str, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool) -> _Window:
    """Pool geometry with torch's checks: stride defaults to the kernel; padding at most half the window."""
    kernel = _pair(kernel_size, "kernel_size", op, minimum=1)
    no_stride = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    stride_ = kernel if no_stride else _pair(stride, "stride", op, minimum=1)
    padding_, dilation_ = _pair(padding, "padding", op), _pair(dilation, "dilation", op, minimum=1)
    for p, k, d in zip(padding_, kernel, dilation_):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"{op}: padding must be at most half the (dilated) kernel size, got padding "
                             f"{padding_} for kernel_size {kernel} and dilation {dilation_}")
    return _window(op, x.shape[2:], kernel, dilation_, stride_, _symmetric(padding_), ceil_mode)


def _pool_counts(n: int, k: int, s: int, p: int, o: int, include_pad: bool) -> np.ndarray:
    """Per output position along one dim: how many of its k taps the average divides by (as torch).

    A window covers [o*s - p, o*s - p + k) clipped to the padded input [-p, n + p) (ceil mode may run past
    it); with count_include_pad=False it is clipped to the input [0, n) instead.
    """
    start = np.arange(o) * s - p
    end = np.minimum(start + k, n + p)
    return end - start if include_pad else np.minimum(end, n) - np.maximum(start, 0)


@backend.constant
def _pool_divisor(size, kernel, stride, before, out, include_pad: bool, dtype) -> np.ndarray:
    """(oh, ow): the number of taps each window of avg_pool2d divides by (built once per shape and device)."""
    return np.outer(*(_pool_counts(*dims, include_pad) for dims in zip(size, kernel, stride, before, out))
                    ).astype(dtype)


@_batched("(B, C, H, W)", "(C, H, W)")
def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """Average over kh x kw windows, as ``torch.nn.functional.avg_pool2d``.

    input (B, C, H, W) -> (B, C, oh, ow):  out[b, c, y, x] = (sum of the window's taps) / divisor[y, x]
    Padding is zeros. divisor = divisor_override when given, else the number of window taps inside the
    padded input (count_include_pad=True) or inside the input (False); a ceil-mode window that runs past
    the padded input counts only what it covers. Backward: every tap of a window receives g / divisor
    (a col2im of the broadcast gradient).
    """
    x = _as_tensor(input)
    window = _pool_window("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if not _is_int(divisor_override) or divisor_override == 0:
            raise ValueError(f"avg_pool2d: divisor_override must be a non-zero int, got {divisor_override!r}")
        divisor = x.xp.full((), divisor_override, dtype=x.dtype)
    else:
        divisor = _pool_divisor(x.shape[2:], window.kernel, window.stride, window.before, window.out,
                                count_include_pad, x.dtype, device=x.device)
    out = _windows(_padded(x.data, window), window).sum(axis=(2, 3)) / divisor

    def backward(g):
        share = x.xp.broadcast_to((g / divisor)[:, :, None, None], g.shape[:2] + window.kernel + window.out)
        return (_col2im(share, x.shape[2:], window),)
    return Tensor.from_op(out, (x,), backward, "avg_pool2d")


@_batched("(B, C, H, W)", "(C, H, W)")
def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Maximum over kh x kw windows, as ``torch.nn.functional.max_pool2d``.

    input (B, C, H, W) -> (B, C, oh, ow); padding is -inf. The winner of a window is its first maximum in
    window order (row by row), and a NaN wins over any number, as torch. Backward: g goes to the winner,
    a col2im of g routed to each window's winning offset (positions that win several windows sum).
    """
    x = _as_tensor(input)
    window = _pool_window("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
    xp = x.xp
    buf = _padded(x.data, window, fill=-np.inf)
    best = argbest = None
    for i, j, rows, cols in _offsets(window):
        tap = buf[:, :, rows, cols]
        if best is None:
            best, argbest = tap.copy(), xp.zeros(tap.shape, np.int32)
            continue
        better = (tap > best) | xp.isnan(tap)
        xp.copyto(best, tap, where=better)
        xp.copyto(argbest, i * window.kernel[1] + j, where=better)

    def backward(g):
        offset = xp.arange(window.kernel[0] * window.kernel[1]).reshape(window.kernel + (1, 1))
        routed = xp.where(argbest[:, :, None, None] == offset, g[:, :, None, None], xp.zeros((), g.dtype))
        return (_col2im(routed, x.shape[2:], window),)
    return Tensor.from_op(best, (x,), backward, "max_pool2d")


# --- padding ---------------------------------------------------------------------------------------
def _matmul_along(a, m, axis: int):
    """Apply the matrix m (n_out, n_in) along ``axis`` of a: result[..., o, ...] = sum_i m[o, i] a[..., i, ...]."""
    xp = backend.get_array_module(a)
    return xp.moveaxis(xp.moveaxis(a, axis, -1) @ m.T, -1, axis)


def _pad_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """For each output position along one dim, the input index it copies (reflect, replicate, circular).

    Circular padding wraps around what is left after a negative amount crops (as torch): the kept
    range [c0, n - c1) of length m, so output j (from -max(lo, 0)) copies c0 + j mod m.
    """
    i = np.arange(-lo, n + hi)
    if mode == "reflect":
        return np.where(i < 0, -i, np.where(i >= n, 2 * (n - 1) - i, i))
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    c0, c1 = max(-lo, 0), max(-hi, 0)
    return c0 + np.arange(-max(lo, 0), n - c0 - c1 + max(hi, 0)) % (n - c0 - c1)  # circular


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Tensor:
    """Pad (or, with negative amounts, crop) the last dims, as ``torch.nn.functional.pad``.

    ``pad`` lists (before, after) pairs starting from the LAST dim: (left, right, top, bottom, ...).
    constant:  out = value outside the input, the input inside     backward: the inside of g
    reflect:   x[..., 2, 1, 0, 1, 2, ...] (the edge is not repeated; pad < n)
    replicate: the edge repeated;  circular: wraps around (pad <= n)
    The three index modes gather along each padded dim; their backward is the transposed (one-hot)
    gather matrix, so a pixel copied several times sums its gradients.
    """
    x = _as_tensor(input)
    xp = x.xp
    pads = tuple(pad)
    if len(pads) % 2 or not all(_is_int(p) for p in pads) or len(pads) // 2 > x.ndim:
        raise ValueError(f"pad: pad must be an even-length sequence of ints with at most 2*ndim = {2 * x.ndim} "
                         f"entries, got {pad!r}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad: mode must be 'constant', 'reflect', 'replicate' or 'circular', got {mode!r}")
    if mode != "constant" and value:
        raise ValueError(f"pad: mode {mode!r} takes no value, got value={value!r}")
    # (axis, before, after), innermost first as torch lists them
    dims = [(x.ndim - 1 - k, int(pads[2 * k]), int(pads[2 * k + 1])) for k in range(len(pads) // 2)]
    for axis, lo, hi in dims:
        n = x.shape[axis]
        if n + lo + hi < 0 or (mode != "constant" and n + lo + hi <= 0):
            raise ValueError(f"pad: padding ({lo}, {hi}) of dim {axis} (size {n}) leaves size {n + lo + hi}")
        if mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(f"pad: reflect padding must be smaller than the dim, got ({lo}, {hi}) for dim {axis} "
                             f"of size {n}")
        kept = n - max(-lo, 0) - max(-hi, 0)
        if mode == "circular" and (kept <= 0 or max(lo, hi) > kept):
            raise ValueError(f"pad: circular padding must be at most the dim (after cropping), got ({lo}, {hi}) "
                             f"for dim {axis} of size {n}")

    if mode == "constant":
        src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        shape = list(x.shape)
        for axis, lo, hi in dims:
            n = x.shape[axis]
            src[axis] = slice(max(-lo, 0), n - max(-hi, 0))
            dst[axis] = slice(max(lo, 0), max(lo, 0) + max(n - max(-lo, 0) - max(-hi, 0), 0))
            shape[axis] = n + lo + hi
        src, dst = tuple(src), tuple(dst)
        out = xp.full(shape, 0.0 if value is None else value, x.dtype)
        out[dst] = x.data[src]

        def backward(g):
            if all(lo >= 0 and hi >= 0 for _, lo, hi in dims):
                return (g[dst],)
            gx = xp.zeros_like(x.data)
            gx[src] = g[dst]
            return (gx,)
        return Tensor.from_op(out, (x,), backward, "pad")

    gathers = [(axis, (x.shape[axis], lo, hi, mode)) for axis, lo, hi in dims]  # (axis, _pad_index args)
    out = x.data
    for axis, args in gathers:
        out = xp.take(out, _pad_index_on_device(*args, device=x.device), axis=axis)

    def backward(g):
        for axis, args in gathers:
            g = _matmul_along(g, _pad_gather_t(*args, x.dtype, device=x.device), axis)
        return (g,)
    return Tensor.from_op(out, (x,), backward, "pad")


# --- resizing --------------------------------------------------------------------------------------
_INTERP_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")


def _cubic_coefficients(t: np.ndarray, A: float = -0.75) -> list:
    """Keys' cubic convolution weights of the taps at offsets -1, 0, 1, 2 for a fraction t (torch's A)."""
    def near(x):  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
    one = t.dtype.type(1)
    return [far(t + one), near(t), near(one - t), far(one - t + one)]


_pad_index_on_device = backend.constant(_pad_index)  # built once per (n, lo, hi, mode) and device


@backend.constant
def _pad_gather_t(n: int, lo: int, hi: int, mode: str, dtype) -> np.ndarray:
    """(n, n + lo + hi): the transpose of the gather by ``_pad_index``, which sums the gradient back."""
    index = _pad_index(n, lo, hi, mode)
    onehot = np.zeros((len(index), n), dtype)
    onehot[np.arange(len(index)), index] = 1
    return onehot.T


@backend.constant
def _interp_matrix(n_in: int, n_out: int, mode: str, align_corners: bool, scale: float | None,
                   dtype) -> np.ndarray:
    """The (n_out, n_in) matrix that resizes one dim, built on the host with torch's index arithmetic.

    ``scale`` is the user's scale_factor (torch then maps with 1/scale_factor instead of n_in/n_out).
    Arithmetic is in the input's float type (float32 for nearest, as torch), so indices land where
    torch's do. bilinear/bicubic source coordinate of output o:
        align_corners: src = o * (n_in - 1)/(n_out - 1)
        otherwise:     src = (o + 0.5) / scale - 0.5   (bilinear clamps src < 0 to 0)
    bilinear taps floor(src), floor(src)+1 with weights 1-t, t; bicubic taps floor(src)-1 .. +2 clamped to
    the border, weights from Keys' cubic (A = -0.75).
    """
    dst = np.arange(n_out)
    m = np.zeros((n_out, n_in), dtype)
    if mode.startswith("nearest"):
        f32 = np.float32
        inv = f32(1.0 / scale) if scale and scale > 0 else f32(n_in) / f32(n_out)
        if mode == "nearest-exact":
            src = np.floor(((dst + 0.5) * np.float64(inv)).astype(f32))
        elif n_out == n_in:
            src = dst
        elif n_out == 2 * n_in:
            src = dst >> 1
        else:
            src = np.floor(dst.astype(f32) * inv)
        m[dst, np.minimum(src.astype(np.int64), n_in - 1)] = 1
        return m
    t = np.dtype(dtype).type
    o = dst.astype(dtype)
    if align_corners:
        src = o * (t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0))
    else:
        inv = t(1.0 / scale) if scale and scale > 0 else t(n_in) / t(n_out)
        src = inv * (o + t(0.5)) - t(0.5)
        if mode == "bilinear":
            src = np.maximum(src, t(0))
    index = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = np.clip(src - index.astype(dtype), t(0), t(1))
    if mode == "bilinear":
        taps = [(index, t(1) - frac), (index + (index < n_in - 1), frac)]
    else:
        taps = [(np.clip(index - 1 + k, 0, n_in - 1), c) for k, c in enumerate(_cubic_coefficients(frac))]
    for column, weight in taps:  # rows are distinct within one tap, so += adds every weight once
        m[dst, column] += weight
    return m


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                recompute_scale_factor=None) -> Tensor:
    """Resize the spatial dims of (B, C, H, W), as ``torch.nn.functional.interpolate``.

    mode: 'nearest', 'nearest-exact', 'bilinear' or 'bicubic'. Exactly one of ``size`` (int or pair) and
    ``scale_factor`` (number or pair; output = floor(n * scale_factor)) is given. Every mode is separable:
        out = Mh @ x @ Mw^T      Mh (oh, H), Mw (ow, W) from ``_interp_matrix``
    so the backward is exact and cheap: dx = Mh^T @ g @ Mw.
    """
    x = _as_tensor(input)
    _check_input(x, 4, "interpolate", "(B, C, H, W)")
    _check_nonempty(x, "interpolate")
    if mode not in _INTERP_MODES:
        raise ValueError(f"interpolate: mode must be one of {_INTERP_MODES}, got {mode!r}")
    if align_corners is not None and mode.startswith("nearest"):
        raise ValueError("interpolate: align_corners can only be set with mode 'bilinear' or 'bicubic', "
                         f"got mode {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor, got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    H, W = x.shape[2:]
    if size is not None:
        out_size, scales = _pair(size, "size", "interpolate", minimum=1), (None, None)
    else:
        scales = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float, np.number)) \
            else tuple(scale_factor)
        if len(scales) != 2 or not all(isinstance(s, (int, float, np.number)) and s > 0 for s in scales):
            raise ValueError(f"interpolate: scale_factor must be a positive number or pair, got {scale_factor!r}")
        out_size = (math.floor(H * float(scales[0])), math.floor(W * float(scales[1])))
        if min(out_size) < 1:
            raise ValueError(f"interpolate: scale_factor {scale_factor!r} gives an empty output {out_size} "
                             f"for input {H}x{W}")
        if recompute_scale_factor:
            scales = (None, None)
    mats = [_interp_matrix(n, o, mode, bool(align_corners), s, x.dtype, device=x.device)
            for n, o, s in zip((H, W), out_size, scales)]
    mh, mw = mats
    out = mh @ x.data @ mw.T
    return Tensor.from_op(out, (x,), lambda g: (mh.T @ g @ mw,), "interpolate")
