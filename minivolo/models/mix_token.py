"""Mix-token (VOLO's training-time CutMix on tokens), as timm's ``rand_bbox`` and ``VOLO.forward_train``.

A box is drawn on the pooled token grid (lam ~ Beta(1, 1), side n·sqrt(1 − lam)); the tokens inside it are
taken from the batch flipped along B, and after the network the aux logits inside it are flipped back.
The class targets are mixed by ``mix_token_lambda`` (the share of tokens that kept their own image).
"""
from __future__ import annotations

import numpy as np

from .. import backend, distributed
from ..tensor import Tensor, where

__all__ = ["rand_bbox", "mix_token_lambda", "check_bbox", "paste_flipped", "mix_tokens"]


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


def check_bbox(bbox: tuple, grid_hw: tuple) -> tuple:
    """``bbox`` as four ints inside the pooled token grid, or a ValueError that says what was expected."""
    bbox = tuple(int(b) for b in bbox)
    if not (0 <= bbox[0] <= bbox[2] <= grid_hw[0] and 0 <= bbox[1] <= bbox[3] <= grid_hw[1]):
        raise ValueError(f"bbox {bbox} must satisfy 0 <= bbx1 <= bbx2 <= {grid_hw[0]} and "
                         f"0 <= bby1 <= bby2 <= {grid_hw[1]} (the pooled token grid)")
    return bbox


def paste_flipped(x: Tensor, box: tuple) -> Tensor:
    """x (B, H, W, C) with the tokens inside box (rows r1:r2, columns c1:c2) taken from x.flip(0)."""
    r1, c1, r2, c2 = box
    rows = x.xp.arange(x.shape[1]).reshape(1, -1, 1, 1)  # built on x's device: no host array to copy
    cols = x.xp.arange(x.shape[2]).reshape(1, 1, -1, 1)
    inside = (rows >= r1) & (rows < r2) & (cols >= c1) & (cols < c2)  # (1, H, W, 1), broadcast over B and C
    # x.flip(0) of the global batch: in a data-parallel run the partner rows live on another process
    return where(inside, distributed.flip_batch(x), x)


def mix_tokens(x: Tensor, grid_hw: tuple, pooling_scale: int, beta: float, bbox: tuple | None = None,
               class_token: bool = True):
    """Mix-token on tokens x (B, H, W, C): returns (x with the tokens of a box taken from x.flip(0), bbox).

    The box is ``bbox`` (checked) or drawn as timm: lam ~ Beta(beta, beta), ``rand_bbox``, on the pooled
    grid ``grid_hw``; it covers ``pooling_scale`` times as many tokens per side on x's grid. The model
    must have a ``class_token`` (post_layers), so that the aux logits are those of the image tokens."""
    if not class_token:
        raise ValueError("mix-token needs post_layers (the class token): without it token 0 is an "
                         "image token and the aux logits miss one")
    if bbox is None:
        bbox = rand_bbox(grid_hw, float(backend.generator("cpu").beta(beta, beta)))
    bbox = check_bbox(bbox, grid_hw)
    return paste_flipped(x, tuple(pooling_scale * b for b in bbox)), bbox
