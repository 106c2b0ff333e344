"""The autograd engine: every Tensor op against PyTorch (values, gradients, dtypes).

Finite-difference gradchecks, identities and the graph's mechanics, which need no torch: test_tensor_math.py."""
import numpy as np
import pytest

import minivolo as mv
from oracle import check_against_torch, torch

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def positive(*shape, dtype=np.float64):
    return (rng.random(shape) + 0.5).astype(dtype)


# (name, minivolo fn, torch fn, input arrays) -- shapes chosen to exercise broadcasting
BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), ())]
BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / b, lambda a, b: a / b),
    ("pow", lambda a, b: a ** b, lambda a, b: a ** b),
    ("maximum", mv.maximum, torch.maximum),
    ("where", lambda a, b: mv.where(a > b, a, b), lambda a, b: torch.where(a > b, a, b)),
]


@pytest.mark.parametrize("shapes", BINARY_SHAPES)
@pytest.mark.parametrize("name,f,tf", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_ops(name, f, tf, shapes, dtype):
    a, b = positive(*shapes[0], dtype=dtype), positive(*shapes[1], dtype=dtype)
    check_against_torch(f, tf, [a, b])


UNARY = [
    ("neg", lambda x: -x, lambda x: -x),
    ("exp", lambda x: x.exp(), torch.exp),
    ("log", lambda x: x.log(), torch.log),
    ("sqrt", lambda x: x.sqrt(), torch.sqrt),
    ("tanh", lambda x: x.tanh(), torch.tanh),
    ("abs", lambda x: (x - 1).abs(), lambda x: (x - 1).abs()),
    ("pow_scalar", lambda x: x ** 3, lambda x: x ** 3),
    ("rpow", lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    ("rsub_rdiv", lambda x: 1.0 - 2.0 / x, lambda x: 1.0 - 2.0 / x),
    ("scalar_ops", lambda x: (x * 3 + 1) / 2 - 0.5, lambda x: (x * 3 + 1) / 2 - 0.5),
]


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("name,f,tf", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unary_ops(name, f, tf, shape, dtype):
    x = positive(*shape, dtype=dtype)
    out = check_against_torch(f, tf, [x])[0]
    assert out.dtype == dtype


REDUCTIONS = [
    ("sum", lambda x, a, k: x.sum(a, keepdims=k), lambda x, a, k: x.sum(a, keepdim=k) if a is not None else x.sum()),
    ("mean", lambda x, a, k: x.mean(a, keepdims=k),
     lambda x, a, k: x.mean(a, keepdim=k) if a is not None else x.mean()),
    ("max", lambda x, a, k: x.max(a, keepdims=k), lambda x, a, k: x.amax(a, keepdim=k) if a is not None else x.amax()),
    ("var", lambda x, a, k: x.var(a, keepdims=k), lambda x, a, k: x.var(a, keepdim=k) if a is not None else x.var()),
]


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), (-1, False), ((0, 2), True),
                                           ((0, 2), False)])
@pytest.mark.parametrize("name,f,tf", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reductions(name, f, tf, axis, keepdims, dtype):
    x = randn(2, 3, 4, dtype=dtype)
    check_against_torch(lambda t: f(t, axis, keepdims), lambda t: tf(t, axis, keepdims), [x])


def test_var_correction_and_dim_aliases():
    x = randn(4, 5)
    t = torch.tensor(x)
    np.testing.assert_allclose(mv.Tensor(x).var(1, correction=0).numpy(), t.var(1, correction=0).numpy())
    np.testing.assert_allclose(mv.Tensor(x).sum(dim=1, keepdim=True).numpy(), t.sum(1, keepdim=True).numpy())


def test_max_ties_share_gradient_like_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    check_against_torch(lambda t: t.max(1), lambda t: t.amax(1), [x])
    check_against_torch(lambda t: t.max(), lambda t: t.amax(), [x])


SHAPE_OPS = [
    ("reshape", lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6)),
    ("reshape_tuple", lambda x: x.reshape((2, -1)), lambda x: x.reshape((2, -1))),
    ("transpose", lambda x: x.transpose(), lambda x: x.permute(2, 1, 0)),
    ("permute", lambda x: x.permute(1, 2, 0), lambda x: x.permute(1, 2, 0)),
    ("swapaxes", lambda x: x.swapaxes(0, 2), lambda x: x.swapaxes(0, 2)),
    ("slice", lambda x: x[1:, ::2, -1], lambda x: x[1:, ::2, -1]),
    ("ellipsis_none", lambda x: x[..., None, 1], lambda x: x[..., None, 1]),
    ("int_array", lambda x: x[np.array([0, 1, 1])], lambda x: x[torch.tensor([0, 1, 1])]),
    ("int_arrays_2d", lambda x: x[np.array([0, 1, 0]), :, np.array([3, 3, 3])],
     lambda x: x[torch.tensor([0, 1, 0]), :, torch.tensor([3, 3, 3])]),
    ("unsqueeze_squeeze", lambda x: x.unsqueeze(1).squeeze(1).flatten(1), lambda x: x.unsqueeze(1).squeeze(1).flatten(1)),
    ("concatenate", lambda x: mv.concatenate([x, x * 2, x[:, :1]], axis=1), lambda x: torch.cat([x, x * 2, x[:, :1]], 1)),
    ("stack", lambda x: mv.stack([x, -x], axis=-1), lambda x: torch.stack([x, -x], -1)),
]


