"""The autograd engine without PyTorch: every Tensor op against finite differences (float64), identities
that hold exactly, and the graph's mechanics. The same ops against PyTorch: test_tensor.py."""
import numpy as np
import pytest

import minivolo as mv

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def positive(*shape, dtype=np.float64):
    return (rng.random(shape) + 0.5).astype(dtype)


def leaf(a):
    return mv.Tensor(np.array(a, dtype=np.float64), requires_grad=True)


# name -> minivolo function; test_tensor.py pairs each with its torch counterpart
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "maximum": mv.maximum,
    "where": lambda a, b: mv.where(a > b, a, b),
}
BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), ())]
UNARY = {
    "neg": lambda x: -x,
    "exp": lambda x: x.exp(),
    "log": lambda x: x.log(),
    "sqrt": lambda x: x.sqrt(),
    "tanh": lambda x: x.tanh(),
    "abs": lambda x: (x - 1).abs(),
    "pow_scalar": lambda x: x ** 3,
    "rpow": lambda x: 2.0 ** x,
    "rsub_rdiv": lambda x: 1.0 - 2.0 / x,
    "scalar_ops": lambda x: (x * 3 + 1) / 2 - 0.5,
    "astype": lambda x: x.astype(np.float64) * x,
    "functions": lambda x: mv.exp(x) + mv.log(x) + mv.sqrt(x) + mv.tanh(x) + mv.abs(x - 1),
}
UNARY_SHAPES = [(), (5,), (3, 4), (2, 3, 4)]
REDUCTIONS = {
    "sum": lambda x, a, k: x.sum(a, keepdims=k),
    "mean": lambda x, a, k: x.mean(a, keepdims=k),
    "max": lambda x, a, k: x.max(a, keepdims=k),
    "var": lambda x, a, k: x.var(a, keepdims=k),
}
AXES = [(None, False), (0, False), (1, True), (-1, False), ((0, 2), True), ((0, 2), False)]
SHAPE_OPS = {
    "reshape": lambda x: x.reshape(4, 6),
    "reshape_tuple": lambda x: x.reshape((2, -1)),
    "view": lambda x: x.view(3, 8),
    "transpose": lambda x: x.transpose(),
    "transpose_two_dims": lambda x: x.transpose(2, 0),
    "T": lambda x: x.T,
    "permute": lambda x: x.permute(1, 2, 0),
    "swapaxes": lambda x: x.swapaxes(0, 2),
    "slice": lambda x: x[1:, ::2, -1],
    "ellipsis_none": lambda x: x[..., None, 1],
    "int_array": lambda x: x[np.array([0, 1, 1])],
    "int_arrays_2d": lambda x: x[np.array([0, 1, 0]), :, np.array([3, 3, 3])],
    "unsqueeze_squeeze": lambda x: x.unsqueeze(1).squeeze(1).flatten(1),
    "squeeze_tuple": lambda x: x[:1, :, None].squeeze((0, 2)),
    "concatenate": lambda x: mv.concatenate([x, x * 2, x[:, :1]], axis=1),
    "cat_dim": lambda x: mv.cat([x, x], dim=-1),
    "stack": lambda x: mv.stack([x, -x], axis=-1),
}
MATMUL_SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (2, 4, 2))]


@pytest.mark.parametrize("shapes", BINARY_SHAPES)
@pytest.mark.parametrize("name", BINARY)
def test_binary_ops_gradcheck(name, shapes):
    a, b = positive(*shapes[0]), positive(*shapes[1])
    assert mv.gradcheck(BINARY[name], leaf(a), leaf(b))


@pytest.mark.parametrize("shape", UNARY_SHAPES)
@pytest.mark.parametrize("name", UNARY)
def test_unary_ops_gradcheck(name, shape):
    assert mv.gradcheck(UNARY[name], leaf(positive(*shape)))


