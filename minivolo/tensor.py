"""Tensor and the autograd graph.

A ``Tensor`` wraps a backend array (``.data``, NumPy or CuPy). Every differentiable op builds its output
with ``Tensor.from_op(data, parents, backward)``: ``backward(g)`` receives the gradient of the loss with
respect to the output (an array shaped like it) and returns one gradient array (or None) per parent.
Forward and backward of each op therefore sit side by side.

``loss.backward()`` walks the graph in reverse topological order (found iteratively, so a graph of any
depth works), sums the gradients of tensors used more than once, reduces broadcast gradients back to the
parent's shape, and stores ``.grad`` on the leaves. Each node's closure, and the arrays it captured,
are dropped as soon as it has run, unless ``retain_graph=True``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import numpy as np

from . import backend

_grad_enabled = True


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) that records no graph: outputs have ``requires_grad=False``."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev


def is_grad_enabled() -> bool:
    return _grad_enabled


def _as_array(data, dtype=None, device=None):
    """The backend array for ``data``; Python floats/lists become float32 (the default dtype)."""
    if isinstance(data, Tensor):
        data = data.data
    if backend.is_array(data):
        arr = data
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype.kind == "f" and not isinstance(data, np.generic):
            arr = arr.astype(np.float32)
    if device is not None and backend.device_of(arr) != device:
        arr = backend.to_device(arr, device)
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def unbroadcast(g, shape: tuple):
    """Sum ``g`` over the axes that broadcasting added or stretched, so that it has ``shape``."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g.reshape(shape)


def _axis(axis, dim):
    """Accept PyTorch's ``dim`` as an alias of NumPy's ``axis``."""
    a = axis if dim is None else dim
    return tuple(a) if isinstance(a, list) else a


def _count(shape: tuple, axis) -> int:
    """How many elements a reduction over ``axis`` (None, an int or a tuple) combines into each output."""
    if axis is None:
        return int(np.prod(shape))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([shape[a] for a in axes]))


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
    """The dtype PyTorch gives an elementwise op on ``operands`` (Tensors, arrays, Python numbers)."""
    first = operands[0]
    if isinstance(first, Tensor) and all(  # the common case, answered quickly: one dtype, maybe numbers
            x.dtype == first.dtype if isinstance(x, Tensor) else
            first.dtype.kind == "f" and isinstance(x, (bool, int, float)) for x in operands[1:]):
        return first.dtype
    groups = [None, None, None]  # tensors with dims, 0-d tensors, Python numbers
    for x in operands:
        if isinstance(x, (bool, int, float, complex)) and not isinstance(x, np.ndarray):
            dtype = np.dtype(np.bool_ if isinstance(x, bool) else np.int64 if isinstance(x, int)
                             else np.float32 if isinstance(x, float) else np.complex64)
            k = 2
        else:
            x = _as_array(x)
            dtype, k = x.dtype, 0 if x.ndim else 1
        groups[k] = _promote_types(groups[k], dtype)
    return _combine(groups[0], _combine(groups[1], groups[2]))


