"""Micro-benchmarks against PyTorch: ``python -m minivolo bench [name ...]``.

A benchmark is a function registered under a name that builds its inputs and returns two callables
without arguments: minivolo's version and PyTorch's (None when torch is not importable). ``run`` times
each ``repeat`` times after one warm-up call, the two taking turns, and prints the medians side by side;
PyTorch runs with as many threads as the machine has cores (``torch.set_num_threads(os.cpu_count())``).

    @register("unfold_fold")
    def _unfold_fold():
        ...
        return ours, theirs
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Iterable

import numpy as np

from . import functional as F
from .tensor import Tensor

BENCHMARKS: dict[str, Callable] = {}


def register(name: str):
    """Decorator: add a benchmark under ``name``."""
    def add(fn):
        BENCHMARKS[name] = fn
        return fn
    return add


def _torch():
    """torch, with every core in use; None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _median_ms(fns: list, repeat: int) -> list[float]:
    """Median wall time of each callable, in ms, after one warm-up call each (first-touch page faults,
    lazy imports). The callables take turns, so a machine shared with other work slows them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def run(names: Iterable[str] | None = None, repeat: int = 5, threads_note: bool = True) -> list[dict]:
    """Time the benchmarks ``names`` (all when None); print a table and return its rows as dicts
    (name, minivolo_ms, torch_ms, ratio = minivolo / torch; the torch fields None without torch)."""
    names = list(BENCHMARKS) if names is None else list(names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    if threads_note:
        torch = _torch()
        note = f"torch threads {torch.get_num_threads()}" if torch else "torch not installed"
        print(f"# {os.cpu_count()} CPU cores; NumPy {np.__version__} (BLAS threads as configured); {note}")
    print(f"{'benchmark':<16}{'minivolo ms':>13}{'torch ms':>11}{'ratio':>8}")
    rows = []
    for name in names:
        ours, theirs = BENCHMARKS[name]()
        mine, ref = (_median_ms([f for f in (ours, theirs) if f is not None], repeat) + [None])[:2]
        ratio = mine / ref if ref else None
        print(f"{name:<16}{mine:>13.1f}" + (f"{ref:>11.1f}{ratio:>7.2f}x" if ref else f"{'-':>11}{'-':>8}"))
        rows.append(dict(name=name, minivolo_ms=mine, torch_ms=ref, ratio=ratio))
    return rows


def _inputs(*shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


@register("unfold_fold")
def _unfold_fold():
    """fold(unfold(x)) forward + backward, x (64, 192, 28, 28) float32, kernel 3, padding 1."""
    x, g = _inputs((64, 192, 28, 28), (64, 192, 28, 28))
    size = x.shape[2:]

    def ours():
        t = Tensor(x, requires_grad=True)
        F.fold(F.unfold(t, 3, padding=1), size, 3, padding=1).backward(g)

    torch = _torch()
    if torch is None:
        return ours, None
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)

    def theirs():
        t = tx.clone().requires_grad_()
        torch.nn.functional.fold(torch.nn.functional.unfold(t, 3, padding=1), size, 3, padding=1).backward(tg)
    return ours, theirs


@register("conv2d")
def _conv2d():
    """conv2d forward + backward (input, weight, bias), x (64, 64, 16, 16) float32, 3x3, padding 1, 64 -> 64."""
    x, w, b, g = _inputs((64, 64, 16, 16), (64, 64, 3, 3), (64,), (64, 64, 16, 16))

    def ours():
        ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
        F.conv2d(*ts, padding=1).backward(g)

    torch = _torch()
    if torch is None:
        return ours, None
    arrays, tg = [torch.from_numpy(a) for a in (x, w, b)], torch.from_numpy(g)

    def theirs():
        ts = [a.clone().requires_grad_() for a in arrays]
        torch.nn.functional.conv2d(*ts, padding=1).backward(tg)
    return ours, theirs


@register("volo_tiny_step")
def _volo_tiny_step():
    """One training step's forward + backward of ``volo_tiny`` (batch 64, 1x32x32, cross-entropy), against
    timm's VOLO of the same config when timm imports (it needs torchvision; otherwise minivolo alone)."""
    from . import manual_seed
    from .models import create_model
    from .models.registry import _TINY

    manual_seed(0)
    model = create_model("volo_tiny", in_chans=1, num_classes=10)
    x = _inputs((64, 1, 32, 32))[0]
    y = np.arange(64) % 10

    def ours():
        model.zero_grad()
        F.cross_entropy(model(Tensor(x)), Tensor(y)).backward()
    ours.model = model

    torch = _torch()
    try:
        from timm.models.volo import VOLO
    except Exception:  # timm absent, or present without torchvision: no reference figure
        return ours, None
    theirs_model = VOLO(**{**_TINY, "in_chans": 1})
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def theirs():
        theirs_model.zero_grad()
        torch.nn.functional.cross_entropy(theirs_model(tx), ty).backward()
    theirs.model = theirs_model
    return ours, theirs
