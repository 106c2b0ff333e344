"""minivolo.functional.nn against PyTorch (float64, float32): values, gradients, dtypes, edge cases.

Gradchecks, fused-versus-composed identities and checks that need no torch: test_nn_math.py."""
import numpy as np
import pytest

import minivolo as mv
from minivolo import functional as F
from oracle import check_against_torch, tol, torch

TF = torch.nn.functional
DTYPES = [np.float64, np.float32]


def randn(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- linear, relu, gelu, erf -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4,), (1, 4), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(shape, bias, dtype):
    arrays = [randn(*shape, dtype=dtype), randn(5, 4, dtype=dtype, seed=1)] + \
        ([randn(5, dtype=dtype, seed=2)] if bias else [])
    out = check_against_torch(F.linear, TF.linear, arrays)[0]
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    x = randn(3, 5, dtype=dtype)
    x[0, :2] = 0  # the gradient at 0 is 0, as in torch
    assert check_against_torch(F.relu, TF.relu, [x])[0].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_matches_torch(dtype):
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, -1e-30, 1e-300 if dtype == np.float64 else 1e-40,
               0.84375, 1.25, 1 / 0.35, 6.0, 30.0, -30.0, 1e30, -1e30]
    x = np.concatenate([np.linspace(-8, 8, 4001), special]).astype(dtype)
    got = F.erf(mv.Tensor(x)).numpy()
    ref = torch.erf(torch.from_numpy(x)).numpy()
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=5e-16 if dtype == np.float64 else 2.4e-7, atol=0)  # 2 ulp
    assert np.signbit(got[x == 0]).tolist() == np.signbit(x[x == 0]).tolist()  # erf(-0) = -0
    check_against_torch(F.erf, torch.erf, [randn(50, dtype=dtype)])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(approximate, shape, dtype):
    x = randn(*shape, dtype=dtype) * 3
    out = check_against_torch(lambda t: F.gelu(t, approximate), lambda t: TF.gelu(t, approximate=approximate), [x])
    assert out[0].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_over_a_wide_range(dtype):
    x = np.linspace(-12, 12, 4001).astype(dtype)
    check_against_torch(F.gelu, TF.gelu, [x])
    with pytest.raises(ValueError, match="approximate must be"):
        F.gelu(mv.Tensor(x), "fast")


# --- softmax -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn,tfn", [(F.softmax, TF.softmax), (F.log_softmax, TF.log_softmax)],
                         ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((1, 6), -1), ((3, 4, 5), 1), ((3, 4, 5), 0), ((2, 3, 4, 5), -1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(fn, tfn, shape, dim, dtype):
    x = randn(*shape, dtype=dtype) * 3
    out = check_against_torch(lambda t: fn(t, dim), lambda t: tfn(t, dim), [x])[0]
    assert out.dtype == dtype


@pytest.mark.parametrize("fn,tfn", [(F.softmax, TF.softmax), (F.log_softmax, TF.log_softmax)])
def test_softmax_is_stable_for_huge_logits(fn, tfn):
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4 + 1, -1e4 + 2]], dtype=np.float32)
    out = fn(mv.Tensor(x), -1).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, tfn(torch.tensor(x), -1).numpy(), **tol(np.float32))


# --- layer_norm --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,normalized", [((1, 8), (8,)), ((2, 3, 8), (8,)), ((2, 3, 4, 5), (4, 5)),
                                              ((2, 3, 4, 5), (5,))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm(shape, normalized, affine, dtype):
    x = randn(*shape, dtype=dtype) * 2 + 1
    arrays = [x] + ([randn(*normalized, dtype=dtype, seed=1), randn(*normalized, dtype=dtype, seed=2)]
                    if affine else [])
    out = check_against_torch(lambda t, *p: F.layer_norm(t, normalized, *p, eps=1e-5),
                              lambda t, *p: TF.layer_norm(t, normalized, *p, eps=1e-5), arrays)[0]
    assert out.dtype == dtype


# --- batch_norm --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 4), (1, 3, 2, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_training_and_running_stats(shape, dtype):
    """Several training steps: outputs, gradients and the in-place running statistics match torch."""
    c = shape[1]
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    trm, trv = torch.zeros(c, dtype=torch.from_numpy(rm).dtype), torch.ones(c, dtype=torch.from_numpy(rv).dtype)
    running = mv.Tensor(rm.copy())  # a Tensor for the mean (its .data is updated), a bare array for var
    for step in range(3):
        arrays = [randn(*shape, dtype=dtype, seed=step) * (step + 1) + step, randn(c, dtype=dtype, seed=10),
                  randn(c, dtype=dtype, seed=11)]
        check_against_torch(lambda x, w, b: F.batch_norm(x, running, rv, w, b, True, 0.2, 1e-3),
                            lambda x, w, b: TF.batch_norm(x, trm, trv, w, b, True, 0.2, 1e-3), arrays)
        np.testing.assert_allclose(running.numpy(), trm.numpy(), **tol(dtype))
        np.testing.assert_allclose(rv, trv.numpy(), **tol(dtype))
    assert running.dtype == dtype and rv.dtype == dtype
    # eval mode normalises with the running statistics
    x = randn(*shape, dtype=dtype, seed=5)
    check_against_torch(lambda x, w, b: F.batch_norm(x, running, rv, w, b, False),
                        lambda x, w, b: TF.batch_norm(x, trm, trv, w, b, False), [x, randn(c, dtype=dtype),
                                                                                  randn(c, dtype=dtype, seed=3)])


