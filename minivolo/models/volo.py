"""VOLO: Vision Outlooker for Visual Recognition (Yuan et al., arXiv 2106.13112), on minivolo.

Same blocks, constructor arguments, state_dict names and initialisation as timm's ``models/volo.py``
(itself the official sail-sg/volo code), so checkpoints load either way and outputs agree.

    image (B, 3, H, W)
      -> PatchEmbed: conv stem (stride 2) + patch conv           (B, C0, H/p, W/p), p = patch_size
      -> channels-last                                           (B, H/p, W/p, C0)
      -> network[0]: Outlookers (outlook attention + MLP)        (B, H/p, W/p, C0)
      -> network[1]: Downsample (2x2 conv, stride 2)             (B, H/2p, W/2p, C1)
      -> + pos_embed, network[2..]: Transformers (MHSA + MLP)    (B, H/2p, W/2p, C)
      -> flatten, prepend cls_token, post_network: ClassBlocks   (B, 1 + N, C)
      -> norm; head(token 0) + 0.5 * max over tokens of aux_head(tokens 1..)   (B, num_classes)

Tokens are channels-last, (B, H, W, C), through the outlooker and transformer stages.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .. import backend
from .. import functional as F
from .. import nn
from ..nn import init
from ..nn.module import Module, ModuleList, Parameter, Sequential
from ..tensor import Tensor, concatenate, no_grad, where

__all__ = ["OutlookAttention", "outlook_aggregate", "Mlp", "Outlooker", "Attention", "Transformer",
           "ClassAttention", "ClassBlock", "PatchEmbed", "Downsample", "VOLO", "rand_bbox",
           "mix_token_lambda", "resize_pos_embed", "create_model", "list_models", "register_model"]


def _pair(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


# --- outlook attention -------------------------------------------------------------------------------
def _window_slices(kernel_size: int, stride: int, out_hw: tuple):
    """For each kernel offset j = ky*k + kx, the strided slices that pick pixel (i*s + ky, l*s + kx) of a
    padded map for every output position (i, l): unfold reads through them, fold adds through them."""
    oh, ow = out_hw
    for ky in range(kernel_size):
        for kx in range(kernel_size):
            yield (ky * kernel_size + kx, slice(ky, ky + stride * (oh - 1) + 1, stride),
                   slice(kx, kx + stride * (ow - 1) + 1, stride))


def _unfold(x, kernel_size: int, padding: int, stride: int, out_hw: tuple):
    """Channels-last unfold: (B, H, W, h, d) -> (B, oh, ow, h, k², d), the zero-padded k×k window at
    every output position (im2col as k² strided slice-copies, no loop over pixels)."""
    xp = backend.get_array_module(x)
    B, H, W = x.shape[:3]
    p = padding
    padded = xp.zeros((B, H + 2 * p, W + 2 * p) + x.shape[3:], dtype=x.dtype)
    padded[:, p:p + H, p:p + W] = x
    cols = xp.empty((B,) + tuple(out_hw) + x.shape[3:-1] + (kernel_size ** 2, x.shape[-1]), dtype=x.dtype)
    for j, rows, columns in _window_slices(kernel_size, stride, out_hw):
        cols[..., j, :] = padded[:, rows, columns]
    return cols


def _fold(cols, kernel_size: int, padding: int, stride: int, in_hw: tuple):
    """Channels-last fold, the adjoint of ``_unfold``: (B, oh, ow, h, k², d) -> (B, H, W, h, d);
    windows that overlap SUM (col2im as k² strided slice-adds)."""
    xp = backend.get_array_module(cols)
    (H, W), p = in_hw, padding
    B, oh, ow = cols.shape[:3]
    padded = xp.zeros((B, H + 2 * p, W + 2 * p) + cols.shape[3:-2] + cols.shape[-1:], dtype=cols.dtype)
    for j, rows, columns in _window_slices(kernel_size, stride, (oh, ow)):
        padded[:, rows, columns] += cols[..., j, :]
    return padded[:, p:p + H, p:p + W]


def outlook_aggregate(attn: Tensor, v: Tensor, kernel_size: int, padding: int, stride: int) -> Tensor:
    """``fold(attn @ unfold(v))`` on channels-last maps: steps 1 and 3 of outlook attention as one op.

    attn: (B, oh, ow, h, k², k²) softmax weights, v: (B, H, W, C) values, C = h·d -> (B, H, W, C).
    Fused (forward and backward written by hand) because it is the hot path of VOLO training: working
    channels-last with heads split from channels, unfold lands in the layout the batched matmul wants
    and fold adds straight back, with no NCHW transposes and no copies between the steps. Composing
    ``F.unfold``/``F.fold`` with permutes, as timm does, gives the same numbers 1.5-2x slower (measured:
    OutlookAttention forward+backward, B=8, 28x28, C=192: 54 ms vs 79 ms; B=64, 8x8, C=64: 8 vs 15 ms).
        cols = unfold(v)           (B, oh, ow, h, k², d)
        y    = attn @ cols         (B, oh, ow, h, k², d)
        out  = fold(y)             (B, H, W, C)
    backward: g_y = unfold(g_out); g_attn = g_y @ colsᵀ; g_cols = attnᵀ @ g_y; g_v = fold(g_cols).
    """
    B, H, W, C = v.shape
    heads = attn.shape[3]
    a = attn.data
    out_hw = a.shape[1:3]
    geometry = (kernel_size, padding, stride)
    cols = _unfold(v.data.reshape(B, H, W, heads, C // heads), *geometry, out_hw)
    out = _fold(a @ cols, *geometry, (H, W)).reshape(B, H, W, C)

    def backward(g):
        g_y = _unfold(g.reshape(B, H, W, heads, C // heads), *geometry, out_hw)
        g_attn = g_y @ cols.swapaxes(-1, -2) if attn.requires_grad else None
        g_v = _fold(a.swapaxes(-1, -2) @ g_y, *geometry, (H, W)).reshape(B, H, W, C) \
            if v.requires_grad else None
        return g_attn, g_v
    return Tensor.from_op(out, (attn, v), backward, "outlook_aggregate")


class OutlookAttention(Module):
    """Outlook attention: each location re-weights the k×k window around it with a k²×k² matrix that is
    generated from its own feature (no queries or keys), and the overlapping windows are summed back.

    x: (B, H, W, C) -> (B, H, W, C); heads h, head dim d = C/h, kernel k, padding p, stride s,
    output grid oh×ow = ceil(H/s)×ceil(W/s) (the windows' centres), L = oh·ow.

    1. values   v = x Wv                                 (B, H, W, C)   ``self.v`` (bias: qkv_bias)
                V = unfold(v) split by heads             (B, oh, ow, h, k², d)
       V[b, i, l, head, (ky, kx)] = v[b, i·s + ky − p, l·s + kx − p, head-th d channels] (0 outside)
    2. weights  a = AvgPool(s, ceil_mode)(x)             (B, oh, ow, C)   (the window centre; s=1: x)
                A = a Wa + ba                            (B, oh, ow, h·k⁴)  ``self.attn``
                A = softmax(scale · A.reshape(.., h, k², k²), over the last axis)   scale = d^-1/2
    3. output   Y = A @ V                                (B, oh, ow, h, k², d)   (window k² x k² mix)
                y = fold(Y): Y's window entries added back at their pixels, overlaps SUM  (B, H, W, C)
                out = y Wp + bp                          (B, H, W, C)   ``self.proj``
    Steps 1 (unfold) and 3 (matmul, fold) run as one fused op, ``outlook_aggregate``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.scale = (dim // num_heads) ** -0.5

        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool = nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        k, p, s = self.kernel_size, self.padding, self.stride
        oh, ow = math.ceil(H / s), math.ceil(W / s)
        if ((H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1) != (oh, ow):
            raise ValueError(f"OutlookAttention(kernel_size={k}, padding={p}, stride={s}) needs "
                             f"ceil(H/stride) windows per axis; an {H}x{W} map gives a different count")
        v = self.v(x)
        a = x if s == 1 else self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        a = self.attn(a).reshape(B, oh, ow, self.num_heads, k * k, k * k)
        a = self.attn_drop(F.softmax(a * self.scale, dim=-1))
        x = outlook_aggregate(a, v, k, p, s)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"stride={self.stride}")


# --- the other blocks ---------------------------------------------------------------------------------
class Mlp(Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout.  x: (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def _drop_path(rate: float) -> Module:
    return nn.DropPath(rate) if rate > 0. else nn.Identity()


class _PreNormBlock(Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))): the pre-norm residual block that
    Outlooker, Transformer and ClassBlock share (they differ in ``attn``)."""

    def __init__(self, dim: int, attn: Module, mlp_ratio: float, drop_path: float, norm_layer: Callable,
                 drop: float = 0.):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path1 = _drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = _drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Outlooker(_PreNormBlock):
    """Outlook attention + MLP, pre-norm residual.  x: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, kernel_size: int, padding: int, stride: int = 1, num_heads: int = 1,
                 mlp_ratio: float = 3., attn_drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable = nn.LayerNorm, qkv_bias: bool = False):
        attn = OutlookAttention(dim, num_heads, kernel_size=kernel_size, padding=padding, stride=stride,
                                qkv_bias=qkv_bias, attn_drop=attn_drop)
        super().__init__(dim, attn, mlp_ratio, drop_path, norm_layer)


class Attention(Module):
    """Multi-head self-attention over all H·W tokens.  x: (B, H, W, C) -> (B, H, W, C).

    q, k, v = split(x Wqkv)            each (B, h, N, d), N = H·W
    out = softmax(q·scale @ kᵀ) @ v    (B, h, N, d) -> (B, H, W, C) -> proj
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(F.softmax((q * self.scale) @ k.swapaxes(-2, -1), dim=-1))  # (B, h, N, N)
        x = (attn @ v).swapaxes(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))


class Transformer(_PreNormBlock):
    """Self-attention + MLP, pre-norm residual.  x: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 attn_drop: float = 0., drop_path: float = 0., norm_layer: Callable = nn.LayerNorm):
        attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        super().__init__(dim, attn, mlp_ratio, drop_path, norm_layer)


