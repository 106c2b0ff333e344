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
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .. import backend
from .. import functional as F
from .. import nn
from ..functional.conv import _pair
from ..functional.outlook import outlook_aggregate
from ..nn import init
from ..nn.module import Module, ModuleList, Parameter, Sequential
from ..tensor import Tensor, concatenate
from .geometry import check_config, check_input, outlook_grid
from .mix_token import mix_token_lambda, mix_tokens, paste_flipped

__all__ = ["outlook_attention", "OutlookAttention", "outlook_aggregate", "Mlp", "Outlooker", "Attention",
           "Transformer", "ClassAttention", "ClassBlock", "PatchEmbed", "Downsample", "VOLO"]


# --- outlook attention -------------------------------------------------------------------------------
def outlook_attention(v: Tensor, a: Tensor, kernel_size: int, padding: int, stride: int,
                      attn_drop: Callable = lambda t: t) -> Tensor:
    """Outlook attention as the paper writes it (Eq. 1-5, Algorithm 1 of arXiv 2106.13112), with ``F.unfold``,
    softmax, matmul and ``F.fold``: the readable reference of the fused ``outlook_aggregate``.

    v: (B, H, W, C) values, a: (B, oh, ow, h, K², K²) scaled logits, K = kernel_size -> (B, H, W, C):
        V_Δ(i,j) = { v[i·s + m − p, j·s + n − p] : 0 <= m, n < K }     the window (Eq. 1; 0 off the map)
        Â(i,j)   = softmax(a[i, j])       one K²×K² matrix per head     (Eq. 2)
        Y_Δ(i,j) = Â(i,j) @ V_Δ(i,j)      the window re-weighted        (Eq. 3; per head, Eq. 5)
        y[x]     = Σ of the entries at pixel x of all the windows Y_Δ that contain x   (Eq. 4, dense aggregation)
    """
    B, H, W, C = v.shape
    _, oh, ow, h, KK, _ = a.shape
    L, d = oh * ow, C // h
    cols = F.unfold(v.permute(0, 3, 1, 2), kernel_size, padding=padding, stride=stride)  # (B, C·K², L)
    V = cols.reshape(B, h, d, KK, L).permute(0, 1, 4, 3, 2)             # (B, h, L, K², d): the windows V_Δ
    A_hat = attn_drop(F.softmax(a, dim=-1))                             # (B, oh, ow, h, K², K²): Â
    A_hat = A_hat.reshape(B, L, h, KK, KK).permute(0, 2, 1, 3, 4)       # (B, h, L, K², K²)
    Y = A_hat @ V                                                       # (B, h, L, K², d): Y_Δ
    Y_cols = Y.permute(0, 1, 4, 3, 2).reshape(B, C * KK, L)             # (B, C·K², L): unfold's layout
    y = F.fold(Y_cols, (H, W), kernel_size, padding=padding, stride=stride)  # (B, C, H, W): overlaps sum
    return y.permute(0, 2, 3, 1)                                        # (B, H, W, C)