@pytest.mark.parametrize("name,f,tf", SHAPE_OPS, ids=[s[0] for s in SHAPE_OPS])
def test_shape_ops(name, f, tf):
    x = randn(2, 3, 4)
    check_against_torch(f, tf, [x])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                   ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (2, 4, 2))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul(sa, sb, dtype):
    a, b = randn(*sa, dtype=dtype), randn(*sb, dtype=dtype)
    check_against_torch(lambda x, y: x @ y, lambda x, y: x @ y, [a, b])


# --- regressions: behaviour that once differed from PyTorch ------------------------------------------
PROMOTION = [  # (a, b) as (array or Python number); tensors are built from the arrays on both sides
    ("f32 + 0-d f64", np.ones(3, np.float32), np.array(2.5)),
    ("f32 + f64", np.ones(3, np.float32), np.full(3, 2.5)),
    ("f32 + int64", np.ones(3, np.float32), np.arange(3)),
    ("int64 + float", np.arange(3), 1.5),
    ("int32 * int", np.arange(3, dtype=np.int32), 2),
    ("int32 + 0-d f64", np.arange(3, dtype=np.int32), np.array(2.5)),
    ("bool + int", np.array([True, False]), 1),
    ("f64 0-d + float", np.array(2.0), 1.0001),
]


PROMOTION_CASES = [pytest.param(op, *case, id=f"{case[0]}-{op}") for case in PROMOTION
                   for op in ("add", "mul", "truediv", "sub", "lt")
                   if not (case[0].startswith("bool") and op == "sub")]  # torch refuses bool - int


@pytest.mark.parametrize("op,name,a,b", PROMOTION_CASES)
def test_type_promotion_follows_torch(name, a, b, op):
    """torch.result_type, not NumPy's: int with float gives the float type, 0-d tensors and Python numbers
    only raise the category, int / int gives float32."""

    def build(v, lib):
        return v if not isinstance(v, np.ndarray) else (mv.Tensor(v) if lib is mv else torch.tensor(v))
    fn = getattr(__import__("operator"), op)
    ours, theirs = fn(build(a, mv), build(b, mv)), fn(build(a, torch), build(b, torch)).numpy()
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12)
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):  # the reflected form too
        assert fn(build(b, mv), build(a, mv)).dtype == fn(build(b, torch), build(a, torch)).numpy().dtype


def test_mixed_precision_gradients_keep_each_leafs_dtype():
    a, b = randn(3, 4, dtype=np.float32), randn(4)
    out = check_against_torch(lambda x, y: x * y + y / x, lambda x, y: x * y + y / x, [a, b], atol=1e-6, rtol=1e-6)
    assert out[0].dtype == np.float64


def test_transpose_with_two_dims_swaps_them_like_torch():
    x = randn(2, 3, 4)
    check_against_torch(lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2), [x])
    check_against_torch(lambda t: t.transpose(-1, 0), lambda t: t.transpose(-1, 0), [x])
    check_against_torch(lambda t: t.transpose(0, 1), lambda t: t.transpose(0, 1), [x[0]])  # 2-D: a swap too
    assert mv.Tensor(x).transpose(2, 0, 1).shape == (4, 2, 3)  # a full permutation is NumPy's
    assert mv.Tensor(x[0]).transpose((0, 1)).shape == (3, 4)   # ... and so is a tuple


def test_pow_gradient_at_zero_base_and_zero_exponent_matches_torch():
    """d/dx x^0 = 0 (not 0 * 0^-1 = nan) and d/dp 0^p = 0 for p >= 0 (not 0 * log 0 = nan)."""
    x, p = np.array([0.0, 0.0, 2.0, -1.5]), np.array([0.0, 2.0, 0.0, 3.0])
    check_against_torch(lambda a, b: a ** b, lambda a, b: a ** b, [x, p])
    check_against_torch(lambda a: a ** 0.0, lambda a: a ** 0.0, [x])


def test_mean_over_an_empty_axis_is_nan_and_integer_mean_raises():
    x = np.ones((0, 3))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(mv.Tensor(x).mean(0).numpy(), torch.tensor(x).mean(0).numpy())  # nan
        assert np.isnan(mv.Tensor(x).mean().item())
    with pytest.raises(TypeError, match="floating-point"):
        mv.Tensor(np.arange(4)).mean()


