"""Tensor and the autograd graph.

A ``Tensor`` wraps a backend array (``.data``, NumPy or CuPy). Every differentiable op builds its output
with ``Tensor.from_op(data, parents, backward)``: ``backward(g)`` receives the gradient of the loss with
respect to the output (an array shaped like it) and returns one gradient array (or None) per parent.
Forward and backward of each op therefore sit side by side.

``loss.backward()`` walks the graph in reverse topological order (found iteratively, so a graph of any
depth works), sums the gradients of tensors used more than once, reduces broadcast gradients back to the
parent's shape, and stores ``.grad`` on the leaves. Each node's closure, and the arrays it captured,
are dropped as soon as it has run, unless ``retain_graph=True``.

Here: the primitive ops, each with its backward. Composed methods (mean, var, transpose, squeeze, ...)
and torch's type promotion: ``parity.py``; cat, stack, where and maximum: ``tensor_functions.py``."""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np

from . import backend, parity


class Tensor(parity.TorchMethods):
    """An array with a gradient. ``Tensor(data, requires_grad=False, dtype=None, device=None)``.

    Python floats and lists become float32 (the default dtype); arrays keep their dtype. Host data
    (NumPy arrays, numbers, lists) goes to ``device``, else the default device ($MINIVOLO_DEVICE), as
    torch.tensor after torch.set_default_device; a device array stays on its device.
    """

    __array_priority__ = 1000  # make ndarray <op> Tensor defer to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        data = data.data if isinstance(data, Tensor) else data
        if device is None and parity.on_host(data):
            device = backend.default_device()
        self.data = parity.as_array(data, dtype, device)
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
        return Tensor.from_op(self.data, (), None)  # where the data is (Tensor() would move host data)

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
            grad = parity.as_array(grad.data if isinstance(grad, Tensor) else grad, self.dtype, self.device)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, expected the output's shape {self.shape}")

        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None or node._retain:  # a leaf, or asked to keep its gradient
                node.grad = Tensor.from_op(g if node.grad is None else node.grad.data + g, (), None)
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
            ga = xp.where(b == 0, 0, g * b * xp.where(b == 0, 1, a) ** (b - 1)) if self.requires_grad else None
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

    # comparisons give non-differentiable boolean tensors
    def _compare(self, other, fn):
        return Tensor.from_op(fn(*self._operands(other)[1:]), (), None)

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
        axis, keepdims = parity.reduce_args(axis, dim, keepdims, keepdim)
        shape, xp = self.shape, self.xp

        def backward(g):
            if not keepdims and axis is not None:
                g = xp.expand_dims(g, axis)
            return (xp.broadcast_to(g, shape),)
        return Tensor.from_op(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward, "sum")

    def max(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """Maximum over ``axis``; ties share the gradient equally (as ``torch.amax``)."""
        axis, keepdims = parity.reduce_args(axis, dim, keepdims, keepdim)
        x, xp = self.data, self.xp
        if parity.reduced_count(self.shape, axis) == 0:
            raise ValueError(f"max: the maximum over an empty dim is undefined (input shape {self.shape}, "
                             f"axis {axis}); reduce over non-empty dims only")
        out = x.max(axis=axis, keepdims=True)

        def backward(g):
            if not keepdims and axis is not None:
                g = xp.expand_dims(g, axis)
            mask = x == out
            return (mask * (g / mask.sum(axis=axis, keepdims=True)),)
        value = out if keepdims else (out.reshape(()) if axis is None else xp.squeeze(out, axis))
        return Tensor.from_op(value, (self,), backward, "max")

    # --- shape ---------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        src = self.shape
        if -1 in shape and 0 in shape:  # any size fits -1 (NumPy's error would speak of "newaxis")
            raise ValueError(f"reshape: -1 is ambiguous for a tensor of 0 elements (shape {src}); "
                             f"give every size of {tuple(shape)}")
        return Tensor.from_op(self.data.reshape(shape), (self,), lambda g: (g.reshape(src),), "reshape")

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),),
                              "permute")

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


def _topological_order(root: Tensor, constants: bool = False) -> list:
    """Nodes that need a gradient (and the constants, when asked), each after its parents (iterative DFS)."""
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
        stack.extend((p, False) for p in node._parents if (constants or p.requires_grad) and id(p) not in seen)
    return order


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


def _one_device(name: str, items) -> str | None:
    """The device of the Tensors among ``items`` (None if none); RuntimeError naming two devices, as torch."""
    devices = [(i, t.device) for i, t in enumerate(items) if isinstance(t, Tensor)]
    other = next(((i, d) for i, d in devices if d != devices[0][1]), None)
    if other:
        raise RuntimeError(f"{name + ': ' if name else ''}expected all tensors on the same device, but found at least "
                           f"two devices, {devices[0][1]} (tensor {devices[0][0]}) and {other[1]} (tensor {other[0]})")
    return devices[0][1] if devices else None


def _common(*items) -> tuple:
    """``items`` as Tensors and their arrays, the arrays cast to PyTorch's result dtype (``result_type``).

    Numbers and arrays go to the first Tensor's device; a number is filled in there straight in the
    result dtype (1.0001 * float64 must not pass through float32), without a host array to copy.
    """
    dtype = parity.result_type(*(t.data if isinstance(t, Tensor) else parity.as_array(t) if not isinstance(
        t, parity.NUMBERS) else t.item() if isinstance(t, np.generic) else t for t in items))
    device = _one_device("", items) or backend.default_device()
    tensors = [t if isinstance(t, Tensor) else Tensor(backend.array_module(device).full((), t, dtype)
                                                      if np.isscalar(t) else t, device=device) for t in items]
    return tensors, [t.data.astype(dtype, copy=False) for t in tensors]


from .tensor_functions import cat, concatenate, maximum, stack, where  # noqa: E402,F401  (importable from here too)
