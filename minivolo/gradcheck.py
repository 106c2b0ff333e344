"""Finite-difference gradient checking, as a library feature.

``gradcheck(fn, *inputs)`` compares the gradient that autograd computes for every input with
``requires_grad=True`` against central differences

    d<fn(x), r>/dx_i  ~=  (<fn(x + eps e_i), r> - <fn(x - eps e_i), r>) / (2 eps)

where ``r`` is a fixed random weighting of the outputs (one backward pass then checks the whole
Jacobian-vector product). Run it in float64: in float32 the differences drown in rounding.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by gradcheck when an analytic gradient disagrees with the numeric one."""


def _outputs(result) -> list:
    return [result] if isinstance(result, Tensor) else [t for t in result if isinstance(t, Tensor)]


def gradcheck(fn: Callable, *inputs: Tensor, eps: float = 1e-6, atol: float = 1e-7, rtol: float = 1e-5,
              seed: int = 0, raise_exception: bool = True) -> bool:
    """Check autograd's gradients of ``fn(*inputs)`` against central finite differences.

    inputs: Tensors (float64 for a meaningful check); those with ``requires_grad=True`` are checked.
    fn may return a Tensor or a tuple of Tensors. Returns True when every element satisfies
    ``|analytic - numeric| <= atol + rtol * |numeric|``; otherwise raises ``GradcheckError`` (or returns
    False when ``raise_exception=False``) with a report naming the input, the index and both values.
    """
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; use float64 "
                            "(finite differences in float32 are dominated by rounding)")
    for i in checked:  # a private C-contiguous copy: nudging its flat view must nudge the input itself
        inputs[i].data = inputs[i].data.copy(order="C")  # (a transposed or broadcast view would not be reached)
    rng = np.random.default_rng(seed)
    outs = _outputs(fn(*inputs))
    weights = [backend.to_device(rng.standard_normal(o.shape), o.device).astype(o.dtype) for o in outs]

    def objective() -> float:
        with no_grad():
            return float(sum(float((o.data * w).sum()) for o, w in zip(_outputs(fn(*inputs)), weights)))

    for i in checked:
        inputs[i].grad = None
    total = None
    for o, w in zip(outs, weights):
        if o.requires_grad:
            term = (o * Tensor(w, device=o.device)).sum()
            total = term if total is None else total + term
    if total is None:
        raise GradcheckError("gradcheck: no output depends on an input that requires grad")
    total.backward()

    problems = []
    for i in checked:
        x = inputs[i]
        analytic = np.zeros(x.shape) if x.grad is None else backend.to_numpy(x.grad.data)
        numeric = np.zeros(x.shape)
        flat = x.data.reshape(-1)  # a view: nudging it nudges the input
        for k in range(flat.size):
            orig = flat[k].item()
            flat[k] = orig + eps
            plus = objective()
            flat[k] = orig - eps
            minus = objective()
            flat[k] = orig
            numeric.reshape(-1)[k] = (plus - minus) / (2 * eps)
        bad = np.abs(analytic - numeric) > atol + rtol * np.abs(numeric)
        if bad.any():
            idx = np.unravel_index(int(np.argmax(np.abs(analytic - numeric) * bad)), x.shape)
            problems.append(f"input {i} (shape {x.shape}): {int(bad.sum())} of {x.size} elements differ; "
                            f"worst at index {tuple(int(j) for j in idx)}: analytic {analytic[idx]:.10g}, "
                            f"numeric {numeric[idx]:.10g}")
    if problems:
        if raise_exception:
            raise GradcheckError("gradcheck failed:\n  " + "\n  ".join(problems))
        return False
    return True
