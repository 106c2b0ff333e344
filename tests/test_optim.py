"""Optimizers against torch.optim (float64, 1e-12), clipping, schedules, state_dict round trips."""
import math

import numpy as np
import pytest

import minivolo as mv
from minivolo import backend, optim
from minivolo.nn import Module, Parameter

try:  # the comparisons with torch.optim need torch; the rest of this file does not
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="compares with torch (the test oracle), which is not "
                                 "installed: pip install 'minivolo[test]'")

TOL = dict(atol=1e-12, rtol=1e-12)


class Lin(Module):
    def __init__(self, w, b):
        super().__init__()
        self.weight, self.bias = Parameter(w), Parameter(b)


class Net(Module):
    """y = fc2(tanh(fc1(x) + pos_embed)): a 2-D weight, a 1-D bias and a listed no-decay name per layer."""

    def __init__(self, arrays):
        super().__init__()
        self.fc1, self.fc2 = Lin(arrays[0], arrays[1]), Lin(arrays[2], arrays[3])
        self.pos_embed = Parameter(arrays[4])

    def forward(self, x):
        h = (x @ self.fc1.weight.T + self.fc1.bias + self.pos_embed).tanh()
        return h @ self.fc2.weight.T + self.fc2.bias


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(8, 5), (8,), (3, 8), (3,), (1, 8)]
    return [rng.standard_normal(s) for s in shapes]


def _torch_params(arrays):
    return [torch.tensor(a.copy(), requires_grad=True) for a in arrays]


def _torch_forward(tp, x):
    h = torch.tanh(x @ tp[0].T + tp[1] + tp[4])
    return h @ tp[2].T + tp[3]


def _batch(step):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((6, 5)), rng.standard_normal((6, 3))


def _mv_backward(net, step):
    x, t = _batch(step)
    d = net(mv.Tensor(x)) - mv.Tensor(t)
    (d * d).mean().backward()


def _torch_backward(tp, step):
    x, t = (torch.tensor(a) for a in _batch(step))
    ((_torch_forward(tp, x) - t) ** 2).mean().backward()


def _groups(params, split):
    """Both frameworks' param groups: one group, or weights-with-decay / the rest-without."""
    if not split:
        return params
    return [{"params": [params[0], params[2]]},
            {"params": [params[1], params[3], params[4]], "weight_decay": 0.0, "lr": 0.05}]


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, betas=(0.3, 0.9))),  # lerp weight 0.7 >= 0.5: torch's other formula
]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name,kwargs", CASES)
@needs_torch
def test_matches_torch(name, kwargs, split):
    arrays = _arrays()
    net, tp = Net(arrays), _torch_params(arrays)
    mv_params = [net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias, net.pos_embed]  # arrays' order
    opt = getattr(optim, name)(_groups(mv_params, split), **kwargs)
    topt = getattr(torch.optim, name)(_groups(tp, split), foreach=False, **kwargs)
    for step in range(5):
        opt.zero_grad()
        topt.zero_grad()
        _mv_backward(net, step)
        _torch_backward(tp, step)
        opt.step()
        topt.step()
        for i, (p, q) in enumerate(zip(mv_params, tp)):
            np.testing.assert_allclose(p.numpy(), q.detach().numpy(), **TOL, err_msg=f"step {step}, param {i}")


def test_param_without_grad_is_skipped():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(3))
    opt = optim.AdamW([p, q], lr=0.1)
    p.grad = mv.Tensor(np.ones(3))
    opt.step()
    assert np.all(q.numpy() == 1) and np.all(p.numpy() < 1)
    assert len(opt.state) == 1


def test_update_keeps_dtype_and_works_in_place():
    p = Parameter(np.ones(4, np.float32))
    data = p.data
    opt = optim.AdamW([p], lr=0.1)
    p.grad = mv.Tensor(np.ones(4, np.float32))
    opt.step()
    assert p.data is data and p.dtype == np.float32
    assert opt.state[id(p)]["exp_avg"].dtype == np.float32


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("AdamW", dict(lr=1e-2, amsgrad=True))])
def test_state_dict_round_trip_continues_identically(name, kwargs):
    """Run 3 steps, save, run 3 more; a fresh optimizer loaded from the save gives the same weights."""
    arrays = _arrays()
    a, b = Net(arrays), Net(arrays)
    opt_a = getattr(optim, name)(optim.param_groups_weight_decay(a, 0.01), **kwargs)
    for step in range(3):
        opt_a.zero_grad()
        _mv_backward(a, step)
        opt_a.step()
    saved = opt_a.state_dict()
    b.load_state_dict(a.state_dict())
    opt_b = getattr(optim, name)(optim.param_groups_weight_decay(b, 0.5), lr=123.0)
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[1]["weight_decay"] == 0.01 and opt_b.param_groups[0]["lr"] == kwargs["lr"]
    for net, opt in ((a, opt_a), (b, opt_b)):
        for step in range(3, 6):
            opt.zero_grad()
            _mv_backward(net, step)
            opt.step()
    for (name_a, p), q in zip(a.named_parameters(), b.parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), name_a


