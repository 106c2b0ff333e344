"""minivolo.functional.nn and minivolo.nn without PyTorch: every op's and every layer's gradient against
finite differences (float64), erf against math.erf, fused ops against their composed definitions, the
statistics of dropout and of the initialisers, and Module bookkeeping. Against torch: test_functional_nn.py
and test_nn.py."""
import math

import numpy as np
import pytest

import minivolo as mv
from minivolo import functional as F
from minivolo import nn
from minivolo.nn import init

DTYPES = [np.float64, np.float32]


def randn(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def leaf(a):
    return mv.Tensor(np.array(a, dtype=np.float64), requires_grad=True)


def probabilities(*shape, seed=1):
    p = np.random.default_rng(seed).random(shape)
    return p / p.sum(axis=1, keepdims=True)


# name -> (function of Tensors, input arrays); every input is a float64 leaf for gradcheck
TARGETS = np.array([[0, 2], [1, -100], [2, 1]])  # (N=3, d=2) class indices, one ignored
WEIGHTS = np.array([0.5, 1.0, 2.0])
OPS = {
    "linear": (F.linear, [randn(2, 3, 4), randn(5, 4, seed=1), randn(5, seed=2)]),
    "linear_no_bias": (F.linear, [randn(4), randn(5, 4, seed=1)]),
    "relu": (F.relu, [randn(3, 5)]),
    "erf": (F.erf, [randn(10) * 2]),
    "gelu": (F.gelu, [randn(3, 5) * 2]),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), [randn(3, 5) * 2]),
    "softmax": (lambda x: F.softmax(x, 1), [randn(2, 4, 3) * 3]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [randn(2, 4, 3) * 3]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (3, 4), w, b), [randn(2, 3, 4), randn(3, 4, seed=1),
                                                                    randn(3, 4, seed=2)]),
    "layer_norm_no_affine": (lambda x: F.layer_norm(x, 4), [randn(3, 4) * 3 + 1]),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         [randn(3, 2, 2, 2), randn(2, seed=1), randn(2, seed=2)]),
    "batch_norm_eval": (lambda x, w, b: F.batch_norm(x, np.array([0.3, -0.2]), np.array([0.5, 2.0]), w, b),
                        [randn(3, 2, 2), randn(2, seed=1), randn(2, seed=2)]),
    "dropout": (lambda x: F.dropout(x, 0.4) if mv.manual_seed(1) is None else None, [randn(4, 5)]),
    "drop_path": (lambda x: F.drop_path(x, 0.5, True) if mv.manual_seed(2) is None else None, [randn(6, 2, 3)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, TARGETS, mv.Tensor(WEIGHTS), label_smoothing=0.1),
                      [randn(3, 3, 2)]),
    "cross_entropy_sum": (lambda x: F.cross_entropy(x, TARGETS[:, 0], reduction="sum"), [randn(3, 3)]),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, TARGETS, reduction="none"), [randn(3, 3, 2)]),
    "cross_entropy_probs": (lambda x, t, w: F.cross_entropy(x, t, w, label_smoothing=0.2),
                            [randn(4, 3), probabilities(4, 3), WEIGHTS]),
    "nll_loss": (lambda x: F.nll_loss(x, TARGETS, mv.Tensor(WEIGHTS)), [randn(3, 3, 2)]),
    "nll_loss_none": (lambda x: F.nll_loss(x, TARGETS[:, 1], reduction="none"), [randn(3, 3)]),
    "mse_loss": (F.mse_loss, [randn(3, 4), randn(3, 4, seed=1)]),
    "mse_loss_sum": (lambda a, b: F.mse_loss(a, b, "sum"), [randn(3, 4), randn(3, 4, seed=1)]),
}


@pytest.mark.parametrize("name", OPS)
def test_functional_op_gradcheck(name):
    fn, arrays = OPS[name]
    assert mv.gradcheck(fn, *map(leaf, arrays))


