"""PyTorch-parity rules that the autograd core follows but a reader of ``tensor.py`` need not study.

    as_array(data, dtype, device)   a backend array; Python floats become float32 (torch's default dtype)
    on_host(data)                   True for host data (NumPy arrays, numbers, lists without device arrays)
    result_type(*operands)          the dtype torch gives an elementwise op (torch.result_type)
    axis_arg, reduce_args           NumPy's ``axis``/``keepdims`` or PyTorch's ``dim``/``keepdim``
    var_correction                  ``var``'s correction from ``correction``, ``unbiased`` or ``ddof``
    TorchMethods                    the Tensor methods composed of its primitives (mean, var, transpose,
                                    squeeze, ...), with PyTorch's signatures; Tensor inherits them

Operands here are backend arrays and Python numbers; ``tensor.py`` unwraps its Tensors before asking.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend

NUMBERS = (bool, int, float, complex)  # Python numbers


def _is_number(x) -> bool:
    """A Python number; NumPy scalars (np.float64 subclasses float) count as 0-d arrays here."""
    return isinstance(x, NUMBERS) and not isinstance(x, np.generic)


# PyTorch's type promotion (torch.result_type), which differs from NumPy's in two ways: int with float
# gives the float type (int32 + float32 -> float32), and an operand only raises the result's *category*
# (bool < integer < floating) unless it is a tensor with dims: 0-d tensors and Python numbers of the
# same category never widen it (float32 + float64 0-d tensor -> float32; int32 + 5 -> int32), and a
# Python float meeting integers gives float32, the default dtype.
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _promote_types(a, b):
    """torch.promote_types: NumPy's rule within a category, the higher category's type across them."""
    if a is None or b is None:
        return a if b is None else b
    ca, cb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    return np.promote_types(a, b) if ca == cb or max(ca, cb) == 3 else (a if ca > cb else b)


def _combine(higher, lower):
    """Let a lower-priority group of operands raise the result only to a higher category."""
    if higher is None or lower is None:
        return higher if lower is None else lower
    if _CATEGORY[higher.kind] >= 2:
        return higher
    return _promote_types(higher, lower) if higher.kind == "b" or _CATEGORY[lower.kind] >= 2 else higher


def result_type(*operands) -> np.dtype:
    """The dtype PyTorch gives an elementwise op on ``operands`` (backend arrays and Python numbers;
    a caller passes NumPy scalars that stand for numbers, such as np.float64, as Python numbers)."""
    first = operands[0]
    if not _is_number(first) and all(  # the common case, answered quickly: one dtype, maybe numbers
            x.dtype == first.dtype if not _is_number(x) else
            first.dtype.kind == "f" and not isinstance(x, complex) for x in operands[1:]):
        return first.dtype
    groups = [None, None, None]  # arrays with dims, 0-d arrays, Python numbers
    for x in operands:
        if _is_number(x):
            dtype = np.dtype(np.bool_ if isinstance(x, bool) else np.int64 if isinstance(x, int)
                             else np.float32 if isinstance(x, float) else np.complex64)
            k = 2
        else:
            dtype, k = x.dtype, 0 if x.ndim else 1
        groups[k] = _promote_types(groups[k], dtype)
    return _combine(groups[0], _combine(groups[1], groups[2]))


def _first_array(data):
    """The first backend array in a nested list, or None."""
    for d in data:
        found = d if backend.is_array(d) else _first_array(d) if isinstance(d, (list, tuple)) else None
        if found is not None:
            return found
    return None


def on_host(data) -> bool:
    """True for host data: NumPy arrays, numbers, (nested) lists that hold no device array."""
    return backend.device_of(_first_array(data) if isinstance(data, (list, tuple)) else data) == "cpu"


def _stack(data, xp):
    return xp.stack([_stack(d, xp) for d in data]) if isinstance(data, (list, tuple)) else xp.asarray(data)


def as_array(data, dtype=None, device=None):
    """The backend array for ``data`` (not a Tensor); Python floats and lists of floats become float32,
    torch's default dtype (NumPy's would be float64); arrays and NumPy scalars keep their dtype. A list
    of device arrays (0-d losses, say) is stacked on their device, without a trip through the host."""
    if backend.is_array(data):
        arr = data
    elif isinstance(data, (list, tuple)) and not on_host(data):
        arr = _stack(data, backend.get_array_module(_first_array(data)))
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype.kind == "f" and not isinstance(data, np.generic):
            arr = arr.astype(np.float32)
    if device is not None and backend.device_of(arr) != device:
        arr = backend.to_device(arr, device)
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def axis_arg(axis, dim):
    """Accept PyTorch's ``dim`` as an alias of NumPy's ``axis`` (a list of axes becomes a tuple)."""
    a = axis if dim is None else dim
    return tuple(a) if isinstance(a, list) else a


def reduce_args(axis, dim, keepdims: bool, keepdim) -> tuple:
    """(axis, keepdims) of a reduction called with NumPy's or PyTorch's argument names."""
    return axis_arg(axis, dim), keepdims if keepdim is None else keepdim


def var_correction(correction, ddof, unbiased) -> int:
    """``var``'s correction from torch's ``correction`` or older ``unbiased``, or NumPy's ``ddof``; 1 if none."""
    given = [c for c in (correction, ddof, None if unbiased is None else int(unbiased)) if c is not None]
    if len(given) > 1:
        raise ValueError("var: give at most one of correction, ddof and unbiased")
    return given[0] if given else 1


