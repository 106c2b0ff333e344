"""F.scaled_dot_product_attention against torch's (float64 to 1e-12, float32), forward and gradients, both
implementations (the fused CPU blocks and the composed reference); finite differences; errors."""
import numpy as np
import pytest

from minivolo import functional as F
from minivolo.functional import attention, nn
from minivolo.gradcheck import gradcheck
from minivolo.tensor import Tensor
from oracle import torch

IMPLS = ["auto", "reference"]
# (query, key, value) shapes: (*, L, E), (*, S, E), (*, S, Ev)
SHAPES = {
    "self": ((2, 3, 9, 8), (2, 3, 9, 8), (2, 3, 9, 8)),
    "L!=S, Ev!=E": ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6)),
    "one query (class attention)": ((3, 4, 1, 8), (3, 4, 11, 8), (3, 4, 11, 8)),
    "no batch dims": ((5, 4), (6, 4), (6, 3)),
    "3 dims": ((4, 5, 6), (4, 7, 6), (4, 7, 2)),
    "5 dims": ((2, 3, 2, 5, 4), (2, 3, 2, 6, 4), (2, 3, 2, 6, 4)),
    "empty batch": ((0, 3, 5, 4), (0, 3, 7, 4), (0, 3, 7, 6)),
    "one key": ((2, 2, 3, 4), (2, 2, 1, 4), (2, 2, 1, 5)),
}


def _run(impl, arrays, g, monkeypatch, scale=None, requires_grad=(True, True, True)):
    """minivolo on the CPU with ATTENTION_IMPL=impl: (output, dq, dk, dv) as arrays (None where not asked)."""
    monkeypatch.setattr(attention, "ATTENTION_IMPL", impl)
    ts = [Tensor(a, requires_grad=r, device="cpu") for a, r in zip(arrays, requires_grad)]
    out = F.scaled_dot_product_attention(*ts, scale=scale)
    out.backward(g)
    return [out.numpy()] + [t.grad.numpy() if t.grad is not None else None for t in ts]


def _torch(arrays, g, scale=None):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = torch.nn.functional.scaled_dot_product_attention(*ts, scale=scale)
    out.backward(torch.tensor(g))
    return [out.detach().numpy()] + [t.grad.numpy() for t in ts]


def _arrays(shapes, dtype, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    arrays = [(rng.standard_normal(s) * spread).astype(dtype) for s in shapes]
    out_shape = shapes[0][:-1] + shapes[2][-1:]
    return arrays, rng.standard_normal(out_shape).astype(dtype)


def _assert_close(ours, theirs, dtype, atol64=1e-12):
    tol = dict(rtol=0, atol=atol64) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for name, o, t in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert o.shape == t.shape and o.dtype == t.dtype == dtype, name
        np.testing.assert_allclose(o, t, err_msg=name, **tol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(SHAPES))
def test_matches_torch(case, dtype, impl, monkeypatch):
    arrays, g = _arrays(SHAPES[case], dtype)
    _assert_close(_run(impl, arrays, g, monkeypatch), _torch(arrays, g), dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_explicit_scale_and_large_scores_match_torch(scale, impl, monkeypatch):
    """A given scale (not 1/sqrt(E)), with scores in the hundreds: the row max keeps exp finite."""
    arrays, g = _arrays(SHAPES["L!=S, Ev!=E"], np.float64, seed=1, spread=10.0)
    _assert_close(_run(impl, arrays, g, monkeypatch, scale=scale), _torch(arrays, g, scale=scale), np.float64,
                  atol64=1e-10)


@pytest.mark.parametrize("block", [1, 3 * 5 * 7, 5 * 5 * 7, 1 << 16])   # one slice ... all of them per block
@pytest.mark.parametrize("split_min", [0, 1 << 30])                     # threads on, off
def test_fused_blocks_match_reference(block, split_min, monkeypatch):
    """Whatever the blocks (one head, 3 or 5 of 12 heads: a short last block, all of them) and with or
    without the threads, the fused path gives the reference's numbers."""
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", block)
    monkeypatch.setattr(nn, "_SPLIT_MIN", split_min)
    arrays, g = _arrays(((2, 12, 5, 8), (2, 12, 7, 8), (2, 12, 7, 4)), np.float64, seed=2)
    _assert_close(_run("auto", arrays, g, monkeypatch), _run("reference", arrays, g, monkeypatch), np.float64)


def test_fused_takes_strided_views_and_skips_unneeded_gradients(monkeypatch):
    """q, k, v as the model makes them (views of one packed (B, N, 3, h, d) array); only the gradients
    asked for come back."""
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 6, 3, 4, 5)).transpose(2, 0, 3, 1, 4)        # (3, B, h, N, d) view
    arrays = [qkv[0], qkv[1], qkv[2]]
    g = rng.standard_normal((2, 4, 6, 5))
    for need in ((False, True, True), (True, False, False), (False, False, True)):
        fast = _run("auto", arrays, g, monkeypatch, requires_grad=need)
        reference = _run("reference", arrays, g, monkeypatch, requires_grad=need)
        np.testing.assert_allclose(fast[0], reference[0], rtol=0, atol=1e-12)
        for f, r, n in zip(fast[1:], reference[1:], need):
            assert (f is None) == (r is None) == (not n)
            if n:
                np.testing.assert_allclose(f, r, rtol=0, atol=1e-12)