LAYERS = {
    "Linear": (lambda: nn.Linear(4, 3), (2, 4)),
    "Conv2d": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), (2, 2, 5, 4)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (2, 3, 2, 2)),
    "LayerNorm": (lambda: nn.LayerNorm(4), (3, 4)),
    "GELU": (lambda: nn.GELU(), (3, 4)),
    "ReLU": (lambda: nn.ReLU(), (3, 4)),
    "Softmax": (lambda: nn.Softmax(0), (3, 4)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, 1), (1, 2, 3, 3)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.LayerNorm(5), nn.Linear(5, 2)), (3, 4)),
}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradcheck_input_and_parameters(name, train):
    make, shape = LAYERS[name]
    layer = make().double().train(train)
    # the parameters themselves are checked: gradcheck nudges them in place (BatchNorm's running
    # statistics move at every call, but in training mode the output does not read them)
    assert mv.gradcheck(lambda x, *params: layer(x), leaf(randn(*shape)), *layer.parameters())


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-8, 8, 4001), np.logspace(-300, 1, 200), -np.logspace(-30, 1, 200),
                        [0.84375, 1.25, 1 / 0.35, 6.0, 5e-324, 1e-320]])
    got = F.erf(mv.Tensor(x)).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [math.erf(v) for v in x], rtol=1e-15, atol=0)
    special = F.erf(mv.Tensor(np.array([np.inf, -np.inf, 0.0, -0.0, np.nan]))).numpy()
    assert special[:3].tolist() == [1, -1, 0] and np.signbit(special[3]) and np.isnan(special[4])
    assert F.erf(mv.Tensor(np.array(0.5))).shape == () and F.erf(mv.Tensor(np.zeros((2, 0, 3)))).shape == (2, 0, 3)