@pytest.mark.parametrize("axis,keepdims", AXES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_gradcheck(name, axis, keepdims):
    assert mv.gradcheck(lambda t: REDUCTIONS[name](t, axis, keepdims), leaf(randn(2, 3, 4)))


@pytest.mark.parametrize("name", SHAPE_OPS)
def test_shape_ops_gradcheck(name):
    assert mv.gradcheck(SHAPE_OPS[name], leaf(randn(2, 3, 4)))


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_gradcheck(sa, sb):
    assert mv.gradcheck(lambda x, y: x @ y, leaf(randn(*sa)), leaf(randn(*sb)))


def test_to_and_casts_pass_gradients_back_in_the_inputs_dtype():
    assert mv.gradcheck(lambda t: t.to("cpu") * 2, leaf(randn(3)))
    x = leaf(randn(3))
    (x.float() * 2).sum().backward()
    assert x.grad.dtype == np.float64 and x.grad.numpy().tolist() == [2.0, 2.0, 2.0]


# --- identities --------------------------------------------------------------------------------------
def test_identities_between_ops():
    x, y = randn(3, 4), positive(3, 4)
    t, u = mv.Tensor(x), mv.Tensor(y)
    np.testing.assert_allclose(t.mean(1).numpy(), x.sum(1) / 4, rtol=1e-15)
    np.testing.assert_allclose(t.var(0, correction=0).numpy(), ((x - x.mean(0)) ** 2).mean(0), rtol=1e-13)
    np.testing.assert_allclose(t.var(1).numpy(), x.var(1, ddof=1), rtol=1e-13)
    np.testing.assert_allclose(u.log().exp().numpy(), y, rtol=1e-15)
    np.testing.assert_allclose((u.sqrt() * u.sqrt()).numpy(), y, rtol=1e-15)
    np.testing.assert_array_equal((t @ u.T).numpy(), x @ y.T)
    np.testing.assert_array_equal(mv.where(t > 0, t, -t).numpy(), np.abs(x))
    np.testing.assert_array_equal(mv.maximum(t, 0.0).numpy(), np.maximum(x, 0))
    np.testing.assert_array_equal(t.transpose(0, 1).numpy(), x.T)  # two ints swap, as torch
    assert mv.Tensor(randn(2, 3, 4)).transpose(2, 0, 1).shape == (4, 2, 3)  # a permutation is NumPy's
    np.testing.assert_array_equal(mv.stack([t, u], 1)[:, 0].numpy(), x)
    np.testing.assert_array_equal(mv.cat([t, u], 0)[3:].numpy(), y)


def test_max_ties_share_the_gradient():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    x.max(1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    y = leaf([1.0, 2.0, 2.0])
    mv.maximum(y, mv.Tensor(np.array([2.0, 1.0, 2.0]))).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [0, 1, 0.5])


def test_pow_gradient_at_zero_base_and_zero_exponent():
    """d/dx x^0 = 0 (not 0 * 0^-1 = nan) and d/dp 0^p = 0 for p >= 0 (not 0 * log 0 = nan), as torch."""
    x, p = leaf([0.0, 0.0, 2.0]), leaf([0.0, 2.0, 0.0])
    (x ** p).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0, np.log(2.0)])


def test_type_promotion_without_torch():
    """torch.result_type's rules (compared with torch itself in test_tensor.py)."""
    f32, i32 = mv.Tensor(np.ones(3, np.float32)), mv.Tensor(np.arange(1, 4, dtype=np.int32))
    assert (f32 + mv.Tensor(np.array(2.5))).dtype == np.float32      # a 0-d tensor does not widen
    assert (f32 + mv.Tensor(np.ones(3))).dtype == np.float64         # a tensor with dims does
    assert (i32 + 1.5).dtype == np.float32 and (i32 * 2).dtype == np.int32
    assert (i32 / i32).dtype == np.float32 and (f32 + i32).dtype == np.float32
    assert (mv.Tensor(np.array([True])) + 1).dtype == np.int64
    assert (mv.Tensor(np.array(2.0)) * 1.0001).item() == 2.0002     # the number is not rounded to float32