def test_d1_shapes_float32_fused_against_torch(monkeypatch):
    """D1 stage 2's attention, (8, 12, 196, 32) float32, threads and all: within float32 tolerance."""
    arrays, g = _arrays(((8, 12, 196, 32),) * 3, np.float32, seed=4)
    _assert_close(_run("auto", arrays, g, monkeypatch), _torch(arrays, g), np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["L!=S, Ev!=E", "one query (class attention)", "no batch dims"])
def test_gradcheck(case, impl, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_IMPL", impl)
    rng = np.random.default_rng(5)
    ts = [Tensor(rng.standard_normal(s), requires_grad=True, device="cpu") for s in SHAPES[case]]
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.7), *ts)


def test_softmax_reference_turns_the_fused_path_off(monkeypatch):
    """The fused path is softmax's fast path fused with its matmuls: with softmax's reference asked for,
    attention composes matmul, softmax, matmul (as the GPU does)."""
    arrays, _ = _arrays(SHAPES["self"], np.float64)
    ts = [Tensor(a, requires_grad=True, device="cpu") for a in arrays]
    assert F.scaled_dot_product_attention(*ts)._op == "scaled_dot_product_attention"
    monkeypatch.setattr(nn, "SOFTMAX_IMPL", "reference")
    assert F.scaled_dot_product_attention(*ts)._op == "matmul"


def test_a_replaced_softmax_sees_the_attention_weights(monkeypatch):
    """With F.softmax replaced (notebook 06 records the attention maps so), attention composes the
    reference through it: the replacement sees softmax(scale q k^T) and its result is what multiplies v."""
    arrays, _ = _arrays(SHAPES["L!=S, Ev!=E"], np.float64)
    q, k, v = (Tensor(a, device="cpu") for a in arrays)
    seen, softmax = [], F.softmax
    monkeypatch.setattr(F, "softmax", lambda t, dim=-1: seen.append(t.numpy()) or softmax(t, dim=dim) * 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    scores = 0.5 * arrays[0] @ arrays[1].swapaxes(-1, -2)
    np.testing.assert_allclose(seen[0], scores, rtol=0, atol=1e-12)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), 2 * weights @ arrays[2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shapes, match", [
    (((2, 3, 5, 4), (2, 3, 7, 6), (2, 3, 7, 6)), r"key must be \(\*, S, 4\) \(query's feature size E\), "
                                                 r"got shape \(2, 3, 7, 6\)"),
    (((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 6, 4)), r"value must be \(\*, 7, Ev\) \(key's sequence length S\)"),
    (((2, 3, 5, 4), (2, 4, 7, 4), (2, 4, 7, 4)), r"key must have query's batch dims \(2, 3\), got shape "
                                                 r"\(2, 4, 7, 4\)"),
    (((2, 3, 5, 4), (2, 3, 7, 4), (3, 7, 4)), r"value must have query's batch dims \(2, 3\)"),
    (((4,), (7, 4), (7, 4)), r"query must have at least 2 dims \(\*, tokens, features\), got shape \(4,\)"),
])
def test_bad_shapes_name_the_argument(shapes, match):
    ts = [Tensor(np.zeros(s), device="cpu") for s in shapes]
    with pytest.raises(ValueError, match=match):
        F.scaled_dot_product_attention(*ts)


def test_bad_types_and_unsupported_options_are_clear_errors():
    q = Tensor(np.zeros((2, 5, 4)), device="cpu")
    with pytest.raises(ValueError, match=r"value dtype float32 differs from query dtype float64"):
        F.scaled_dot_product_attention(q, q, Tensor(np.zeros((2, 5, 4), np.float32), device="cpu"))
    with pytest.raises(TypeError, match=r"key must be floating point, got int64"):
        F.scaled_dot_product_attention(q, Tensor(np.zeros((2, 5, 4), np.int64), device="cpu"), q)
    with pytest.raises(TypeError, match=r"query must be a Tensor, got ndarray"):
        F.scaled_dot_product_attention(np.zeros((2, 5, 4)), q, q)
    with pytest.raises(NotImplementedError, match=r"dropout_p must be 0.0, got 0.1"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match=r"attn_mask is not supported"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=Tensor(np.zeros((5, 5)), device="cpu"))
    with pytest.raises(NotImplementedError, match=r"is_causal=True is not supported"):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)


@pytest.mark.parametrize("module", ["Attention", "ClassAttention"])
def test_modules_with_attention_dropout_write_the_formula_out_and_agree(module):
    """attn_drop > 0 takes the written-out formula (dropout on the weights); in eval mode it gives the
    numbers of F.scaled_dot_product_attention (fused on the CPU, composed on a GPU)."""
    from minivolo import manual_seed
    from minivolo.models import volo
    manual_seed(0)
    fused = getattr(volo, module)(16, num_heads=4).double()
    manual_seed(0)
    written = getattr(volo, module)(16, num_heads=4, attn_drop=0.5).double().eval()
    shape = (2, 3, 5, 16) if module == "Attention" else (2, 7, 16)
    x = np.random.default_rng(6).standard_normal(shape)
    a, b = fused(Tensor(x)), written(Tensor(x))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12)