class ClassAttention(Module):
    """The class token attends to all tokens (itself included).  x: (B, N, C) -> (B, 1, C).

    k, v = split(x Wkv)   (B, h, N, d);   q = x[:, :1] Wq   (B, h, 1, d)
    out  = softmax(q·scale @ kᵀ) @ v   (B, h, 1, d) -> (B, 1, h·d) -> proj
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False,
                 attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.scale = self.head_dim ** -0.5
        inner = self.head_dim * num_heads
        self.kv = nn.Linear(dim, inner * 2, bias=qkv_bias)
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        kv = self.kv(x).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        q = self.q(x[:, :1]).reshape(B, h, 1, d) * self.scale
        attn = self.attn_drop(F.softmax(q @ k.swapaxes(-2, -1), dim=-1))  # (B, h, 1, N)
        cls_embed = (attn @ v).swapaxes(1, 2).reshape(B, 1, h * d)
        return self.proj_drop(self.proj(cls_embed))


class ClassBlock(_PreNormBlock):
    """Updates only the class token.  x: (B, 1 + N, C) -> (B, 1 + N, C).

    c = x[:, :1] + attn(norm1(x));  c = c + mlp(norm2(c));  out = concat(c, x[:, 1:])
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, mlp_ratio: float = 4.,
                 qkv_bias: bool = False, drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable = nn.LayerNorm):
        attn = ClassAttention(dim, num_heads=num_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=drop)
        super().__init__(dim, attn, mlp_ratio, drop_path, norm_layer, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        cls_embed = x[:, :1] + self.drop_path1(self.attn(self.norm1(x)))
        cls_embed = cls_embed + self.drop_path2(self.mlp(self.norm2(cls_embed)))
        return concatenate([cls_embed, x[:, 1:]], axis=1)


class PatchEmbed(Module):
    """Conv stem then patch projection.  x: (B, in_chans, H, W) -> (B, embed_dim, H/p, W/p).

    conv: [Conv(7, stride 2, pad 3) -> BN -> ReLU] then 2 x [Conv(3, pad 1) -> BN -> ReLU], no conv bias,
    at half resolution; proj: Conv(kernel = stride = patch_size/2) with bias.
    """

    def __init__(self, patch_size: int = 8, in_chans: int = 3, hidden_dim: int = 64, embed_dim: int = 384):
        super().__init__()
        if patch_size not in (4, 8, 16):
            raise ValueError(f"patch_size must be 4, 8 or 16, got {patch_size}")
        self.conv = Sequential(
            nn.Conv2d(in_chans, hidden_dim, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_dim), nn.ReLU(),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim), nn.ReLU(),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim), nn.ReLU(),
        )
        self.proj = nn.Conv2d(hidden_dim, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.conv(x))


