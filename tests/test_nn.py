"""minivolo.nn against torch.nn: names, reprs, state_dict exchange, layers, initialisation.

Module bookkeeping and the checks that need no torch: test_nn_math.py."""
import math

import numpy as np
import pytest

import minivolo as mv
from minivolo import nn
from minivolo.nn import init
from oracle import tol, torch
from test_nn_math import image, make_net

tnn = torch.nn


# --- Module bookkeeping ------------------------------------------------------------------------
def test_names_match_torch():
    model, tmodel = make_net(nn), make_net(tnn)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in tmodel.named_buffers()]
    for (n, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters()):
        assert p.shape == tuple(tp.shape) and p.dtype == np.float32 and p.requires_grad, n
    assert model.state_dict()["features.1.num_batches_tracked"].dtype == np.int64
    assert model.state_dict()["features.1.num_batches_tracked"].shape == ()
    assert model.num_parameters() == sum(p.numel() for p in tmodel.parameters())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_round_trip_with_torch(dtype):
    """minivolo -> torch gives the same outputs (train and eval); after torch trains a step, torch -> minivolo
    gives the same outputs again."""
    model = make_net(nn).to(dtype=dtype)
    tmodel = make_net(tnn).to(torch.float64 if dtype == np.float64 else torch.float32)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = image(dtype)
    for train in (True, False):
        model.train(train), tmodel.train(train)
        out, tout = model(mv.Tensor(x)), tmodel(torch.from_numpy(x))
        np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **tol(dtype))
    for k, v in tmodel.state_dict().items():  # the running statistics moved identically
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), **tol(dtype), err_msg=k)

    tmodel.train()
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=0.5)
    tmodel(torch.from_numpy(image(dtype, 1))).sum().backward()
    optimizer.step()
    model.load_state_dict(tmodel.state_dict())
    for train in (True, False):
        model.train(train), tmodel.train(train)
        np.testing.assert_allclose(model(mv.Tensor(x)).numpy(), tmodel(torch.from_numpy(x)).detach().numpy(),
                                   **tol(dtype))


# --- layers against torch.nn -------------------------------------------------------------------
REPRS = [
    (lambda m: m.Linear(3, 4), lambda m: m.Linear(3, 4, bias=False)),
    (lambda m: m.Conv2d(3, 6, 3), lambda m: m.Conv2d(4, 6, (3, 1), stride=2, padding=1, dilation=2, groups=2,
                                                     bias=False)),
    (lambda m: m.Conv2d(3, 6, 3, padding="same"), lambda m: m.BatchNorm2d(5, momentum=None, bias=False)),
    (lambda m: m.BatchNorm2d(5, affine=False, track_running_stats=False), lambda m: m.LayerNorm((4, 5), eps=1e-6)),
    (lambda m: m.GELU(), lambda m: m.GELU("tanh")),
    (lambda m: m.Dropout(0.1), lambda m: m.ReLU()),
    (lambda m: m.Identity(), lambda m: m.AvgPool2d(3, 1, 1)),
    (lambda m: m.AvgPool2d(2), lambda m: m.Softmax(dim=1)),
]


@pytest.mark.parametrize("make", [f for pair in REPRS for f in pair])
def test_repr_and_parameters_match_torch(make):
    ours, theirs = make(nn), make(tnn)
    assert repr(ours) == repr(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_batchnorm2d_module_over_several_steps(momentum, track):
    bn, tbn = nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track), \
        tnn.BatchNorm2d(3, momentum=momentum, track_running_stats=track)
    for step in range(3):
        x = np.random.default_rng(step).standard_normal((4, 3, 2, 2)).astype(np.float32) * (step + 1)
        np.testing.assert_allclose(bn(mv.Tensor(x)).numpy(), tbn(torch.from_numpy(x)).detach().numpy(),
                                   **tol(np.float32))
    for k, v in tbn.state_dict().items():
        np.testing.assert_allclose(bn.state_dict()[k], v.numpy(), **tol(np.float32), err_msg=k)
    bn.eval(), tbn.eval()
    np.testing.assert_allclose(bn(mv.Tensor(x)).numpy(), tbn(torch.from_numpy(x)).detach().numpy(),
                               **tol(np.float32))