def test_comparisons_are_not_differentiable():
    x = mv.Tensor(randn(3), requires_grad=True)
    for c in (x < 0, x <= 0, x > 0, x >= 0, x == 0, x != 0):
        assert c.dtype == np.bool_ and not c.requires_grad
    np.testing.assert_array_equal((x > 0).numpy(), x.numpy() > 0)


def test_leaf_used_twice_accumulates_and_grad_accumulates_across_calls():
    x = mv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 1)
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 4)


def test_backward_needs_grad_for_non_scalar():
    x = mv.Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="single-element"):
        (x * 2).backward()
    y = x * 2
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        y.backward(np.ones(2))
    y.backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_buffers_freed_unless_retained():
    x = mv.Tensor(randn(3), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp(x.numpy()))
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_no_grad_and_requires_grad_propagation():
    x = mv.Tensor(randn(3), requires_grad=True)
    c = mv.Tensor(randn(3))
    assert (x * c).requires_grad and not (c * 2).requires_grad
    with mv.no_grad():
        y = x * 2
    assert not y.requires_grad and mv.is_grad_enabled()
    assert not x.detach().requires_grad
    with pytest.raises(TypeError, match="floating"):
        mv.Tensor(np.arange(3), requires_grad=True)


def test_retain_grad_on_intermediate():
    x = mv.Tensor(randn(3), requires_grad=True)
    h = (x * 2).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())


def test_deep_graph_has_no_recursion_limit():
    x = mv.Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001 + 0.0
    y.backward()
    assert x.grad.item() == pytest.approx(1.0001 ** 10_000, rel=1e-9)


def test_default_dtype_is_float32_and_float64_is_kept():
    assert mv.Tensor([1.0, 2.0]).dtype == np.float32
    assert mv.Tensor(np.zeros(2)).dtype == np.float64
    x = mv.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2.5 + 1) ** 2 / 3
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_gradcheck_catches_a_planted_wrong_backward():
    def bad_square(t):  # forward x^2, backward claims 3x
        return mv.Tensor.from_op(t.data ** 2, (t,), lambda g: (3 * t.data * g,), "bad_square")

    x = mv.Tensor(randn(2, 3), requires_grad=True)
    y = mv.Tensor(randn(3), requires_grad=True)
    with pytest.raises(mv.GradcheckError, match=r"input 1 \(shape \(3,\)\).*analytic.*numeric"):
        mv.gradcheck(lambda a, b: (a * bad_square(b)).sum(0), x, y)
    assert mv.gradcheck(lambda a, b: bad_square(b), x, y, raise_exception=False) is False


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        mv.gradcheck(lambda t: t * 2, mv.Tensor(randn(2, dtype=np.float32), requires_grad=True))


def test_numpy_item_and_cpu_device():
    x = mv.Tensor(np.arange(6.0).reshape(2, 3), device="cpu")
    assert x.device == "cpu" and x.to("cpu") is x
    assert isinstance(x.numpy(), np.ndarray) and x.sum().item() == 15.0
    with pytest.raises(ValueError, match="device"):
        x.to("tpu")


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    if mv.cuda_available():
        pytest.skip("a GPU is present: the error path cannot be exercised here")
    with pytest.raises(RuntimeError, match="device 'cuda' requested but"):
        mv.Tensor([1.0]).to("cuda")
    monkeypatch.setenv("MINIVOLO_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="device 'cuda' requested"):
        mv.default_device()


@pytest.mark.parametrize("view", [lambda a: a.T, lambda a: np.broadcast_to(a[0], a.shape), lambda a: a[:, ::2]])
def test_gradcheck_on_non_contiguous_inputs(view):
    """The nudges went into a copy made by reshape(-1), so every numeric derivative came out 0."""
    x = mv.Tensor(view(randn(4, 4)), requires_grad=True)
    assert mv.gradcheck(lambda t: (t * t).sum(0), x)
