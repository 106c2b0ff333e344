"""Run the same computation in minivolo and in PyTorch (the oracle) and compare values and gradients.

    check_against_torch(mv_fn, torch_fn, arrays, atol=..., rtol=...)

``arrays`` are NumPy arrays; each becomes a minivolo Tensor and a torch tensor with requires_grad (float
arrays only). Both functions return one tensor or a tuple; the outputs are compared, then both sides
backpropagate the same random weighting of the outputs and every input gradient is compared.
"""
from __future__ import annotations

import numpy as np

import minivolo as mv

torch = __import__("pytest").importorskip(
    "torch", reason="this module compares minivolo with torch (the test oracle), which is not installed: "
    "pip install 'minivolo[test]'; the checks that need no torch are in the test_*_math.py files")

TOL = {np.float64: dict(atol=1e-10, rtol=1e-10), np.float32: dict(atol=1e-5, rtol=1e-4)}


def tol(dtype) -> dict:
    return TOL[np.dtype(dtype).type]


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_against_torch(mv_fn, torch_fn, arrays, atol=None, rtol=None, seed=0, grad=True):
    """Compare outputs and input gradients of ``mv_fn(*Tensors)`` and ``torch_fn(*torch tensors)``.

    Returns the minivolo outputs (for further assertions)."""
    dtype = next((a.dtype for a in arrays if np.asarray(a).dtype.kind == "f"), np.float64)
    t = tol(dtype)
    atol = t["atol"] if atol is None else atol
    rtol = t["rtol"] if rtol is None else rtol
    mv_in = [mv.Tensor(np.array(a), requires_grad=grad and np.asarray(a).dtype.kind == "f") for a in arrays]
    th_in = [torch.tensor(np.array(a), requires_grad=grad and np.asarray(a).dtype.kind == "f") for a in arrays]
    mv_out = _as_tuple(mv_fn(*mv_in))
    th_out = _as_tuple(torch_fn(*th_in))
    assert len(mv_out) == len(th_out)
    for i, (m, p) in enumerate(zip(mv_out, th_out)):
        pn = p.detach().numpy()
        assert m.shape == pn.shape, f"output {i}: shape {m.shape} != torch {pn.shape}"
        assert m.dtype == pn.dtype, f"output {i}: dtype {m.dtype} != torch {pn.dtype}"
        np.testing.assert_allclose(m.numpy(), pn, atol=atol, rtol=rtol, err_msg=f"output {i}")
    if not grad:
        return mv_out
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(p.shape).astype(p.detach().numpy().dtype) for p in th_out]
    diff = [(m, p, w) for m, p, w in zip(mv_out, th_out, weights) if p.requires_grad]
    if not diff:
        return mv_out
    mv_loss = sum(((m * mv.Tensor(w)).sum() for m, _, w in diff[1:]), (diff[0][0] * mv.Tensor(diff[0][2])).sum())
    th_loss = sum((p * torch.tensor(w)).sum() for _, p, w in diff)
    mv_loss.backward()
    th_loss.backward()
    for i, (m, p) in enumerate(zip(mv_in, th_in)):
        if not p.requires_grad:
            continue
        pg = None if p.grad is None else p.grad.numpy()
        mg = None if m.grad is None else m.grad.numpy()
        if pg is None:
            assert mg is None or not np.any(mg), f"input {i}: torch has no gradient, minivolo has one"
            continue
        assert mg is not None, f"input {i}: minivolo produced no gradient"
        assert mg.shape == pg.shape and mg.dtype == pg.dtype, f"input {i}: grad {mg.shape}/{mg.dtype}"
        np.testing.assert_allclose(mg, pg, atol=atol, rtol=rtol, err_msg=f"gradient of input {i}")
    return mv_out