def test_avg_pool_module_matches_torch():
    x = image(np.float32)
    np.testing.assert_allclose(nn.AvgPool2d(3, 2, 1, count_include_pad=False)(mv.Tensor(x)).numpy(),
                               tnn.AvgPool2d(3, 2, 1, count_include_pad=False)(torch.from_numpy(x)).numpy(),
                               **tol(np.float32))


# --- initialisation ----------------------------------------------------------------------------
def test_fans_gains_and_uniform_inits_match_torch():
    for shape in [(30, 50), (16, 4, 3, 3), (6, 2, 5)]:
        assert init._calculate_fan_in_and_fan_out(mv.Tensor(np.empty(shape))) == \
            tnn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    with pytest.raises(ValueError, match="at least 2 dims"):
        init._calculate_fan_in_and_fan_out(mv.Tensor(np.empty(3)))
    for args in [("relu",), ("leaky_relu", 0.2), ("leaky_relu",), ("tanh",), ("linear",), ("selu",)]:
        assert init.calculate_gain(*args) == pytest.approx(tnn.init.calculate_gain(*args))
    t = mv.Tensor(np.empty((200, 300), np.float64))
    bound = math.sqrt(6 / 500)
    assert np.abs(init.xavier_uniform_(t).numpy()).max() <= bound and t.dtype == np.float64
    bound = math.sqrt(2) * math.sqrt(3 / 300)
    w = init.kaiming_uniform_(t, mode="fan_in", nonlinearity="relu").numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert np.all(init.constant_(t, 0.5).numpy() == 0.5) and np.all(init.zeros_(t).numpy() == 0)
    assert np.all(init.ones_(t).numpy() == 1)
    v = init.normal_(t, 1.0, 2.0).numpy()
    assert abs(v.mean() - 1) < 0.05 and abs(v.std() - 2) < 0.05


# --- regressions: behaviour that once differed from PyTorch ------------------------------------------
def test_batchnorm_loads_a_state_dict_without_num_batches_tracked():
    """Checkpoints from before PyTorch 0.4.1 lack the counter; torch keeps its own, and so do we."""
    bn, tbn = nn.BatchNorm2d(3), tnn.BatchNorm2d(3)
    bn(mv.Tensor(image(np.float32)[:, :3]))
    state = {k: v.numpy() for k, v in tbn.state_dict().items() if k != "num_batches_tracked"}
    assert bn.load_state_dict(state) == ([], [])
    assert int(bn.num_batches_tracked.item()) == 1 and bn.num_batches_tracked.dtype == np.int64
    assert "num_batches_tracked" not in state  # the caller's dict is left alone
    np.testing.assert_array_equal(bn.running_var.numpy(), tbn.running_var.numpy())


def test_a_shared_module_appears_under_every_name_in_the_state_dict():
    shared, tshared = nn.Linear(2, 2), tnn.Linear(2, 2)
    model, tmodel = nn.Sequential(shared, nn.ReLU(), shared), tnn.Sequential(tshared, tnn.ReLU(), tshared)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    assert len(list(model.parameters())) == len(list(tmodel.parameters())) == 2
    model.load_state_dict(tmodel.state_dict())
    np.testing.assert_array_equal(shared.weight.numpy(), tshared.weight.detach().numpy())


def test_avg_pool_module_divisor_override():
    x = image(np.float32)
    np.testing.assert_allclose(nn.AvgPool2d(3, 2, 1, divisor_override=2)(mv.Tensor(x)).numpy(),
                               tnn.AvgPool2d(3, 2, 1, divisor_override=2)(torch.from_numpy(x)).numpy(),
                               **tol(np.float32))


def test_conv2d_module_takes_an_unbatched_image():
    conv, tconv = nn.Conv2d(3, 4, 3, padding=1), tnn.Conv2d(3, 4, 3, padding=1)
    conv.load_state_dict(tconv.state_dict())
    x = image(np.float32)[0]
    np.testing.assert_allclose(conv(mv.Tensor(x)).numpy(), tconv(torch.from_numpy(x)).detach().numpy(),
                               **tol(np.float32))