def reduced_count(shape: tuple, axis) -> int:
    """How many elements a reduction over ``axis`` (None, an int or a tuple) combines into each output."""
    if axis is None:
        return int(np.prod(shape))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([shape[a] for a in axes]))


class TorchMethods:
    """``Tensor`` methods composed of its primitive ops (so they need no backward of their own), with
    PyTorch's names and signatures: dtype casts, reflected operators, mean and var, and the shape
    conveniences (view, flatten, transpose, swapaxes, unsqueeze, squeeze)."""

    T = property(lambda self: self.transpose())

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    __rsub__ = lambda self, other: self._lift(other) - self
    __rtruediv__ = lambda self, other: self._lift(other) / self
    __rpow__ = lambda self, other: self._lift(other) ** self

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    def mean(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """``sum / n`` over ``axis``; NaN over an empty axis; floating-point tensors only, as ``torch.mean``."""
        axis, keepdims = reduce_args(axis, dim, keepdims, keepdim)
        if self.dtype.kind not in "fc":
            raise TypeError(f"mean() needs a floating-point tensor, got dtype {self.dtype}; "
                            "use .float() or .double() first")
        n = reduced_count(self.shape, axis)
        return self.sum(axis, keepdims) / n if n else self.sum(axis, keepdims) * math.nan  # 0/0 quietly

    def var(self, axis=None, unbiased: bool | None = None, keepdims: bool = False, *, correction=None,
            ddof=None, dim=None, keepdim=None):
        """Variance ``sum((x - mean)^2) / max(n - correction, 0)`` over ``axis``, as ``torch.var``.

        correction defaults to 1 (unbiased); ``unbiased=False`` (PyTorch's older argument, second
        positionally as in ``torch.var(dim, unbiased, keepdim)``) means 0, and NumPy's ``ddof`` is
        accepted as another name for it.
        """
        axis, keepdims = reduce_args(axis, dim, keepdims, keepdim)
        correction = var_correction(correction, ddof, unbiased)
        centred = self - self.mean(axis, keepdims=True)
        return (centred * centred).sum(axis, keepdims) / max(reduced_count(self.shape, axis) - correction, 0)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        start, end = (start_dim % self.ndim, end_dim % self.ndim) if self.ndim else (0, 0)
        shape = self.shape[:start] + (math.prod(self.shape[start:end + 1]),) + self.shape[end + 1:]
        return self.reshape(shape) if self.ndim else self.reshape(1)

    def transpose(self, *axes):
        """``transpose(dim0, dim1)`` swaps two dims, as ``torch.Tensor.transpose``; otherwise NumPy's:
        ``transpose()`` reverses all dims and ``transpose(perm)`` / ``transpose(*perm)`` permutes them.

        Two ints always mean a swap, so for a 2-D tensor ``transpose(0, 1)`` is the transpose (PyTorch),
        not NumPy's identity permutation; pass a tuple, ``transpose((0, 1))``, for the permutation.
        """
        if len(axes) == 2 and all(isinstance(a, (int, np.integer)) for a in axes):
            return self.swapaxes(*axes)
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return self.permute(axes or tuple(range(self.ndim))[::-1])

    def swapaxes(self, axis1: int, axis2: int):
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return self.permute(axes)

    def unsqueeze(self, axis: int):
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis=None, *, dim=None):
        """Drop the size-1 dims among ``axis`` (an int, a tuple, or all when None); others stay, as torch."""
        axis = axis_arg(axis, dim)
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        drop = {a % max(self.ndim, 1) for a in (axis if isinstance(axis, tuple) else (axis,))}
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if not (i in drop and n == 1)))
