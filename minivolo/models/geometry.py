"""Checks for ``VOLO``: a configuration whose forward would fail is refused before any weight is drawn,
and an input the model cannot take is refused before it runs, with a message that names the argument."""
from __future__ import annotations

import math

__all__ = ["check_config", "check_geometry", "check_input", "outlook_grid"]


def check_config(img_size: tuple, patch_size: int, pooling_scale: int, layers, embed_dims, num_heads, downsamples,
                 outlook_attention, global_pool: str, use_mix_token: bool, post_layers) -> None:
    """Every check of VOLO's constructor arguments (``check_geometry`` for the shapes)."""
    if embed_dims is None or num_heads is None:
        raise ValueError("VOLO needs embed_dims and num_heads (one per stage)")
    if global_pool not in ("", "avg", "token"):
        raise ValueError(f"global_pool must be '', 'avg' or 'token', got {global_pool!r}")
    if use_mix_token and global_pool != "token":
        raise ValueError("use_mix_token needs global_pool='token' (mix-token returns all tokens)")
    if any(block != "ca" for block in post_layers or ()):
        raise ValueError(f"post_layers may only contain 'ca' (class attention), got {post_layers}")
    check_geometry(img_size, patch_size, pooling_scale, layers, embed_dims, num_heads, downsamples,
                   outlook_attention)


def check_input(x, in_chans: int, img_size: tuple) -> None:
    """x must be an image batch (B, in_chans, *img_size)."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels (in_chans), got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if tuple(x.shape[2:]) != img_size:
        raise ValueError(f"expected image {img_size[0]}x{img_size[1]} (img_size), got "
                         f"{x.shape[2]}x{x.shape[3]}; build the model with img_size={x.shape[2]} "
                         "(load_pretrained resizes pos_embed)")


def check_geometry(img_size: tuple, patch_size: int, pooling_scale: int, layers, embed_dims, num_heads,
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


def outlook_grid(size: tuple, kernel_size: int, padding: int, stride: int) -> tuple:
    """The (oh, ow) = (ceil(H/s), ceil(W/s)) window centres of outlook attention on an H×W map, or a
    ValueError when kernel_size and padding give the windows another count (fold could not add back)."""
    k, p, s = kernel_size, padding, stride
    grid = tuple(math.ceil(n / s) for n in size)
    if tuple((n + 2 * p - k) // s + 1 for n in size) != grid:
        raise ValueError(f"OutlookAttention(kernel_size={k}, padding={p}, stride={s}) needs "
                         f"ceil(H/stride) windows per axis; an {size[0]}x{size[1]} map gives a different count")
    return grid
