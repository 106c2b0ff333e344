"""The fused core of outlook attention (VOLO), on channels-last maps: ``fold(attn @ unfold(v))`` as one op.

It runs on the same im2col/col2im kernels as ``F.unfold``/``F.fold`` (functional/conv.py), in their
"channels_last" layout; the readable composition of those ops, in the paper's notation, is
``minivolo.models.volo.outlook_attention`` (the reference this op is tested against).
"""
from __future__ import annotations

from ..tensor import Tensor
from .conv import _col2im, _im2col, _sliding_window

__all__ = ["outlook_aggregate"]


def outlook_aggregate(attn: Tensor, v: Tensor, kernel_size: int, padding: int, stride: int) -> Tensor:
    """``fold(attn @ unfold(v))`` on channels-last maps: the windows, the weighting and the dense
    aggregation of outlook attention as one op, forward and backward written by hand.

    attn: (B, oh, ow, h, k², k²) softmax weights, v: (B, H, W, C) values, C = h·d -> (B, H, W, C).
    Working channels-last with heads split from channels, unfold lands in the layout the batched matmul
    wants and fold adds straight back, with no NCHW transposes and no copies between the steps:
        cols = unfold(v)           (B, oh, ow, h, k², d)
        y    = attn @ cols         (B, oh, ow, h, k², d)
        out  = fold(y)             (B, H, W, C)
    backward: g_y = unfold(g_out); g_attn = g_y @ colsᵀ; g_cols = attnᵀ @ g_y; g_v = fold(g_cols).
    The forward does not keep cols (k² copies of v): the backward unfolds v again, one copy.
    """
    B, H, W, C = v.shape
    heads = attn.shape[3]
    window = _sliding_window("outlook_aggregate", (H, W), kernel_size, 1, padding, stride)
    if tuple(attn.shape[1:3]) != window.out:
        raise ValueError(f"outlook_aggregate: attn has a {attn.shape[1]}x{attn.shape[2]} grid of windows, but "
                         f"v ({H}x{W}) with kernel_size {kernel_size}, padding {padding}, stride {stride} "
                         f"gives {window.out[0]}x{window.out[1]}")
    weights = attn.data                                                        # (B, oh, ow, h, k², k²)
    heads_last = (B, H, W, heads, C // heads)
    cols = _im2col(v.data.reshape(heads_last), window, "channels_last")        # (B, oh, ow, h, k², d)
    out = _col2im(weights @ cols, (H, W), window, "channels_last").reshape(B, H, W, C)
    del cols  # k² copies of v: the backward unfolds v again (one copy) rather than keep them alive

    def backward(g):                                                           # g: (B, H, W, C)
        g_y = _im2col(g.reshape(heads_last), window, "channels_last")          # (B, oh, ow, h, k², d)
        g_attn = g_v = None
        if attn.requires_grad:
            cols = _im2col(v.data.reshape(heads_last), window, "channels_last")
            g_attn = g_y @ cols.swapaxes(-1, -2)                               # (B, oh, ow, h, k², k²)
            del cols
        if v.requires_grad:
            g_cols = weights.swapaxes(-1, -2) @ g_y
            del g_y
            g_v = _col2im(g_cols, (H, W), window, "channels_last").reshape(B, H, W, C)
        return g_attn, g_v
    return Tensor.from_op(out, (attn, v), backward, "outlook_aggregate")