def test_var_takes_unbiased_positionally_and_ddof_like_torch():
    x = randn(4, 5)
    check_against_torch(lambda t: t.var(1, False), lambda t: t.var(1, False), [x])   # unbiased=False
    check_against_torch(lambda t: t.var(0, True, True), lambda t: t.var(0, True, True), [x])
    check_against_torch(lambda t: t.var(-1, ddof=0), lambda t: t.var(-1, correction=0), [x])
    with pytest.raises(ValueError, match="at most one"):
        mv.Tensor(x).var(1, unbiased=True, correction=0)


def test_squeeze_tuple_and_cat_stack_dim_keyword():
    x = randn(1, 3, 1, 2)
    check_against_torch(lambda t: t.squeeze((0, -2)), lambda t: t.squeeze((0, -2)), [x])
    check_against_torch(lambda t: t.squeeze((0, 1)), lambda t: t.squeeze((0, 1)), [x])  # size 3 stays
    check_against_torch(lambda t: mv.cat([t, t], dim=-1), lambda t: torch.cat([t, t], dim=-1), [x])
    check_against_torch(lambda t: mv.stack([t, t], dim=1), lambda t: torch.stack([t, t], dim=1), [x])


def test_where_and_maximum_promote_like_torch():
    x = randn(3, dtype=np.float32)
    check_against_torch(lambda t: mv.where(t > 0, t, 0), lambda t: torch.where(t > 0, t, 0), [x])
    check_against_torch(lambda t: mv.maximum(t, 0.5), lambda t: torch.maximum(t, torch.tensor(0.5)), [x])


# --- zero-size inputs (an empty batch) ------------------------------------------------------------------
EMPTY_OPS = [
    ("sum", lambda t: t.sum(), None), ("sum_axis", lambda t: t.sum(1), None),
    ("mean", lambda t: t.mean(), None), ("mean_empty_axis", lambda t: t.mean(0), None),
    ("mean_axis", lambda t: t.mean((1, 2), keepdims=True), lambda t: t.mean((1, 2), keepdim=True)),
    ("max_axis", lambda t: t.max(1), lambda t: t.amax(1)), ("var_axis", lambda t: t.var(2), None),
    ("reshape", lambda t: t.reshape(0, 12), None), ("reshape_minus_one", lambda t: t.reshape(-1, 3), None),
    ("flatten", lambda t: t.flatten(1), None), ("flatten_all", lambda t: t.flatten(), None),
    ("permute", lambda t: t.permute(2, 0, 1), None), ("transpose", lambda t: t.transpose(0, 2), None),
    ("squeeze_unsqueeze", lambda t: t.unsqueeze(1).squeeze(1), None),
    ("getitem", lambda t: t[:, 1, ::2], None),
    ("matmul", lambda t: t @ mv.Tensor(np.ones((3, 5), t.dtype)), lambda t: t @ torch.ones((3, 5), dtype=t.dtype)),
    ("elementwise", lambda t: (t * 2 + 1).exp().tanh() / (t.abs() + 1) - t ** 2, None),
    ("cat", lambda t: mv.cat([t, t], 1), lambda t: torch.cat([t, t], 1)),
    ("stack", lambda t: mv.stack([t, t]), lambda t: torch.stack([t, t])),
    ("where_maximum", lambda t: mv.where(t > 0, t, mv.maximum(t, 0.5)),
     lambda t: torch.where(t > 0, t, torch.maximum(t, torch.tensor(0.5, dtype=t.dtype)))),
]


@pytest.mark.parametrize("name,f,tf", EMPTY_OPS, ids=[e[0] for e in EMPTY_OPS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zero_size_inputs_match_torch(name, f, tf, dtype):
    """An empty batch (0, 4, 3): empty outputs and gradients (NaN for a mean over nothing), as torch."""
    check_against_torch(f, tf or f, [np.zeros((0, 4, 3), dtype)])


def test_zero_size_inputs_refused_in_our_words():
    x, tx = mv.Tensor(np.zeros((0, 4, 3))), torch.zeros((0, 4, 3))
    for ours, theirs in [(lambda: x.max(), lambda: tx.amax()), (lambda: x.max(0), lambda: tx.amax(0))]:
        with pytest.raises((RuntimeError, IndexError)):
            theirs()  # torch refuses too
        with pytest.raises(ValueError, match=r"maximum over an empty dim is undefined \(input shape \(0, 4, 3\)"):
            ours()
    with pytest.raises(RuntimeError, match="ambiguous"):
        tx.reshape(0, -1)
    with pytest.raises(ValueError, match=r"reshape: -1 is ambiguous for a tensor of 0 elements"):
        x.reshape(0, -1)
