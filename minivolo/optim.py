"""Optimizers, gradient clipping and learning-rate schedules, with ``torch.optim``'s update rules.

    SGD, AdamW                    param groups, zero_grad(), step(), state_dict()/load_state_dict()
    clip_grad_norm_               as torch.nn.utils.clip_grad_norm_; returns the total norm
    param_groups_weight_decay     timm's split: no weight decay on 1-D params, biases, norms, pos_embed...
    LambdaLR, CosineWarmup        per-iteration schedules that set each group's ``lr``

Each update runs in place on ``p.data`` with the array module that owns it (NumPy or CuPy) and in the
parameter's dtype, with the operations in torch's order (the single-tensor "for-loop" implementation
that torch uses on the CPU), so float64 runs agree with torch to round-off.

State dicts hold host NumPy arrays and plain Python numbers: a checkpoint written on a GPU resumes on
the CPU and the other way round, and a resumed run continues bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from . import backend
from .tensor import Tensor


class Optimizer:
    """Base class: holds param groups and per-parameter state; subclasses write ``_update``.

    ``params`` is an iterable of Tensors, or of dicts ``{"params": [...], <hyper-parameter>: value}``
    (param groups, as in torch); hyper-parameters a group does not set come from ``defaults``.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # id(param) -> that parameter's state
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"optimizer params must be Tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one param group")
                seen.add(id(p))
            self.param_groups.append(group)

    def zero_grad(self) -> None:
        """Drop every gradient (``grad = None``, torch's default ``set_to_none=True``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.data
                if g.dtype != p.data.dtype:
                    g = g.astype(p.data.dtype)
                self._update(p.data, g, self.state.setdefault(id(p), {}), group)

    def _update(self, p, g, state: dict, group: dict) -> None:
        raise NotImplementedError

    # --- state_dict ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {name: ndarray | number}}, "param_groups": [{..., "params": [index]}]}``.

        Parameters are numbered in group order, as torch does; arrays are host NumPy copies.
        """
        index, groups = 0, []
        state = {}
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                if id(p) in self.state:
                    state[index] = {k: (np.array(backend.to_numpy(v)) if backend.is_array(v) else v)
                                    for k, v in self.state[id(p)].items()}
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state; arrays go to each parameter's device and dtype."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(groups)} param groups, this optimizer has "
                             f"{len(self.param_groups)}")
        params = [p for group in self.param_groups for p in group["params"]]
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {i}: optimizer state has {len(saved['params'])} parameters, "
                                 f"this optimizer has {len(group['params'])}")
        state = {}  # built aside: a mismatch found halfway leaves this optimizer as it was
        for key, entry in state_dict["state"].items():
            if not 0 <= int(key) < len(params):
                raise ValueError(f"optimizer state for parameter {key}, this optimizer has {len(params)} "
                                 f"parameters (0..{len(params) - 1})")
            p = params[int(key)]
            restored = {}
            for k, v in entry.items():
                if backend.is_array(v) and np.ndim(v) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"optimizer state {k!r} of parameter {key}: expected shape {p.shape}, "
                                         f"got {tuple(v.shape)}")
                    v = backend.to_device(v, p.device).astype(p.dtype, copy=True)
                elif backend.is_array(v):  # a 0-d array from a checkpoint: back to a Python number
                    v = v.item()
                restored[k] = v
            state[id(p)] = restored
        self.state = state
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def __repr__(self) -> str:
        lines = [f"  group {i}: {len(g['params'])} params, " +
                 ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
                 for i, g in enumerate(self.param_groups)]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD).

        g = grad + weight_decay * p
        b = g (first step),  b = momentum * b + (1 - dampening) * g (later)
        g = g + momentum * b (nesterov)  or  g = b
        p = p - lr * g
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"expected lr, momentum, weight_decay >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, g, state, group):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            g = g + wd * p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p -= lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (torch.optim.AdamW; Loshchilov & Hutter, 2019).

        t = t + 1
        p = p * (1 - lr * weight_decay)
        m = m + (1 - beta1) * (g - m)                   (torch's lerp)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                           (amsgrad; then used in place of v)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"expected lr, eps, weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"expected betas in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _update(self, p, g, state, group):
        xp = backend.get_array_module(p)
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]

        if wd != 0:
            p *= 1 - lr * wd
        # two scratch buffers, t and u, instead of a temporary per operation (the same operations in the
        # same order, so the same numbers)
        t = xp.subtract(g, m)                                # g - m
        weight = 1 - beta1  # torch's lerp: the form depends on which side of 0.5 the weight is
        if abs(weight) < 0.5:
            t *= weight
            m += t
        else:
            t *= 1 - weight
            xp.subtract(g, t, out=m)
        xp.multiply(g, 1 - beta2, out=t)
        t *= g                                               # (1 - beta2) g g
        v *= beta2
        v += t

        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        denom = xp.sqrt(v, out=t)
        denom /= bias_correction2_sqrt
        denom += eps
        u = xp.multiply(m, -step_size)
        u /= denom
        p += u