class Tensor:
    """An array with a gradient. ``Tensor(data, requires_grad=False, dtype=None, device=None)``.

    Python floats and lists become float32 (the default dtype); arrays keep their dtype.
    """

    __array_priority__ = 1000  # make ndarray <op> Tensor defer to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        self.data = _as_array(data, dtype, device)
        self.grad: Tensor | None = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self._parents: tuple = ()
        self._backward: Callable | None = None
        self._retain = False
        self._op = ""

    @classmethod
    def from_op(cls, data, parents: Sequence["Tensor"], backward: Callable, op: str = "") -> "Tensor":
        """The output of a differentiable op: records ``parents`` and ``backward`` when a gradient is needed."""
        out = cls.__new__(cls)
        out.data, out.grad, out._retain, out._op = data, None, False, op
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        out._parents = tuple(parents) if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        return out

    # --- properties ----------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._backward is None)
    T = property(lambda self: self.transpose())

    @property
    def xp(self):
        return backend.get_array_module(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad}, device={self.device!r})"

    def numpy(self) -> np.ndarray:
        """A host NumPy array (the same memory on the CPU, a copy from the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retain = True
        return self

    def to(self, device: str) -> "Tensor":
        """This tensor on ``device`` ("cpu" or "cuda"); differentiable; ``self`` when already there."""
        if device == self.device:
            return self
        src = self.device
        return Tensor.from_op(backend.to_device(self.data, device), (self,),
                              lambda g: (backend.to_device(g, src),), "to")

    def astype(self, dtype) -> "Tensor":
        src = self.dtype
        return Tensor.from_op(self.data.astype(dtype), (self,), lambda g: (g.astype(src),), "astype")

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    # --- backward ------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the gradient flowing into ``self`` (same shape); it may be omitted only for a
        single-element tensor, where it is 1.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be omitted only for a single-element output; this one has "
                                   f"shape {self.shape}: pass grad= (an array of that shape)")
            grad = self.xp.ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype, self.device)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, expected the output's shape {self.shape}")

        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None or node._retain:  # a leaf, or asked to keep its gradient
                node.grad = Tensor(g) if node.grad is None else Tensor(node.grad.data + g)
            if node._backward is None:
                continue
            parent_grads = node._backward(g)
            for p, pg in zip(node._parents, parent_grads):
                if pg is None or not p.requires_grad:
                    continue
                pg = unbroadcast(pg, p.shape)
                if pg.dtype != p.dtype:
                    pg = pg.astype(p.dtype)
                key = id(p)
                grads[key] = pg if key not in grads else grads[key] + pg
            if not retain_graph:  # free the closure and everything it captured
                node._backward, node._parents = _freed, ()

    # --- elementwise arithmetic (broadcasting; backward reduces via unbroadcast) -----------------
    def _lift(self, other) -> "Tensor":
        """``other`` as a Tensor on self's device; a number takes the dtype of ``self <op> other``."""
        return _common(self, other)[0][1]

    def _operands(self, other) -> tuple:
        """(other as a Tensor, self's array, other's array), both cast to PyTorch's result dtype."""
        (_, other), (a, b) = _common(self, other)
        return other, a, b

    def __add__(self, other):
        other, a, b = self._operands(other)
        return Tensor.from_op(a + b, (self, other), lambda g: (g, g), "add")

    def __sub__(self, other):
        other, a, b = self._operands(other)
        return Tensor.from_op(a - b, (self, other), lambda g: (g, -g), "sub")

    def __mul__(self, other):
        other, a, b = self._operands(other)
        return Tensor.from_op(a * b, (self, other), lambda g: (
            g * b if self.requires_grad else None, g * a if other.requires_grad else None), "mul")

    def __truediv__(self, other):
        """``a / b``; integer operands give float32 (PyTorch's default dtype), as ``torch.div``."""
        other, a, b = self._operands(other)
        if a.dtype.kind not in "fc":
            a, b = a.astype(np.float32), b.astype(np.float32)
        return Tensor.from_op(a / b, (self, other), lambda g: (
            g / b if self.requires_grad else None,
            -g * a / (b * b) if other.requires_grad else None), "div")

    def __pow__(self, other):
        """``x ** p``: d/dx = p x^(p-1), 0 where p = 0; d/dp = x^p log x, 0 where x = 0 and p >= 0
        (PyTorch's conventions, which avoid 0 * inf = nan at those points)."""
        other, a, b = self._operands(other)
        xp = self.xp
        out = a ** b

        def backward(g):
            ga = xp.where(b == 0, 0, g * b * a ** (b - 1)) if self.requires_grad else None
            if other.requires_grad:
                zero = (a == 0) & (b >= 0)
                gb = xp.where(zero, 0, g * out * xp.log(xp.where(zero, 1, a)))  # no log(0) warning
            else:
                gb = None
            return ga, gb
        return Tensor.from_op(out, (self, other), backward, "pow")

    def __neg__(self):
        return Tensor.from_op(-self.data, (self,), lambda g: (-g,), "neg")

    __radd__ = __add__
    __rmul__ = __mul__
    __rsub__ = lambda self, other: self._lift(other) - self
    __rtruediv__ = lambda self, other: self._lift(other) / self
    __rpow__ = lambda self, other: self._lift(other) ** self

    def __matmul__(self, other):
        """``a @ b`` with NumPy's rules (batch dims broadcast; 1-D operands promoted then squeezed).

        d/da = g @ b^T, d/db = a^T @ g (the batch dims are then summed back by unbroadcast).
        """
        other = self._lift(other)
        a, b = self.data, other.data
        xp = self.xp

        def backward(g):
            a2 = a[None, :] if a.ndim == 1 else a      # (1, n) for a vector on the left
            b2 = b[:, None] if b.ndim == 1 else b      # (n, 1) for a vector on the right
            g2 = g[..., None] if b.ndim == 1 else g
            g2 = xp.expand_dims(g2, -2) if a.ndim == 1 else g2
            ga = gb = None
            if self.requires_grad:
                ga = g2 @ xp.swapaxes(b2, -1, -2)
                ga = ga[..., 0, :] if a.ndim == 1 else ga
            if other.requires_grad:
                gb = xp.swapaxes(a2, -1, -2) @ g2
                gb = gb[..., 0] if b.ndim == 1 else gb
            return ga, gb
        return Tensor.from_op(a @ b, (self, other), backward, "matmul")

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # comparisons give non-differentiable boolean tensors
    def _compare(self, other, fn):
        return Tensor(fn(*self._operands(other)[1:]))

    __lt__ = lambda self, o: self._compare(o, lambda a, b: a < b)
    __le__ = lambda self, o: self._compare(o, lambda a, b: a <= b)
    __gt__ = lambda self, o: self._compare(o, lambda a, b: a > b)
    __ge__ = lambda self, o: self._compare(o, lambda a, b: a >= b)
    __eq__ = lambda self, o: self._compare(o, lambda a, b: a == b)
    __ne__ = lambda self, o: self._compare(o, lambda a, b: a != b)
    __hash__ = object.__hash__

    # --- elementwise functions -----------------------------------------------------------------
    def exp(self):
        out = self.xp.exp(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        x = self.data
        return Tensor.from_op(self.xp.log(x), (self,), lambda g: (g / x,), "log")

    def sqrt(self):
        out = self.xp.sqrt(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g / (2 * out),), "sqrt")

    def tanh(self):
        out = self.xp.tanh(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def abs(self):
        """|x|; the gradient at 0 is 0, as in PyTorch (sign(x))."""
        x = self.data
        return Tensor.from_op(self.xp.abs(x), (self,), lambda g: (g * self.xp.sign(x),), "abs")

    # --- reductions ----------------------------------------------------------------------------
    def sum(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        axis, keepdims = _axis(axis, dim), keepdims if keepdim is None else keepdim
        shape, xp = self.shape, self.xp

        def backward(g):
            if not keepdims and axis is not None:
                g = xp.expand_dims(g, axis)
            return (xp.broadcast_to(g, shape),)
        return Tensor.from_op(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward, "sum")

    def mean(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """``sum / n`` over ``axis``; NaN over an empty axis; floating-point tensors only, as ``torch.mean``."""
        axis, keepdims = _axis(axis, dim), keepdims if keepdim is None else keepdim
        if self.dtype.kind not in "fc":
            raise TypeError(f"mean() needs a floating-point tensor, got dtype {self.dtype}; "
                            "use .float() or .double() first")
        return self.sum(axis, keepdims) / _count(self.shape, axis)

    def max(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """Maximum over ``axis``; ties share the gradient equally (as ``torch.amax``)."""
        axis, keepdims = _axis(axis, dim), keepdims if keepdim is None else keepdim
        x, xp = self.data, self.xp
        out = x.max(axis=axis, keepdims=True)

        def backward(g):
            if not keepdims and axis is not None:
                g = xp.expand_dims(g, axis)
            mask = x == out
            return (mask * (g / mask.sum(axis=axis, keepdims=True)),)
        value = out if keepdims else (out.reshape(()) if axis is None else xp.squeeze(out, axis))
        return Tensor.from_op(value, (self,), backward, "max")

    def var(self, axis=None, unbiased: bool | None = None, keepdims: bool = False, *, correction=None,
            ddof=None, dim=None, keepdim=None):
        """Variance ``sum((x - mean)^2) / max(n - correction, 0)`` over ``axis``, as ``torch.var``.

        correction defaults to 1 (unbiased); ``unbiased=False`` (PyTorch's older argument, second
        positionally as in ``torch.var(dim, unbiased, keepdim)``) means 0, and NumPy's ``ddof`` is
        accepted as another name for it.
        """
        axis, keepdims = _axis(axis, dim), keepdims if keepdim is None else keepdim
        given = [c for c in (correction, ddof, None if unbiased is None else int(unbiased)) if c is not None]
        if len(given) > 1:
            raise ValueError("var: give at most one of correction, ddof and unbiased")
        correction = given[0] if given else 1
        centred = self - self.mean(axis, keepdims=True)
        return (centred * centred).sum(axis, keepdims) / max(_count(self.shape, axis) - correction, 0)

    # --- shape ---------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        src = self.shape
        return Tensor.from_op(self.data.reshape(shape), (self,), lambda g: (g.reshape(src),), "reshape")

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        end = end_dim % self.ndim if self.ndim else 0
        shape = self.shape[:start_dim] + (-1,) + self.shape[end + 1:]
        return self.reshape(shape) if self.ndim else self.reshape(1)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),),
                              "permute")

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
        axis = _axis(axis, dim)
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        drop = {a % max(self.ndim, 1) for a in (axis if isinstance(axis, tuple) else (axis,))}
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if not (i in drop and n == 1)))

    def __getitem__(self, index):
        """Basic (slices, ints, None, ...) and integer-array indexing.

        Backward scatters ``g`` into zeros: plain assignment for basic indexing (each element picked at
        most once), ``add.at`` for integer arrays (the same element may be picked several times).
        """
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index) \
            if isinstance(index, tuple) else (index.data if isinstance(index, Tensor) else index)
        parts = index if isinstance(index, tuple) else (index,)
        advanced = any(backend.is_array(i) or isinstance(i, (list, np.ndarray)) for i in parts)
        x, xp = self.data, self.xp

        def backward(g):
            gx = xp.zeros_like(x)
            if advanced:
                xp.add.at(gx, index, g)
            else:
                gx[index] = g
            return (gx,)
        return Tensor.from_op(x[index], (self,), backward, "getitem")


