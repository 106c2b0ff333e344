"""Scaled dot-product attention, named and behaving as ``torch.nn.functional.scaled_dot_product_attention``.

    S = scale q k^T          (*, L, S)      scale = 1/sqrt(E) unless given
    P = softmax(S)           rows sum to 1
    O = P v                  (*, L, Ev)

The reference is that composition of Tensor ops (matmul, softmax, matmul) over whole arrays; its backward
comes from the three ops. On the CPU the fused path (``ATTENTION_IMPL``) runs it block by block of
(batch, head) slices so that each block's L x S scores stay in the cache, with the backward written out.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..tensor import Tensor
from . import nn
from .nn import _split

__all__ = ["scaled_dot_product_attention"]

# Which attention computes: "reference" is the composition matmul, softmax, matmul on whole arrays (the
# GPU's always); "auto" takes ``_attention_blocks`` for non-empty NumPy arrays. The fused path is softmax's
# fast path fused with its two matmuls, so it also follows ``nn.SOFTMAX_IMPL``: with softmax's reference
# asked for (as the CPU/GPU bit-for-bit tests do), or ``F.softmax`` replaced (a notebook recording the
# attention maps), attention composes the reference, which calls ``F.softmax``.
ATTENTION_IMPL = "auto"
ATTENTION_BLOCK = 1 << 18  # score elements per block (1 MiB of float32 scores; their gradient as much)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """``softmax(scale q k^T) v``.  query (*, L, E), key (*, S, E), value (*, S, Ev) -> (*, L, Ev).

    The batch dims ``*`` (any number, none included) must be equal in the three (no broadcasting);
    scale defaults to 1/sqrt(E). attn_mask, dropout_p > 0 and is_causal are not supported (VOLO uses
    none of them): they raise instead of being ignored.

    Backward, with D = rowsum(dP * P) = rowsum(dO * O):
        dV = P^T dO,   dP = dO v^T,   dS = P * (dP - D),   dq = scale dS k,   dk = scale dS^T q.
    Fused on the CPU (``ATTENTION_IMPL``): scores, softmax and products block by block in cache-sized
    buffers, only the unnormalised P kept whole for the backward; on a GPU, and as the reference, the
    three ops above over whole arrays.
    """
    if attn_mask is not None:
        raise NotImplementedError("scaled_dot_product_attention: attn_mask is not supported (got one); "
                                  "compose softmax((q * scale) @ k^T + mask) @ v instead")
    if dropout_p != 0.0:
        raise NotImplementedError(f"scaled_dot_product_attention: dropout_p must be 0.0, got {dropout_p}; "
                                  "apply F.dropout to softmax((q * scale) @ k^T) and multiply by v instead")
    if is_causal:
        raise NotImplementedError("scaled_dot_product_attention: is_causal=True is not supported")
    _check(query, key, value)
    if scale is None:
        scale = 1 / math.sqrt(query.shape[-1])
    if ATTENTION_IMPL == "auto" and nn.SOFTMAX_IMPL == "auto" and F.softmax is nn.softmax and \
            query.xp is np and query.size and key.size and value.size:
        return _attention_blocks(query, key, value, scale)
    return F.softmax((query * scale) @ key.swapaxes(-2, -1), dim=-1) @ value


def _check(query, key, value) -> None:
    """Errors naming the argument: Tensors of one floating dtype, (*, L, E), (*, S, E), (*, S, Ev)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"scaled_dot_product_attention: {name} must have at least 2 dims (*, tokens, "
                             f"features), got shape {t.shape}")
        if t.dtype.kind != "f":
            raise TypeError(f"scaled_dot_product_attention: {name} must be floating point, got {t.dtype}")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise ValueError(f"scaled_dot_product_attention: {name} dtype {t.dtype} differs from query "
                             f"dtype {query.dtype}")
        if t.shape[:-2] != query.shape[:-2]:
            raise ValueError(f"scaled_dot_product_attention: {name} must have query's batch dims "
                             f"{query.shape[:-2]}, got shape {t.shape}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"scaled_dot_product_attention: key must be (*, S, {query.shape[-1]}) (query's "
                         f"feature size E), got shape {key.shape}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: value must be (*, {key.shape[-2]}, Ev) (key's "
                         f"sequence length S), got shape {value.shape}")


def _attention_blocks(query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
    """The fused CPU path: for each block of slices (a few heads of one batch item), in its cache-sized
    buffers, E = exp(scale q k^T - rowmax) (the unnormalised P, kept for the backward), l = rowsum E,
    O = (E v) / l, each product one ``matmul(out=)``; the blocks are shared among the threads of ``_split``.

    Backward per block, in terms of E and dO' = dO / l (so that P = E / l is never formed):
    dV = E^T dO',  dS = E * (dO' v^T - rowsum(dO' * O)),  dq = scale dS k,  dk = scale dS^T q.
    """
    q, k, v = query.data, key.data, value.data
    if q.ndim == 2:  # no batch dims: one slice
        q, k, v = q[None], k[None], v[None]
    *batch, L, E = q.shape
    S, Ev, dtype = k.shape[-2], v.shape[-1], q.dtype
    outer, last = tuple(batch[:-1]), batch[-1]
    rows = max(1, min(last, ATTENTION_BLOCK // (L * S)))
    blocks = [o + (slice(j, min(j + rows, last)),) for o in np.ndindex(*outer) for j in range(0, last, rows)]
    # O laid out (*outer, L, last, Ev): a model's (B, h, N, d) -> (B, N, h·d) is then a view
    out = np.empty(outer + (L, last, Ev), dtype).swapaxes(-3, -2)
    e = np.empty(tuple(batch) + (L, S), dtype)
    lsum = np.empty(tuple(batch) + (L,), dtype)
    ones = np.ones(S, dtype)

    def forward(lo, hi):
        qs, m = np.empty((rows, L, E), dtype), np.empty((rows, L, 1), dtype)
        for at in blocks[lo:hi]:
            n = at[-1].stop - at[-1].start
            eb, qb, mb, ob, lb = e[at], qs[:n], m[:n], out[at], lsum[at]
            np.multiply(q[at], scale, qb)
            np.matmul(qb, k[at].swapaxes(-1, -2), eb)           # scale q k^T    (n, L, S)
            np.max(eb, axis=-1, keepdims=True, out=mb)
            eb -= mb
            np.exp(eb, eb)                                      # E
            np.matmul(eb, ones, lb)                             # l = rowsum E   (n, L)
            np.matmul(eb, v[at], ob)
            ob /= lb[..., None]                                 # O = E v / l    (n, L, Ev)
    _split(forward, len(blocks), e.size)

    def backward(g):
        g = g[None] if g.ndim == 2 else g
        need = [t.requires_grad for t in (query, key, value)]
        dq, dk, dv = (np.empty_like(a) if n else None for a, n in zip((q, k, v), need))

        def grads(lo, hi):
            go, dd = np.empty((rows, L, Ev), dtype), np.empty((rows, L), dtype)
            ds = np.empty((rows, L, S), dtype)
            for at in blocks[lo:hi]:
                n = at[-1].stop - at[-1].start
                gob, ddb, dsb, eb = go[:n], dd[:n], ds[:n], e[at]
                np.divide(g[at], lsum[at][..., None], gob)      # dO' = dO / l
                if dv is not None:
                    np.matmul(eb.swapaxes(-1, -2), gob, dv[at])  # dV = E^T dO'
                if dq is None and dk is None:
                    continue
                _row_dots(gob, out[at], ddb)                    # rowsum(dO' * O)
                np.matmul(gob, v[at].swapaxes(-1, -2), dsb)     # dO' v^T
                dsb -= ddb[..., None]
                dsb *= eb                                       # dS, of the scaled scores
                if dq is not None:
                    np.matmul(dsb, k[at], dq[at])
                    dq[at] *= scale
                if dk is not None:
                    np.matmul(dsb.swapaxes(-1, -2), q[at], dk[at])
                    dk[at] *= scale
        _split(grads, len(blocks), e.size)
        unbatched = query.ndim == 2
        return tuple(None if a is None else a[0] if unbatched else a for a in (dq, dk, dv))
    return Tensor.from_op(out[0] if query.ndim == 2 else out, (query, key, value), backward,
                          "scaled_dot_product_attention")


def _row_dots(a, b, out) -> None:
    """``out[..., i] = sum_j a[..., i, j] b[..., i, j]``: NumPy 2's ``vecdot``, ``einsum`` on NumPy 1."""
    if hasattr(np, "vecdot"):
        np.vecdot(a, b, out=out)
    else:
        np.einsum("...ij,...ij->...i", a, b, out=out)