class OutlookAttention(Module):
    """Outlook attention: each location re-weights the k×k window around it with a k²×k² matrix generated
    from its own feature (no queries or keys), and the overlapping windows are summed back.

    x: (B, H, W, C) -> (B, H, W, C); h heads of d = C/h channels, kernel k, padding p, stride s, oh×ow windows.
    1. values     v = x Wv                              (B, H, W, C)            ``self.v`` (bias: qkv_bias)
    2. weights    a = scale · (AvgPool_s(x) Wa + ba)    (B, oh, ow, h, k², k²)  ``self.attn``, scale = d^-1/2
    3. aggregate  y = fold(softmax(a) @ unfold(v))      (B, H, W, C)            windows re-weighted, overlaps SUM
    4. output     out = y Wp + bp                       (B, H, W, C)            ``self.proj``
    Step 3 is ``outlook_attention`` (the paper's F.unfold, softmax, matmul, F.fold) when ``fused=False``, else
    the fused ``outlook_aggregate``, which exists for speed: channels-last with heads split from channels,
    its unfold lands in the batched matmul's layout and its fold adds straight back, with no NCHW permutes and
    copies between the steps: forward + backward at B=8, 28x28, C=192, 6 heads, fused vs reference, 244 vs 408 ms
    at stride 2 (VOLO's), 605 vs 1027 ms at stride 1, about 1.7x (measured single-threaded, OPENBLAS_NUM_THREADS=1,
    on a shared machine under load: the ratio varied 1.2-2.6x between runs).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, attn_drop: float = 0., proj_drop: float = 0., fused: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads, self.kernel_size, self.padding, self.stride = num_heads, kernel_size, padding, stride
        self.fused = fused
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
        oh, ow = outlook_grid((H, W), k, p, s)  # ceil(H/s), ceil(W/s): the windows' centres
        v = self.v(x)                                                            # 1. (B, H, W, C)
        centre = x if s == 1 else self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # 2. (B, oh, ow, C)
        a = self.attn(centre).reshape(B, oh, ow, self.num_heads, k * k, k * k) * self.scale  # (.., h, k², k²)
        if self.fused:                                                           # 3. (B, H, W, C)
            y = outlook_aggregate(self.attn_drop(F.softmax(a, dim=-1)), v, k, p, s)
        else:
            y = outlook_attention(v, a, k, p, s, self.attn_drop)
        return self.proj_drop(self.proj(y))                                      # 4. (B, H, W, C)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"stride={self.stride}, fused={self.fused}")


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
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))  # (..., hidden) -> (..., out_features)


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
        x = x + self.drop_path1(self.attn(self.norm1(x)))  # (B, ..., C), the shape of x
        return x + self.drop_path2(self.mlp(self.norm2(x)))  # (B, ..., C)


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

    Without attention dropout the product is ``F.scaled_dot_product_attention`` (fused on the CPU);
    with it, the same formula written out, the dropout applied to the attention weights.
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
        q, k, v = qkv[0], qkv[1], qkv[2]                                              # each (B, h, N, d)
        if self.attn_drop.p:
            attn = self.attn_drop(F.softmax((q * self.scale) @ k.swapaxes(-2, -1), dim=-1))  # (B, h, N, N)
            x = attn @ v                                                              # (B, h, N, d)
        else:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)             # (B, h, N, d)
        x = x.swapaxes(1, 2).reshape(B, H, W, C)                                      # (B, H, W, C)
        return self.proj_drop(self.proj(x))                                           # (B, H, W, C)


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

    As in ``Attention``: ``F.scaled_dot_product_attention`` without attention dropout, written out with it.
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
        kv = self.kv(x).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)   # (2, B, h, N, d)
        k, v = kv[0], kv[1]                                             # each (B, h, N, d)
        q = self.q(x[:, :1]).reshape(B, h, 1, d)                        # (B, h, 1, d): the class token's
        if self.attn_drop.p:
            attn = self.attn_drop(F.softmax((q * self.scale) @ k.swapaxes(-2, -1), dim=-1))  # (B, h, 1, N)
            cls_embed = attn @ v                                        # (B, h, 1, d)
        else:
            cls_embed = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, h, 1, d)
        cls_embed = cls_embed.swapaxes(1, 2).reshape(B, 1, h * d)       # (B, 1, h·d)
        return self.proj_drop(self.proj(cls_embed))                     # (B, 1, C)


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
        cls_embed = x[:, :1] + self.drop_path1(self.attn(self.norm1(x)))         # (B, 1, C)
        cls_embed = cls_embed + self.drop_path2(self.mlp(self.norm2(cls_embed)))  # (B, 1, C)
        return concatenate([cls_embed, x[:, 1:]], axis=1)                         # (B, 1 + N, C)


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
        return self.proj(self.conv(x))  # (B, hidden, H/2, W/2) -> (B, embed_dim, H/p, W/p)


class Downsample(Module):
    """2x2 conv, stride 2, between stages.  x: (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_embed_dim: int, out_embed_dim: int, patch_size: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(in_embed_dim, out_embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NCHW for the conv, then (B, H/2, W/2, C_out)


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
        self.img_size = _pair(img_size, "img_size", "VOLO", minimum=1)
        check_config(self.img_size, patch_size, pooling_scale, layers, embed_dims, num_heads, downsamples,
                     outlook_attention, global_pool, use_mix_token, post_layers)
        mlp_ratio = tuple(mlp_ratio) if isinstance(mlp_ratio, (tuple, list)) else (mlp_ratio,) * len(layers)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.patch_size, self.pooling_scale, self.num_features = patch_size, pooling_scale, embed_dims[-1]
        self.mix_token = use_mix_token
        self.beta = 1.0  # mix-token's lam ~ Beta(beta, beta)

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
    def _embed(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> tokens (B, H/p, W/p, C0)."""
        check_input(x, self.in_chans, self.img_size)
        return self.patch_embed(x).permute(0, 2, 3, 1)  # (B, C0, H/p, W/p) -> channels-last

    def forward_tokens(self, x: Tensor) -> Tensor:
        """(B, H, W, C0) -> (B, N, C): the stages, with pos_embed added before network[2]."""
        for idx, block in enumerate(self.network):
            if idx == 2:  # after the outlookers and the downsample
                x = self.pos_drop(x + self.pos_embed)  # (B, H/2p, W/2p, C) + (1, H/2p, W/2p, C)
            x = block(x)                               # (B, H', W', C'): the stage's grid and width
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C)                  # (B, N, C), N = H·W

    def forward_cls(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, 1 + N, C): prepend the class token, run the class-attention blocks."""
        B, N, C = x.shape
        zeros = Tensor(self.cls_token.xp.zeros((B, 1, C), dtype=x.dtype), device=self.cls_token.device)
        cls_tokens = self.cls_token + zeros  # expand
        x = concatenate([cls_tokens, x], axis=1)  # (B, 1 + N, C)
        for block in self.post_network:
            x = block(x)                          # (B, 1 + N, C): only token 0 changes
        return x

    def _tokens_to_features(self, x: Tensor) -> Tensor:
        x = self.forward_tokens(x)      # (B, N, C)
        if self.post_network is not None:
            x = self.forward_cls(x)     # (B, 1 + N, C)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> normed tokens (B, 1 + N, C) (B, N, C without post_layers)."""
        return self._tokens_to_features(self._embed(x))

    def _pool(self, x: Tensor) -> Tensor:
        if self.global_pool == "avg":
            return x.mean(axis=1)                                 # (B, C)
        return x[:, 0] if self.global_pool == "token" else x      # (B, C), or the tokens (B, 1 + N, C)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features (B, 1 + N, C) -> logits (B, num_classes): head(pooled) + 0.5 · max_tokens aux_head."""
        out = self.head_drop(self._pool(x))  # (B, C)
        if pre_logits:
            return out
        out = self.head(out)                 # (B, num_classes)
        if self.aux_head is not None and self.global_pool:
            out = out + 0.5 * self.aux_head(self.head_drop(x)[:, 1:]).max(axis=1)  # (B, N, classes) -> max over N
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Inference logits (B, num_classes) (no mix-token)."""
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: Tensor, bbox: tuple | None = None):
        """Training forward with token labeling and mix-token, as timm's: ``(cls_logits (B, classes),
        aux_logits (B, N, classes), bbox)`` in train mode; in eval mode the logits of ``forward`` (without
        aux head the class logits alone, as the official code). With ``use_mix_token`` the tokens in ``bbox``
        (drawn as timm when None) come from the batch flipped along B (``mix_tokens``) and their aux logits
        are flipped back; ``mix_token_lambda(bbox)`` weighs the class targets. Else bbox is (0, 0, 0, 0)."""
        x = self._embed(x)                                                       # (B, H, W, C0)
        mixing = self.mix_token and self.training
        if bbox is not None and not mixing:
            raise ValueError("bbox given but mix-token is off (needs use_mix_token=True and train mode)")
        grid = (x.shape[1] // self.pooling_scale, x.shape[2] // self.pooling_scale)  # the pos_embed grid
        if mixing:
            x, bbox = mix_tokens(x, grid, self.pooling_scale, self.beta, bbox, self.post_network is not None)
        x = self._tokens_to_features(x)                                          # (B, 1 + N, C)
        x_cls = self.head(self._pool(x))  # (B, classes) (timm 1.0.31 forgets this head; the official code has it)
        if self.aux_head is None:
            return x_cls
        x_aux = self.aux_head(x[:, 1:])  # (B, N, classes): a prediction for every token (token labeling)
        if not self.training:
            return x_cls + 0.5 * x_aux.max(axis=1)
        if not mixing:
            return x_cls, x_aux, (0, 0, 0, 0)
        B, N, K = x_aux.shape  # put the pasted tokens' predictions back with their own images
        return x_cls, paste_flipped(x_aux.reshape(B, grid[0], grid[1], K), bbox).reshape(B, N, K), bbox

    def mix_token_lambda(self, bbox: tuple) -> float:
        """``mix_token_lambda(bbox, grid)`` on this model's pooled token grid."""
        return mix_token_lambda(bbox, tuple(self.pos_embed.shape[1:3]))


def _zeros_parameter(shape: tuple) -> Parameter:
    return Parameter(backend.array_module(backend.default_device()).zeros(shape, dtype=np.float32))


def _init_weights(m: Module) -> None:
    """timm's init: Linear weights trunc-normal(std .02), biases 0; convs and norms keep their defaults."""
    if isinstance(m, nn.Linear):
        init.trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            init.zeros_(m.bias)