def _freed(g):
    raise RuntimeError("trying to backward through the graph a second time: its buffers were freed "
                       "by the first backward(); pass retain_graph=True to that call")


def _topological_order(root: Tensor) -> list:
    """Nodes that need a gradient, each after all of its parents (iterative depth-first search)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
    return order


# --- functions of several tensors ------------------------------------------------------------------
def _tensors(items) -> list:
    return [t if isinstance(t, Tensor) else Tensor(t) for t in items]


def _common(*items) -> tuple:
    """``items`` as Tensors and their arrays, the arrays cast to PyTorch's result dtype (``result_type``).

    Numbers and arrays go to the first Tensor's device; a number is converted straight to the result
    dtype (1.0001 * float64 must not pass through float32).
    """
    dtype = result_type(*items)
    device = next((t.device for t in items if isinstance(t, Tensor)), None)
    tensors = [t if isinstance(t, Tensor) else
               Tensor(_as_array(t, dtype if np.isscalar(t) else None, device)) for t in items]
    return tensors, [t.data.astype(dtype, copy=False) for t in tensors]


def concatenate(tensors: Sequence[Tensor], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join along an existing axis (``dim`` as torch.cat); backward splits ``g`` at the same offsets."""
    axis = _axis(axis, dim)
    tensors = _tensors(tensors)
    xp = tensors[0].xp
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return Tensor.from_op(xp.concatenate([t.data for t in tensors], axis=axis), tensors,
                          lambda g: tuple(xp.split(g, bounds, axis=axis)), "concatenate")