class Downsample(Module):
    """2x2 conv, stride 2, between stages.  x: (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_embed_dim: int, out_embed_dim: int, patch_size: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(in_embed_dim, out_embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# --- mix-token ----------------------------------------------------------------------------------------
def rand_bbox(grid_hw: tuple, lam: float, rng: np.random.Generator | None = None) -> tuple:
    """A random box on a token grid for mix-token (as timm's ``rand_bbox``), in grid coordinates.

    Side lengths int(n · sqrt(1 − lam)) (float32), centre uniform, clipped to the grid. Returns
    (bbx1, bby1, bbx2, bby2) where, as in the original code, the "x" pair indexes the first (H) axis.
    """
    rng = rng or backend.generator("cpu")
    n1, n2 = grid_hw
    # in float32, as timm (lam is a float32 tensor there): float64 rounds n·sqrt(1 − lam) differently
    # near integers, e.g. lam = 1e-8 gives a side of n there and n − 1 in float64
    cut_rat = np.sqrt(np.float32(1) - np.float32(lam))
    cut1, cut2 = int(np.float32(n1) * cut_rat), int(np.float32(n2) * cut_rat)
    c1, c2 = int(rng.integers(0, n1)), int(rng.integers(0, n2))
    return (int(np.clip(c1 - cut1 // 2, 0, n1)), int(np.clip(c2 - cut2 // 2, 0, n2)),
            int(np.clip(c1 + (cut1 + 1) // 2, 0, n1)), int(np.clip(c2 + (cut2 + 1) // 2, 0, n2)))


def mix_token_lambda(bbox: tuple, grid_hw: tuple) -> float:
    """The share of tokens that kept their own image: 1 − box area / grid area. Mix the class targets
    as lam · y + (1 − lam) · y.flip(0) (the dense targets are cut-pasted with the same box)."""
    bbx1, bby1, bbx2, bby2 = bbox
    return 1. - (bbx2 - bbx1) * (bby2 - bby1) / (grid_hw[0] * grid_hw[1])


def _paste_flipped(x: Tensor, box: tuple) -> Tensor:
    """x (B, H, W, C) with the tokens inside box (rows r1:r2, columns c1:c2) taken from x.flip(0)."""
    r1, c1, r2, c2 = box
    inside = np.zeros((1, x.shape[1], x.shape[2], 1), dtype=bool)
    inside[:, r1:r2, c1:c2] = True
    return where(backend.to_device(inside, x.device), x[::-1], x)


# --- position embedding -------------------------------------------------------------------------------
def resize_pos_embed(pos_embed, new_hw: tuple):
    """Resample a (1, H, W, C) position embedding to (1, new_h, new_w, C), bicubic, align_corners=False
    (as F.interpolate / torch). Takes and returns a host or device array."""
    pos = Tensor(pos_embed)
    if pos.ndim != 4 or pos.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, H, W, C), got {tuple(pos.shape)}")
    if tuple(pos.shape[1:3]) == tuple(new_hw):
        return pos.data
    with no_grad():
        out = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(new_hw), mode="bicubic", align_corners=False)
    return out.xp.ascontiguousarray(out.permute(0, 2, 3, 1).data)


# --- the network --------------------------------------------------------------------------------------
class VOLO(Module):
    """Vision Outlooker. x: (B, in_chans, img_size, img_size) -> logits (B, num_classes).

    Same arguments as timm's ``VOLO``; ``downsamples[i]`` inserts a Downsample after stage i,
    ``outlook_attention[i]`` makes stage i Outlookers (k=3, p=1, s=2, drop-path 0) else Transformers
    (drop-path rate rising linearly over all blocks to ``drop_path_rate``).
    """

    def __init__(self, layers: Sequence[int], img_size=224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", patch_size: int = 8, stem_hidden_dim: int = 64,
                 embed_dims: Sequence[int] | None = None, num_heads: Sequence[int] | None = None,
                 downsamples: Sequence[bool] = (True, False, False, False),
                 outlook_attention: Sequence[bool] = (True, False, False, False), mlp_ratio=3.,
                 qkv_bias: bool = False, drop_rate: float = 0., pos_drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0., norm_layer: Callable = nn.LayerNorm,
                 post_layers: Sequence[str] | None = ("ca", "ca"), use_aux_head: bool = True,
                 use_mix_token: bool = False, pooling_scale: int = 2):
        super().__init__()
        if embed_dims is None or num_heads is None:
            raise ValueError("VOLO needs embed_dims and num_heads (one per stage)")
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool must be '', 'avg' or 'token', got {global_pool!r}")
        if use_mix_token and global_pool != "token":
            raise ValueError("use_mix_token needs global_pool='token' (mix-token returns all tokens)")
        if any(b != "ca" for b in post_layers or ()):
            raise ValueError(f"post_layers may only contain 'ca' (class attention), got {post_layers}")
        _check_geometry(_pair(img_size), patch_size, pooling_scale, layers, embed_dims, num_heads, downsamples,
                        outlook_attention)
        n_stages = len(layers)
        mlp_ratio = tuple(mlp_ratio) if isinstance(mlp_ratio, (tuple, list)) else (mlp_ratio,) * n_stages
        self.img_size = _pair(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.mix_token = use_mix_token
        self.beta = 1.0  # mix-token's lam ~ Beta(beta, beta)
        self.pooling_scale = pooling_scale
        self.patch_size = patch_size
        self.num_features = embed_dims[-1]

        self.patch_embed = PatchEmbed(patch_size, in_chans, stem_hidden_dim, embed_dims[0])
        grid = (self.img_size[0] // patch_size // pooling_scale, self.img_size[1] // patch_size // pooling_scale)
        self.pos_embed = _zeros_parameter((1,) + grid + (embed_dims[-1],))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        network = []
        n_blocks = sum(layers)
        for i, n in enumerate(layers):
            first = sum(layers[:i])
            if outlook_attention[i]:  # stage 1: outlookers (the constructor gives them no drop-path)
                blocks = [Outlooker(embed_dims[i], kernel_size=3, padding=1, stride=2, num_heads=num_heads[i],
                                    mlp_ratio=mlp_ratio[i], qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                    norm_layer=norm_layer) for _ in range(n)]
            else:  # stage 2: transformers, drop-path rising linearly with the block's global index
                blocks = [Transformer(embed_dims[i], num_heads[i], mlp_ratio=mlp_ratio[i], qkv_bias=qkv_bias,
                                      attn_drop=attn_drop_rate,
                                      drop_path=drop_path_rate * (first + j) / max(n_blocks - 1, 1),
                                      norm_layer=norm_layer) for j in range(n)]
            network.append(Sequential(*blocks))
            if downsamples[i]:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], 2))
        self.network = ModuleList(network)

        self.post_network = None
        if post_layers:
            self.post_network = ModuleList([
                ClassBlock(embed_dims[-1], num_heads[-1], mlp_ratio=mlp_ratio[-1], qkv_bias=qkv_bias,
                           attn_drop=attn_drop_rate, norm_layer=norm_layer) for _ in post_layers])
            self.cls_token = _zeros_parameter((1, 1, embed_dims[-1]))
            init.trunc_normal_(self.cls_token, std=.02)

        self.use_aux_head = use_aux_head
        self.aux_head = nn.Linear(self.num_features, num_classes) if use_aux_head and num_classes > 0 else None
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        init.trunc_normal_(self.pos_embed, std=.02)
        self.apply(_init_weights)

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    # --- forward ---------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels (in_chans), got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"expected image {self.img_size[0]}x{self.img_size[1]} (img_size), got "
                             f"{x.shape[2]}x{x.shape[3]}; build the model with img_size={x.shape[2]} "
                             "(load_pretrained resizes pos_embed)")

    def _embed(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> tokens (B, H/p, W/p, C0)."""
        self._check_input(x)
        return self.patch_embed(x).permute(0, 2, 3, 1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """(B, H, W, C0) -> (B, N, C): the stages, with pos_embed added before network[2]."""
        for idx, block in enumerate(self.network):
            if idx == 2:  # after the outlookers and the downsample
                x = self.pos_drop(x + self.pos_embed)
            x = block(x)
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C)

    def forward_cls(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, 1 + N, C): prepend the class token, run the class-attention blocks."""
        B, N, C = x.shape
        cls_tokens = self.cls_token + Tensor(self.cls_token.xp.zeros((B, 1, C), dtype=x.dtype))  # expand
        x = concatenate([cls_tokens, x], axis=1)
        for block in self.post_network:
            x = block(x)
        return x

    def _tokens_to_features(self, x: Tensor) -> Tensor:
        x = self.forward_tokens(x)
        if self.post_network is not None:
            x = self.forward_cls(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> normed tokens (B, 1 + N, C) (B, N, C without post_layers)."""
        return self._tokens_to_features(self._embed(x))

    def _pool(self, x: Tensor) -> Tensor:
        if self.global_pool == "avg":
            return x.mean(axis=1)
        return x[:, 0] if self.global_pool == "token" else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features (B, 1 + N, C) -> logits (B, num_classes): head(pooled) + 0.5 · max_tokens aux_head."""
        out = self.head_drop(self._pool(x))
        if pre_logits:
            return out
        out = self.head(out)
        if self.aux_head is not None and self.global_pool:
            out = out + 0.5 * self.aux_head(self.head_drop(x)[:, 1:]).max(axis=1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Inference logits (B, num_classes) (no mix-token)."""
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: Tensor, bbox: tuple | None = None):
        """Training forward with token labeling and mix-token, as timm's ``forward_train``.

        Returns ``(cls_logits (B, classes), aux_logits (B, N, classes), bbox)`` in training mode.
        With ``use_mix_token``, the tokens in a box of the pooled grid (drawn as timm: lam ~ Beta(1, 1),
        ``rand_bbox``; or the given ``bbox = (bbx1, bby1, bbx2, bby2)``) come from the batch flipped along
        B, and the aux logits in that box are flipped back; otherwise bbox is (0, 0, 0, 0).
        ``mix_token_lambda(bbox, grid)`` gives the weight of the class targets. In eval mode this returns
        the logits of ``forward``, without aux head the class logits alone (as the official code).
        """
        x = self._embed(x)
        mixing = self.mix_token and self.training
        if bbox is not None and not mixing:
            raise ValueError("bbox given but mix-token is off (needs use_mix_token=True and train mode)")
        s = self.pooling_scale
        grid = (x.shape[1] // s, x.shape[2] // s)
        if mixing:
            if self.post_network is None:
                raise ValueError("mix-token needs post_layers (the class token): without it token 0 is an "
                                 "image token and the aux logits miss one")
            if bbox is None:
                lam = float(backend.generator("cpu").beta(self.beta, self.beta))
                bbox = rand_bbox(grid, lam)
            bbox = tuple(int(b) for b in bbox)
            if not (0 <= bbox[0] <= bbox[2] <= grid[0] and 0 <= bbox[1] <= bbox[3] <= grid[1]):
                raise ValueError(f"bbox {bbox} must satisfy 0 <= bbx1 <= bbx2 <= {grid[0]} and "
                                 f"0 <= bby1 <= bby2 <= {grid[1]} (the pooled token grid)")
            x = _paste_flipped(x, tuple(s * b for b in bbox))
        else:
            bbox = (0, 0, 0, 0)

        x = self._tokens_to_features(x)
        x_cls = self.head(self._pool(x))  # (timm 1.0.31 forgets this head; the official code has it)
        if self.aux_head is None:
            return x_cls
        x_aux = self.aux_head(x[:, 1:])  # a prediction for every token (token labeling)
        if not self.training:
            return x_cls + 0.5 * x_aux.max(axis=1)
        if mixing:  # put the pasted tokens' predictions back with their own images
            B, N, K = x_aux.shape
            x_aux = _paste_flipped(x_aux.reshape(B, grid[0], grid[1], K), bbox).reshape(B, N, K)
        return x_cls, x_aux, bbox

    def mix_token_lambda(self, bbox: tuple) -> float:
        """``mix_token_lambda(bbox, grid)`` on this model's pooled token grid."""
        return mix_token_lambda(bbox, tuple(self.pos_embed.shape[1:3]))


def _check_geometry(img_size: tuple, patch_size: int, pooling_scale: int, layers, embed_dims, num_heads,
                    downsamples, outlook_attention) -> None:
    """Raise ValueError, before any weight is drawn, for a configuration whose forward would fail
    (timm's fails too, with a broadcast error deep inside): per-stage lists of different lengths, a
    stage fed another width than its embed_dim, an empty token grid, or a pos_embed grid
    (img_size / patch_size / pooling_scale) that does not fit the tokens entering network[2]."""
    n = len(layers)
    lengths = dict(embed_dims=len(embed_dims), num_heads=len(num_heads), downsamples=len(downsamples),
                   outlook_attention=len(outlook_attention))
    if any(v < n for v in lengths.values()):
        raise ValueError(f"expected one entry per stage ({n}, from layers={tuple(layers)}), got "
                         + ", ".join(f"{k} of length {v}" for k, v in lengths.items()))
    if downsamples[n - 1]:
        raise ValueError(f"downsamples[{n - 1}] must be False: there is no stage after the last one")
    # stem: conv 7 / stride 2 / pad 3 gives ceil(n/2); proj: kernel = stride = patch_size/2
    grid = tuple((s + 1) // 2 // (patch_size // 2) for s in img_size)
    pos = (img_size[0] // patch_size // pooling_scale, img_size[1] // patch_size // pooling_scale)
    too_small = (f"img_size {img_size[0]}x{img_size[1]} is too small for patch_size {patch_size}, pooling_scale "
                 f"{pooling_scale} and downsamples {tuple(downsamples[:n])}")
    dim, index = embed_dims[0], 0  # index: position in the network ModuleList
    for i in range(n):
        if min(grid) < 1:
            raise ValueError(f"{too_small}: stage {i} gets an empty token grid")
        if dim != embed_dims[i]:
            raise ValueError(f"stage {i} has embed_dim {embed_dims[i]} but receives {dim} channels; a change "
                             f"of width needs downsamples[{i - 1}]=True")
        if index <= 2 <= index + bool(downsamples[i]):  # pos_embed is added to the input of network[2]
            if min(pos) < 1:
                raise ValueError(f"{too_small}: the pos_embed grid is {pos[0]}x{pos[1]}")
            if any(p not in (g, 1) for p, g in zip(pos, grid)) or dim != embed_dims[-1]:
                raise ValueError(f"pos_embed is (1, {pos[0]}, {pos[1]}, {embed_dims[-1]}) (img_size / patch_size "
                                 f"/ pooling_scale, embed_dims[-1]) but the tokens entering network[2] are "
                                 f"{grid[0]}x{grid[1]}x{dim}; check pooling_scale, downsamples and embed_dims")
        if downsamples[i]:
            grid, dim = (grid[0] // 2, grid[1] // 2), embed_dims[i + 1]
        index += 1 + bool(downsamples[i])


def _zeros_parameter(shape: tuple) -> Parameter:
    return Parameter(backend.array_module(backend.default_device()).zeros(shape, dtype=np.float32))


def _init_weights(m: Module) -> None:
    """timm's init: Linear weights trunc-normal(std .02), biases 0; convs and norms keep their defaults."""
    if isinstance(m, nn.Linear):
        init.trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            init.zeros_(m.bias)


# --- factories and registry ---------------------------------------------------------------------------
_registry: dict = {}

# Official weights (sail-sg/volo releases; also on the Hugging Face hub as timm/volo_*.sail_in1k).
PRETRAINED_URLS = {
    "volo_d1_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d1_224_84.2.pth.tar",
    "volo_d1_384": "https://github.com/sail-sg/volo/releases/download/volo_1/d1_384_85.2.pth.tar",
    "volo_d2_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d2_224_85.2.pth.tar",
    "volo_d2_384": "https://github.com/sail-sg/volo/releases/download/volo_1/d2_384_86.0.pth.tar",
    "volo_d3_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d3_224_85.4.pth.tar",
    "volo_d3_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d3_448_86.3.pth.tar",
    "volo_d4_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d4_224_85.7.pth.tar",
    "volo_d4_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d4_448_86.79.pth.tar",
    "volo_d5_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_224_86.10.pth.tar",
    "volo_d5_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_448_87.0.pth.tar",
    "volo_d5_512": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_512_87.07.pth.tar",
}


def register_model(fn: Callable) -> Callable:
    _registry[fn.__name__] = fn
    return fn


def list_models() -> list:
    return sorted(_registry)


def create_model(name: str, pretrained=False, **kwargs) -> VOLO:
    """``create_model("volo_d1_224", num_classes=10)``; ``pretrained`` is a checkpoint path (or False)."""
    if name not in _registry:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _registry[name](pretrained=pretrained, **kwargs)


_D1 = dict(layers=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12))
_D2 = dict(layers=(6, 4, 10, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))
_D3 = dict(layers=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))
_D4 = dict(layers=(8, 8, 16, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16))
_D5 = dict(layers=(12, 12, 20, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16),
           mlp_ratio=4, stem_hidden_dim=128)
# Small presets for 28-32 px images (MNIST, CIFAR): patch 4, so the outlookers see an 8x8 token grid at 32 px.
_TINY = dict(layers=(1, 1, 1, 1), embed_dims=(64, 128, 128, 128), num_heads=(2, 4, 4, 4), patch_size=4,
             stem_hidden_dim=32, img_size=32, num_classes=10)
_NANO = dict(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), patch_size=4,
             stem_hidden_dim=16, img_size=32, num_classes=10)


def _factory(name: str, config: dict, doc: str) -> Callable:
    """Register ``name(pretrained=False, **kwargs)``: ``VOLO(**config)`` with ``kwargs`` overriding the
    config, then the weights of ``pretrained`` (a checkpoint path) when it is given."""
    def factory(pretrained=False, **kwargs) -> VOLO:
        if pretrained is True:
            url = PRETRAINED_URLS.get(name, "https://github.com/sail-sg/volo/releases")
            raise ValueError(f"minivolo does not download weights: download {url} and pass "
                             f"pretrained='path/to/checkpoint' to {name}()")
        model = VOLO(**{**config, **kwargs})
        if pretrained:
            from .pretrained import load_pretrained
            load_pretrained(model, pretrained)
        return model
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{doc}\n\n    VOLO(**{config}); keyword arguments override it."
    return register_model(factory)


volo_d1 = _factory("volo_d1", _D1, "VOLO-D1: 26.6M parameters at 224 px.")
volo_d2 = _factory("volo_d2", _D2, "VOLO-D2: 58.7M parameters at 224 px.")
volo_d3 = _factory("volo_d3", _D3, "VOLO-D3: 86.3M parameters at 224 px.")
volo_d4 = _factory("volo_d4", _D4, "VOLO-D4: 193.0M parameters at 224 px.")
volo_d5 = _factory("volo_d5", _D5, "VOLO-D5: 295.5M parameters at 224 px (mlp_ratio 4, stem 128).")
volo_tiny = _factory("volo_tiny", _TINY, "A 0.94M-parameter VOLO for 32 px images, 10 classes by default.")
volo_nano = _factory("volo_nano", _NANO, "A 0.25M-parameter VOLO for 32 px images, 10 classes by default.")
# timm's names, one per released resolution: volo_d1_224, volo_d1_384, ...
volo_d1_224, volo_d1_384 = (_factory(f"volo_d1_{r}", {**_D1, "img_size": r}, f"VOLO-D1 at {r} px.") for r in (224, 384))
volo_d2_224, volo_d2_384 = (_factory(f"volo_d2_{r}", {**_D2, "img_size": r}, f"VOLO-D2 at {r} px.") for r in (224, 384))
volo_d3_224, volo_d3_448 = (_factory(f"volo_d3_{r}", {**_D3, "img_size": r}, f"VOLO-D3 at {r} px.") for r in (224, 448))
volo_d4_224, volo_d4_448 = (_factory(f"volo_d4_{r}", {**_D4, "img_size": r}, f"VOLO-D4 at {r} px.") for r in (224, 448))
volo_d5_224, volo_d5_448, volo_d5_512 = (_factory(f"volo_d5_{r}", {**_D5, "img_size": r}, f"VOLO-D5 at {r} px.")
                                         for r in (224, 448, 512))
