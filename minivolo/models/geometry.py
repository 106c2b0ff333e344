"""Configuration checks for ``VOLO``: a configuration whose forward would fail is refused before any
weight is drawn, with a message that names the argument to change."""
from __future__ import annotations

__all__ = ["check_geometry"]


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
