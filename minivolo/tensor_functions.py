"""Functions of tensors: joins and choices of several tensors, and the elementwise methods as functions.

    concatenate / cat, stack   join along an existing / a new axis
    where, maximum             elementwise choice between two tensors (broadcasting, torch's promotion)
    tensor(data, ...)          Tensor(data, ...): host data on the default device
    exp, log, sqrt, tanh, abs  ``Tensor`` methods as functions
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from . import parity
from .tensor import Tensor, _common, _one_device


def _tensors(name: str, items) -> list:
    """``items`` as Tensors on one device, host data joining the tensors' device; RuntimeError naming the
    devices when the tensors are on different ones, as torch."""
    device = _one_device(name, items)
    return [t if isinstance(t, Tensor) else Tensor(t, device=device) for t in items]


def concatenate(tensors: Sequence[Tensor], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join along an existing axis (``dim`` as torch.cat); backward splits ``g`` at the same offsets."""
    axis = parity.axis_arg(axis, dim)
    tensors = _tensors("cat", list(tensors))
    xp = tensors[0].xp
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return Tensor.from_op(xp.concatenate([t.data for t in tensors], axis=axis), tensors,
                          lambda g: tuple(xp.split(g, bounds, axis=axis)), "concatenate")


cat = concatenate


def stack(tensors: Sequence[Tensor], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join along a new axis (``dim`` as torch.stack); backward takes the slices apart again."""
    axis = parity.axis_arg(axis, dim)
    tensors = _tensors("stack", list(tensors))
    xp = tensors[0].xp
    return Tensor.from_op(xp.stack([t.data for t in tensors], axis=axis), tensors,
                          lambda g: tuple(xp.moveaxis(g, axis, 0)), "stack")


def where(condition, x, y) -> Tensor:
    """``x`` where ``condition`` holds, else ``y`` (broadcasting); the gradient goes to the chosen side.
    A host condition (array, list) joins the device of x and y."""
    (x, y), (a, b) = _common(x, y)
    cond, xp = _tensors("where", [condition, x])[0].data, x.xp
    return Tensor.from_op(xp.where(cond, a, b), (x, y),
                          lambda g: (xp.where(cond, g, 0), xp.where(cond, 0, g)), "where")


def maximum(a, b) -> Tensor:
    """Elementwise max; at ties the gradient is split in half, as ``torch.maximum``."""
    (a, b), (x, y) = _common(a, b)
    xp = a.xp

    def backward(g):
        wa = (x > y) + 0.5 * (x == y)
        return g * wa.astype(g.dtype), g * (1 - wa).astype(g.dtype)
    return Tensor.from_op(xp.maximum(x, y), (a, b), backward, "maximum")


def tensor(data, requires_grad: bool = False, dtype=None, device: str | None = None) -> Tensor:
    """``Tensor(data, ...)``: host data on ``device``, else the default device ($MINIVOLO_DEVICE)."""
    return Tensor(data, requires_grad, dtype, device)


def _tensor_fn(name: str):
    @functools.wraps(getattr(Tensor, name))
    def fn(x, *args, **kwargs):
        return getattr(x if isinstance(x, Tensor) else Tensor(x), name)(*args, **kwargs)
    return fn


exp, log, sqrt, tanh, abs = (_tensor_fn(n) for n in ("exp", "log", "sqrt", "tanh", "abs"))