# --- gradients -------------------------------------------------------------------------------------
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    total = || (||g_1||, ..., ||g_n||) ||_p  (the norm of the concatenated gradients);
    every g_i *= min(max_norm / (total + 1e-6), 1). Returns ``total`` (before clipping) as a 0-d Tensor
    on the gradients' device, as torch: reading it (``float(total)``, ``.item()``) is the caller's choice,
    so a training step that clips does not wait for the device.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    if not params:
        return Tensor(np.zeros((), np.float32))
    order = float(norm_type)
    grads = [q.grad.data for q in params]
    xp = backend.get_array_module(grads[0])

    def norm(a):
        if order == math.inf:
            return xp.abs(a).max()
        return xp.sqrt((a * a).sum()) if order == 2 else (xp.abs(a) ** order).sum() ** (1 / order)

    total = norm(xp.stack([norm(g) for g in grads]))
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for q in params:  # a new array: gradients may be read-only views made by broadcasting
        q.grad = Tensor(q.grad.data * coef.astype(q.grad.dtype), device=q.device)
    return Tensor(total, device=params[0].device)


def param_groups_weight_decay(model, weight_decay: float,
                              no_weight_decay_list: Iterable[str] = ("pos_embed", "cls_token")) -> list[dict]:
    """Two param groups, as timm's ``param_groups_weight_decay``: ``[no decay, decay]``.

    No weight decay on 1-D parameters (norm weights and biases), on names ending in ``.bias``, and on
    the names in ``no_weight_decay_list`` (VOLO: the position embedding and the class token).
    """
    skip = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# --- learning-rate schedules -----------------------------------------------------------------------
class LRScheduler:
    """Sets every group's ``lr`` from its ``initial_lr`` and the iteration count.

    Call ``step()`` once after each ``optimizer.step()``; the constructor already sets the lr of step 0.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.last_step, group["initial_lr"])

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_step = int(state_dict["last_step"])
        self._apply()


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(step)."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float]):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        return base_lr * self.lr_lambda(step)


class CosineWarmup(LRScheduler):
    """Linear warm-up, then cosine decay; per iteration.

        s < W:        lr = warmup_start_lr + (base_lr - warmup_start_lr) * s / W
        W <= s <= T:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2
        s > T:        lr = min_lr
    with W = warmup_steps, T = total_steps; base_lr is each group's initial lr.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, warmup_start_lr: float = 0.0):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"expected total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                             f"got total_steps={total_steps}, warmup_steps={warmup_steps}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_lr, self.warmup_start_lr = float(min_lr), float(warmup_start_lr)
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        W, T = self.warmup_steps, self.total_steps
        if step < W:
            return self.warmup_start_lr + (base_lr - self.warmup_start_lr) * step / W
        progress = min((step - W) / (T - W), 1.0) if T > W else 1.0
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