# --- dropout, drop_path ------------------------------------------------------------------------
# --- losses ------------------------------------------------------------------------------------
CE_SHAPES = [((5, 4), (5,)), ((1, 3), (1,)), ((2, 4, 3), (2, 3)), ((2, 3, 2, 2), (2, 2, 2))]


def class_targets(shape, c, seed=0, ignore=True):
    t = np.random.default_rng(seed).integers(0, c, shape)
    if ignore and t.size > 2:
        t.reshape(-1)[1] = -100  # one ignored element
    return t


@pytest.mark.parametrize("shapes", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_class_indices(shapes, reduction, smoothing, weighted, dtype):
    xs, ts = shapes
    c = xs[1]
    w = np.linspace(0.5, 2, c).astype(dtype) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    arrays = [randn(*xs, dtype=dtype) * 2, class_targets(ts, c)]
    out = check_against_torch(
        lambda x, t: F.cross_entropy(x, t, None if w is None else mv.Tensor(w), **kw),
        lambda x, t: TF.cross_entropy(x, t, None if w is None else torch.tensor(w), **kw), arrays)[0]
    assert out.dtype == dtype


@pytest.mark.parametrize("shapes", [((5, 4), None), ((2, 4, 3), None), ((2, 3, 2, 2), None)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_probability_targets(shapes, reduction, smoothing, weighted, dtype):
    """Soft targets (mixup/cutmix labels); the target gets a gradient too."""
    xs = shapes[0]
    c = xs[1]
    w = np.linspace(0.5, 2, c).astype(dtype) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    probs = np.random.default_rng(1).random(xs)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
    arrays = [randn(*xs, dtype=dtype) * 2, probs]
    check_against_torch(lambda x, t: F.cross_entropy(x, t, None if w is None else mv.Tensor(w), **kw),
                        lambda x, t: TF.cross_entropy(x, t, None if w is None else torch.tensor(w), **kw), arrays)


def test_cross_entropy_unbatched_and_all_ignored():
    x = randn(4)
    check_against_torch(lambda x: F.cross_entropy(x, np.array(2)), lambda x: TF.cross_entropy(x, torch.tensor(2)),
                        [x])
    out = F.cross_entropy(mv.Tensor(randn(2, 3)), np.array([-100, -100]), reduction="sum")
    assert out.item() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_loss(reduction, weighted, dtype):
    w = np.array([0.5, 1.0, 2.0], dtype) if weighted else None
    logp = np.log(np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 2))).transpose(0, 2, 1).astype(dtype)
    arrays = [logp, class_targets((4, 2), 3)]
    check_against_torch(lambda x, t: F.nll_loss(x, t, None if w is None else mv.Tensor(w), reduction=reduction),
                        lambda x, t: TF.nll_loss(x, t, None if w is None else torch.tensor(w), reduction=reduction),
                        arrays)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss(reduction, dtype):
    arrays = [randn(3, 4, dtype=dtype), randn(3, 4, dtype=dtype, seed=1)]
    check_against_torch(lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: TF.mse_loss(a, b, reduction=reduction),
                        arrays)


# --- regressions: behaviour that once differed from PyTorch ------------------------------------------
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("shape,target", [((2, 3), [1, 1]), ((2, 3, 2), [[1, 1], [1, 1]]), ((3,), 1)])
def test_all_ignored_mean_loss_is_nan_with_zero_gradient(loss, shape, target):
    """Every element ignored: the mean is 0/0 = NaN, but the gradient is 0, not NaN (it would poison
    the weights), as PyTorch."""
    target = np.array(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = check_against_torch(lambda x: getattr(F, loss)(x, target, ignore_index=1),
                                  lambda x: getattr(TF, loss)(x, torch.tensor(target), ignore_index=1), [randn(*shape)])
    assert np.isnan(out[0].item())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("input_shape", [(3, 4, 2), (4,)])
def test_cross_entropy_probability_targets_give_the_weights_a_gradient(reduction, input_shape):
    probs = np.random.default_rng(1).random(input_shape)
    probs /= probs.sum(axis=0 if len(input_shape) == 1 else 1, keepdims=True)
    kw = dict(reduction=reduction, label_smoothing=0.2)
    arrays = [randn(*input_shape), probs, np.linspace(0.5, 2, 4)]
    check_against_torch(lambda x, t, w: F.cross_entropy(x, t, w, **kw),
                        lambda x, t, w: TF.cross_entropy(x, t, w, **kw), arrays)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_unbatched(reduction):
    w = np.array([0.5, 2.0, 1.0])
    check_against_torch(lambda x: F.nll_loss(x, np.array(1), mv.Tensor(w), reduction=reduction),
                        lambda x: TF.nll_loss(x, torch.tensor(1), torch.tensor(w), reduction=reduction), [randn(3)])


# --- zero-size inputs (an empty batch) ------------------------------------------------------------------
def _weights(c, dtype):
    return np.linspace(0.5, 2, c).astype(dtype)


EMPTY_OPS = [  # (name, minivolo fn, torch fn, extra input arrays after the empty (0, 4, 3) input)
    ("softmax", lambda x: F.softmax(x, -1), lambda x: TF.softmax(x, -1), []),
    ("softmax_empty_dim", lambda x: F.softmax(x, 0), lambda x: TF.softmax(x, 0), []),
    ("log_softmax", lambda x: F.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1), []),
    ("log_softmax_empty_dim", lambda x: F.log_softmax(x, 0), lambda x: TF.log_softmax(x, 0), []),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, 3, w, b), lambda x, w, b: TF.layer_norm(x, (3,), w, b),
     [(3,), (3,)]),
    ("batch_norm_eval", lambda x, w, b: F.batch_norm(x, np.zeros(4, x.dtype), np.ones(4, x.dtype), w, b),
     lambda x, w, b: TF.batch_norm(x, torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype), w, b),
     [(4,), (4,)]),
    ("linear", F.linear, TF.linear, [(5, 3), (5,)]),
    ("relu", F.relu, TF.relu, []),
    ("gelu", F.gelu, TF.gelu, []),
    ("gelu_tanh", lambda x: F.gelu(x, "tanh"), lambda x: TF.gelu(x, approximate="tanh"), []),
    ("erf", F.erf, torch.erf, []),
    ("dropout_eval", lambda x: F.dropout(x, 0.5, False), lambda x: TF.dropout(x, 0.5, False), []),
    ("mse_loss", F.mse_loss, TF.mse_loss, [(0, 4, 3)]),
    ("mse_loss_sum", lambda a, b: F.mse_loss(a, b, "sum"), lambda a, b: TF.mse_loss(a, b, reduction="sum"),
     [(0, 4, 3)]),
    ("cross_entropy_probs", F.cross_entropy, TF.cross_entropy, [(0, 4, 3)]),
]
EMPTY_LOSS_REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("name,f,tf,extra", EMPTY_OPS, ids=[e[0] for e in EMPTY_OPS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_size_inputs_match_torch(name, f, tf, extra, dtype):
    """(0, 4, 3) in: empty outputs and gradients, NaN for a mean over nothing, as torch (no NumPy error)."""
    arrays = [np.zeros((0, 4, 3), dtype)] + [randn(*shape, dtype=dtype, seed=i + 1) for i, shape in enumerate(extra)]
    with np.errstate(all="raise"):  # no NumPy warning either: torch gives its NaN quietly
        check_against_torch(f, tf, arrays)


@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("reduction", EMPTY_LOSS_REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_zero_size_class_index_losses_match_torch(loss, reduction, weighted):
    w = _weights(4, np.float64) if weighted else None
    t = np.zeros((0, 3), np.int64)
    with np.errstate(all="raise"):
        out = check_against_torch(
            lambda x: getattr(F, loss)(x, t, None if w is None else mv.Tensor(w), reduction=reduction),
            lambda x: getattr(TF, loss)(x, torch.tensor(t), None if w is None else torch.tensor(w),
                                        reduction=reduction), [np.zeros((0, 4, 3))])[0]
    assert out.shape == ((0, 3) if reduction == "none" else ())


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_zero_size_dropout_and_drop_path(p):
    x = mv.Tensor(np.zeros((0, 4, 3), np.float32), requires_grad=True)
    for y in (F.dropout(x, p), F.drop_path(x, p, training=True)):
        assert y.shape == (0, 4, 3) and y.dtype == np.float32
        y.sum().backward()
        assert x.grad.shape == (0, 4, 3)
    assert tuple(TF.dropout(torch.zeros((0, 4, 3)), p).shape) == (0, 4, 3)


def test_zero_size_batch_norm_training_is_refused_in_our_words():
    """torch refuses one value per channel; an empty batch has none: refused too, naming the shape."""
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        TF.batch_norm(torch.zeros((1, 4)), None, None, training=True)
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training, got input of shape "
                                         r"\(0, 4, 3\)"):
        F.batch_norm(mv.Tensor(np.zeros((0, 4, 3))), None, None, training=True)