def test_state_dict_holds_host_copies():
    p = Parameter(np.ones(3))
    opt = optim.AdamW([p])
    p.grad = mv.Tensor(np.ones(3))
    opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 1 and isinstance(sd["state"][0]["exp_avg"], np.ndarray)
    sd["state"][0]["exp_avg"][:] = 7  # a copy: the optimizer is untouched
    assert not np.any(opt.state[id(p)]["exp_avg"] == 7)
    assert sd["param_groups"][0]["params"] == [0]


def test_load_state_dict_rejects_mismatch():
    opt = optim.SGD([Parameter(np.ones(3))], lr=0.1, momentum=0.9)
    other = optim.SGD([Parameter(np.ones(3)), Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(other.state_dict())
    bad = {"state": {0: {"momentum_buffer": np.ones(4)}}, "param_groups": opt.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@needs_torch
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s) for s in [(4, 3), (3,), (2, 2, 2)]]
    ps = [Parameter(np.zeros(g.shape)) for g in grads]
    tps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, q, g in zip(ps, tps, grads):
        p.grad, q.grad = mv.Tensor(g.copy()), torch.tensor(g.copy())
    total = optim.clip_grad_norm_(ps, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type, foreach=False)
    assert isinstance(total, mv.Tensor) and total.shape == () and total.dtype == np.float64  # as torch's
    np.testing.assert_allclose(total.item(), ttotal.item(), **TOL)
    for p, q in zip(ps, tps):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)


def test_clip_grad_norm_leaves_read_only_grads_alone():
    p = Parameter(np.zeros((2, 3)))
    g = np.broadcast_to(np.ones(3), (2, 3))  # what a broadcasting backward can hand over
    p.grad = mv.Tensor(g)
    optim.clip_grad_norm_([p], 1.0)
    assert np.all(g == 1)
    np.testing.assert_allclose(np.sqrt((p.grad.numpy() ** 2).sum()), 1.0, rtol=1e-5)


def test_param_groups_weight_decay():
    net = Net(_arrays())
    no_decay, decay = optim.param_groups_weight_decay(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(net.fc1.weight), id(net.fc2.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(net.fc1.bias), id(net.fc2.bias), id(net.pos_embed)}
    no_decay, decay = optim.param_groups_weight_decay(net, 0.05, no_weight_decay_list=())
    assert id(net.pos_embed) in {id(p) for p in decay["params"]}


def _cosine(step, base, total, warmup, min_lr, start):
    if step < warmup:
        return start + (base - start) * step / warmup
    t = min((step - warmup) / (total - warmup), 1.0)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t))


def test_cosine_warmup_schedule():
    opt = optim.AdamW([{"params": [Parameter(np.ones(2))]}, {"params": [Parameter(np.ones(2))], "lr": 0.5}],
                      lr=1.0)
    sched = optim.CosineWarmup(opt, total_steps=100, warmup_steps=10, min_lr=0.01, warmup_start_lr=0.001)
    seen = {}
    for step in range(121):
        seen[step] = sched.get_last_lr()
        sched.step()
    assert seen[0] == [0.001, 0.001]
    np.testing.assert_allclose(seen[5], [0.5005, 0.2505])
    assert seen[10] == [1.0, 0.5]  # warm-up done: the base lr
    np.testing.assert_allclose(seen[55], [0.505, 0.255])  # half-way through the cosine
    np.testing.assert_allclose(seen[100], [0.01, 0.01])
    assert seen[120] == seen[100]  # stays at min_lr
    for step in (1, 9, 33, 77, 99):
        np.testing.assert_allclose(seen[step], [_cosine(step, b, 100, 10, 0.01, 0.001) for b in (1.0, 0.5)],
                                   rtol=1e-15)
    assert all(a >= b for a, b in zip([seen[s][0] for s in range(10, 100)], [seen[s][0] for s in range(11, 101)]))


def test_scheduler_state_dict_round_trip():
    def make():
        opt = optim.SGD([Parameter(np.ones(2))], lr=0.1)
        return opt, optim.CosineWarmup(opt, total_steps=50, warmup_steps=5)
    opt, sched = make()
    for _ in range(17):
        sched.step()
    opt2, sched2 = make()
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_step == 17 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_lambda_lr():
    opt = optim.SGD([Parameter(np.ones(2))], lr=0.2)
    sched = optim.LambdaLR(opt, lambda s: 0.5 ** s)
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_load_state_dict_rejects_unknown_parameter_index_and_keeps_its_state():
    p = Parameter(np.ones(3))
    opt = optim.AdamW([p], lr=0.1)
    p.grad = mv.Tensor(np.full(3, 0.5))
    opt.step()
    before = {k: (mv.to_numpy(v).copy() if backend.is_array(v) else v) for k, v in opt.state[id(p)].items()}
    sd = opt.state_dict()
    bad = {"state": {0: sd["state"][0], 3: sd["state"][0]}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match=r"parameter 3, this optimizer has 1 parameters"):
        opt.load_state_dict(bad)
    bad = {"state": {0: {**sd["state"][0], "exp_avg": np.zeros(2)}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    assert opt.state[id(p)]["step"] == before["step"] == 1  # the failed loads left the state alone
    np.testing.assert_array_equal(mv.to_numpy(opt.state[id(p)]["exp_avg"]), before["exp_avg"])