cat = concatenate


def stack(tensors: Sequence[Tensor], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join along a new axis (``dim`` as torch.stack); backward takes the slices apart again."""
    axis = _axis(axis, dim)
    tensors = _tensors(tensors)
    xp = tensors[0].xp
    return Tensor.from_op(xp.stack([t.data for t in tensors], axis=axis), tensors,
                          lambda g: tuple(xp.moveaxis(g, axis, 0)), "stack")


def where(condition, x, y) -> Tensor:
    """``x`` where ``condition`` holds, else ``y`` (broadcasting); the gradient goes to the chosen side."""
    cond = condition.data if isinstance(condition, Tensor) else condition
    (x, y), (a, b) = _common(x, y)
    xp = x.xp
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
    """``Tensor(data, ...)`` on the default device ($MINIVOLO_DEVICE) unless ``device`` is given."""
    return Tensor(data, requires_grad, dtype, device or backend.default_device())


def _tensor_fn(name: str):
    @functools.wraps(getattr(Tensor, name))
    def fn(x, *args, **kwargs):
        return getattr(x if isinstance(x, Tensor) else Tensor(x), name)(*args, **kwargs)
    return fn


exp, log, sqrt, tanh, abs = (_tensor_fn(n) for n in ("exp", "log", "sqrt", "tanh", "abs"))