@pytest.mark.parametrize("fn", [F.erf, F.gelu, lambda t: F.gelu(t, "tanh")], ids=["erf", "gelu", "gelu_tanh"])
def test_float32_stays_float32(fn):
    x = mv.Tensor(np.linspace(-5, 5, 2001).astype(np.float32), requires_grad=True)
    y = fn(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    ref = fn(mv.Tensor(x.numpy().astype(np.float64))).numpy()
    assert np.abs(y.numpy() - ref).max() < 2.4e-7 * max(1, np.abs(ref).max())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_agrees_with_its_composed_definition(approximate):
    """x Phi(x), written with Tensor ops: the fused op's values and gradient are the same numbers."""
    def reference(x):
        if approximate == "none":
            return x * (1 + F.erf(x * (1 / math.sqrt(2)))) * 0.5
        return x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)).tanh()) * 0.5
    x1, x2 = leaf(randn(50) * 3), leaf(randn(50) * 3)
    F.gelu(x1, approximate).sum().backward()
    reference(x2).sum().backward()
    np.testing.assert_allclose(F.gelu(x1, approximate).numpy(), reference(x2).numpy(), rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_fused_softmax_and_layer_norm_agree_with_composed_definitions():
    x = randn(3, 5) * 4
    t = mv.Tensor(x)
    e = (t - t.max(1, keepdims=True)).exp()
    np.testing.assert_allclose(F.softmax(t, 1).numpy(), (e / e.sum(1, keepdims=True)).numpy(), rtol=1e-14)
    np.testing.assert_allclose(F.log_softmax(t, 1).numpy(), np.log(F.softmax(t, 1).numpy()), rtol=1e-13)
    centred = t - t.mean(-1, keepdims=True)
    ref = centred / ((centred * centred).mean(-1, keepdims=True) + 1e-5).sqrt()
    np.testing.assert_allclose(F.layer_norm(t, 5).numpy(), ref.numpy(), rtol=1e-13, atol=1e-14)
    logp = F.log_softmax(t, 1).numpy()
    np.testing.assert_allclose(F.cross_entropy(t, np.array([0, 4, 2])).item(),
                               -logp[[0, 1, 2], [0, 4, 2]].mean(), rtol=1e-14)


# --- moved from test_functional_nn.py: no torch needed ---------------------------------
def test_linear_errors():
    x, w = mv.Tensor(randn(2, 3)), mv.Tensor(randn(5, 4))
    with pytest.raises(ValueError, match=r"input must be \(\*, 4\)"):
        F.linear(x, w)
    with pytest.raises(ValueError, match="bias must have shape"):
        F.linear(mv.Tensor(randn(2, 4)), w, mv.Tensor(randn(4)))


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"must end in normalized_shape \(5,\)"):
        F.layer_norm(mv.Tensor(randn(2, 4)), 5)
    with pytest.raises(ValueError, match="weight must have normalized_shape"):
        F.layer_norm(mv.Tensor(randn(2, 4)), 4, mv.Tensor(randn(5)))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(training):
    x, w, b = leaf(randn(3, 2, 2, 2)), leaf(randn(2, seed=1)), leaf(randn(2, seed=2))
    rm, rv = np.array([0.3, -0.2]), np.array([0.5, 2.0])
    assert mv.gradcheck(lambda x, w, b: F.batch_norm(x, None if training else rm, None if training else rv,
                                                     w, b, training), x, w, b)
    assert mv.gradcheck(lambda x: F.batch_norm(x, rm.copy(), rv.copy(), training=training), x)


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(mv.Tensor(randn(1, 3)), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
        F.batch_norm(mv.Tensor(randn(2, 3)), np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match="needed when training=False"):
        F.batch_norm(mv.Tensor(randn(2, 3)), None, None, training=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_statistics_and_scaling(dtype):
    p = 0.3
    x = mv.Tensor(np.ones((200, 500), dtype), requires_grad=True)
    y = F.dropout(x, p)
    assert y.dtype == dtype
    kept = y.numpy() != 0
    assert abs(1 - kept.mean() - p) < 0.005  # 100k draws: std of the fraction is 0.0015
    scale = np.asarray(1, dtype) / np.asarray(1 - p, dtype)  # torch's division, in the input's dtype
    assert np.all(y.numpy()[kept] == scale)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())  # the gradient goes through the same mask


def test_dropout_eval_identity_edges_and_seed():
    x = mv.Tensor(randn(4, 6))
    assert F.dropout(x, 0.5, training=False) is x and F.dropout(x, 0.0) is x
    assert np.all(F.dropout(x, 1.0).numpy() == 0)
    mv.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    mv.manual_seed(3)
    np.testing.assert_array_equal(a, F.dropout(x, 0.5).numpy())
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        F.dropout(x, 1.5)


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_drops_whole_samples(scale_by_keep):
    x = mv.Tensor(np.ones((4000, 3, 2), np.float32), requires_grad=True)
    y = F.drop_path(x, 0.25, training=True, scale_by_keep=scale_by_keep).numpy()
    per_sample = y.reshape(4000, -1)
    assert np.all(per_sample == per_sample[:, :1])  # each sample is dropped or kept as a whole
    dropped = per_sample[:, 0] == 0
    assert abs(dropped.mean() - 0.25) < 0.03
    expected = np.float32(1) / np.float32(0.75) if scale_by_keep else 1
    assert np.all(per_sample[~dropped] == expected)
    assert F.drop_path(x, 0.25, training=False) is x and F.drop_path(x, 0.0, training=True) is x
    mv.manual_seed(7)
    a = F.drop_path(x, 0.5, training=True).numpy()
    mv.manual_seed(7)
    np.testing.assert_array_equal(a, F.drop_path(x, 0.5, training=True).numpy())


def test_cross_entropy_errors():
    x = mv.Tensor(randn(3, 4))
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        F.cross_entropy(x, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\)"):  # on a GPU: NaN, no wait
        F.cross_entropy(x.to("cpu"), np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(x, np.array([0, 1, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"probability target must have the input's shape"):
        F.cross_entropy(x, randn(3, 5))


# --- modules and initialisation -------------------------------------------------------------
def make_net(m):
    """The same network in minivolo (m = minivolo.nn) or PyTorch (m = torch.nn):
    Conv-BN-ReLU features, global average pool, LayerNorm, Linear head: (N, 3, H, W) -> (N, 5)."""
    class Net(m.Module):
        def __init__(self):
            super().__init__()
            self.features = m.Sequential(m.Conv2d(3, 4, 3, padding=1), m.BatchNorm2d(4), m.ReLU())
            self.norm = m.LayerNorm(4)
            self.head = m.Linear(4, 5)

        def forward(self, x):
            return self.head(self.norm(self.features(x).mean(axis=(2, 3))))
    return Net()


def image(dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, 5, 5)).astype(dtype)


def test_train_eval_zero_grad_and_dtype():
    model = make_net(nn)
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model(mv.Tensor(image(np.float32))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model.features[1].running_var.dtype == np.float64
    assert model.features[1].num_batches_tracked.dtype == np.int64  # integers are not cast
    assert model(mv.Tensor(image(np.float64))).dtype == np.float64


def test_buffer_reassignment_keeps_it_a_buffer():
    bn = nn.BatchNorm2d(2)
    bn.running_mean = mv.Tensor(np.full(2, 3.0, np.float32))
    assert "running_mean" in bn.state_dict() and bn.state_dict()["running_mean"][0] == 3


def test_load_state_dict_reports_every_problem_at_once():
    model = make_net(nn)
    state = model.state_dict()
    del state["head.bias"]
    state["head.extra"] = np.zeros(3)
    state["norm.weight"] = np.zeros(7)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "'head.bias'" in message and "'head.extra'" in message and "norm.weight" in message
    assert "(4,)" in message and "(7,)" in message


def test_drop_path_repr():
    assert repr(nn.DropPath(0.1)) == "DropPath(drop_prob=0.100)"  # as timm


def test_dropout_and_drop_path_modules_follow_the_mode():
    x = mv.Tensor(np.ones((64, 8), np.float32))
    for layer in (nn.Dropout(0.5), nn.DropPath(0.5)):
        assert np.any(layer(x).numpy() == 0)
        layer.eval()
        assert layer(x) is x


def normal_cdf(v):
    return (1 + math.erf(v / math.sqrt(2))) / 2


def truncated_normal_moments(mean, std, a, b):
    """Mean and standard deviation of N(mean, std^2) truncated to [a, b]."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    z = normal_cdf(beta) - normal_cdf(alpha)
    m = (pdf(alpha) - pdf(beta)) / z
    var = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - m * m
    return mean + std * m, std * math.sqrt(var)


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 0.02, -2.0, 2.0), (0.5, 1.0, -1.0, 1.5), (0.0, 1.0, 1.0, 3.0)])
def test_trunc_normal_distribution(mean, std, a, b):
    n = 200_000
    x = init.trunc_normal_(mv.Tensor(np.empty(n, np.float32)), mean, std, a, b).numpy()
    assert x.dtype == np.float32 and np.all((x >= a) & (x <= b))
    m, s = truncated_normal_moments(mean, std, a, b)
    assert abs(x.mean() - m) < 5 * s / math.sqrt(n)
    assert abs(x.std() - s) < 0.01 * s
    # the whole distribution: the empirical CDF within the 99.9% DKW band of the truncated normal's CDF
    lo, hi = max(a, mean - 4 * std), min(b, mean + 4 * std)
    points = np.linspace(lo, hi, 41)
    low = normal_cdf((a - mean) / std)
    expected = [(normal_cdf((p - mean) / std) - low) / (normal_cdf((b - mean) / std) - low) for p in points]
    assert np.abs((x[:, None] <= points).mean(axis=0) - expected).max() < math.sqrt(math.log(2 / 1e-3) / (2 * n))


@pytest.mark.parametrize("make,fan_in", [(lambda: nn.Linear(50, 30), 50), (lambda: nn.Conv2d(8, 16, 3, groups=2), 36)])
def test_default_init_bounds(make, fan_in):
    layer = make()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt 5) reduces to U(+-1/sqrt(fan_in))
    for p in (layer.weight, layer.bias):
        v = p.numpy()
        assert np.all(np.abs(v) <= bound) and p.dtype == np.float32
    w = layer.weight.numpy()
    assert np.abs(w).max() > 0.9 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound


def test_manual_seed_gives_identical_parameters():
    mv.manual_seed(123)
    a = make_net(nn).state_dict()
    mv.manual_seed(123)
    b = make_net(nn).state_dict()
    c = make_net(nn).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.weight"], c["head.weight"])


def test_sequential_and_module_list_slices_like_torch():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    head = nn.Sequential(*layers)[1:]
    assert isinstance(head, nn.Sequential) and list(head.state_dict()) == ["2.weight", "2.bias"]
    tail = nn.ModuleList(layers)[1:]
    assert isinstance(tail, nn.ModuleList) and list(tail.state_dict()) == ["1.weight", "1.bias"]
