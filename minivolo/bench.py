"""Benchmarks against PyTorch: ``python -m minivolo bench [NAME ...] [--json PATH|-] [--device cpu|cuda]
[--repeat N] [--threads N] [--quick]``.

Each row runs minivolo and torch in the same process, on the same inputs (and, for the models, the same
weights: minivolo's ``state_dict`` copied into timm's ``VOLO``), taking turns call by call; it reports the
median of ``repeat`` calls after one warm-up call each. ``volo_d1_memory`` instead runs two D1 training
steps in two fresh processes, one per library, and reports their peak resident memory (``ru_maxrss``);
both import ``minivolo.bench`` (about 50 MiB with NumPy), only the torch one imports torch.

The header states what the figures depend on: the CPU cores, NumPy and its BLAS (library, kernel, threads,
from ``threadpoolctl`` when it is installed), torch and its threads, and the OpenBLAS variables. On the
project's machines ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are set and slow NumPy's BLAS down, so
the documented command unsets them for the benchmark alone::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m minivolo bench
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m minivolo bench --device cuda   # on a GPU

Threads: ``--threads N`` gives NumPy's BLAS (through threadpoolctl) and torch N threads each; without it
NumPy's BLAS keeps its configured count (``OPENBLAS_NUM_THREADS``...) and torch uses every core.

torch's VOLO is timm's ``timm.models.volo.VOLO``. timm imports torchvision at import time, for names the
VOLO model never uses (transforms, datasets, ``FrozenBatchNorm2d``); when torchvision is not installed,
``_import_timm`` puts placeholder modules for it into ``sys.modules`` first (any use of a placeholder
raises). Without torch the torch columns are '-' (without timm, those of the VOLO rows).

A benchmark is a function ``make(quick, device) -> (ours, theirs)`` registered under a name; ``ours`` and
``theirs`` take no arguments and return what they computed (loss, outputs, gradients: the tests compare
them), ``theirs`` is None without torch. ``quick=True`` builds a small variant of the same computation
(the tests and ``--quick``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import weakref
from typing import Callable, Iterable

import numpy as np

from . import backend
from . import functional as F
from .tensor import Tensor


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A registered benchmark; ``doc`` (the first line of ``make``'s docstring) describes its row."""
    name: str
    make: Callable  # make(quick: bool, device: str) -> (ours, theirs)
    kind: str  # "time": ms per call; "memory": peak resident MiB of a fresh process
    devices: tuple

    @property
    def doc(self) -> str:
        return (self.make.__doc__ or "").strip().split("\n")[0]


BENCHMARKS: dict[str, Benchmark] = {}


def register(name: str, kind: str = "time", devices: tuple = ("cpu",)):
    """Decorator: add ``make(quick, device) -> (ours, theirs)`` as the benchmark ``name``."""
    def add(make):
        BENCHMARKS[name] = Benchmark(name, make, kind, devices)
        return make
    return add


# --- torch and timm ---------------------------------------------------------------------------------
def _torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_device(device: str):
    """The torch device that mirrors minivolo's ``device``; None when torch cannot run there."""
    torch = _torch()
    if torch is None or (device == "cuda" and not torch.cuda.is_available()):
        return None
    return torch.device(device)


class _InterpolationMode(enum.Enum):
    """torchvision's enum (timm builds tables keyed by its members at import)."""
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _placeholder_module(name: str) -> types.ModuleType:
    """A package whose every public attribute is a class that raises when used."""
    def getattr_(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr == "InterpolationMode":
            return _InterpolationMode

        def init(self, *args, **kwargs):
            raise RuntimeError(f"{name}.{attr} is minivolo.bench's placeholder (torchvision is not installed)")
        return type(attr, (), {"__init__": init})

    mod = types.ModuleType(name)
    mod.__getattr__ = getattr_
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []
    return mod


def _import_timm():
    """timm, or the reason it cannot be imported (a str). Without torchvision, placeholders stand in for
    the torchvision modules timm imports (``torchvision.ops.misc``, ``.transforms``, ``.datasets``)."""
    if _torch() is None:
        return "torch is not installed"
    if importlib.util.find_spec("timm") is None:
        return "timm is not installed"
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                     "torchvision.transforms.functional", "torchvision.datasets"):
            sys.modules[name] = module = _placeholder_module(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
    try:
        import timm.models.volo
    except Exception as e:  # a timm that needs more than the placeholders give
        return f"timm does not import: {type(e).__name__}: {e}"
    return timm


# --- the environment ----------------------------------------------------------------------------------
def _blas_info() -> list | str:
    """The BLAS libraries loaded in this process (threadpoolctl), or why they cannot be listed."""
    try:
        import threadpoolctl
    except ImportError:
        config = getattr(np, "show_config", None)
        try:
            name = config(mode="dicts")["Build Dependencies"]["blas"]["name"]
        except Exception:
            name = "unknown"
        return f"threadpoolctl is not installed (pip install threadpoolctl): NumPy was built with {name}"
    return [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]


def environment(device: str = "cpu") -> dict:
    """What the figures depend on: cores, NumPy and its BLAS, torch and its threads, OpenBLAS variables."""
    torch, timm = _torch(), _import_timm()
    env = {
        "device": device,
        "cpu_cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": _blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "timm": timm.__version__ if not isinstance(timm, str) else None,
        "timm_missing": timm if isinstance(timm, str) else None,
    }
    if device == "cuda":
        env["gpu"] = backend.device_name()
        env["torch_cuda"] = bool(torch and torch.cuda.is_available())
    return env


def _header_lines(env: dict) -> list[str]:
    blas = env["blas"]
    if isinstance(blas, str):
        blas_text = blas
    else:
        blas_text = "; ".join(f"{b['internal_api']} {b['version']}, kernel {b['architecture']}, "
                              f"{b['num_threads']} threads ({os.path.basename(b['filepath'] or '')})"
                              for b in blas) or "no BLAS library found by threadpoolctl"
    set_or_not = {k: f"{k} is set to {env[k]}" if env[k] else f"{k} is not set"
                  for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    reference = f"timm {env['timm']}" if env["timm"] else f"no VOLO reference: {env['timm_missing']}"
    torch = f"torch {env['torch']} on {env['torch_threads']} threads; {reference}" if env["torch"] \
        else "torch is not installed: torch columns are '-'"
    lines = [f"# {env['cpu_cores']} CPU cores; NumPy {env['numpy']}; BLAS: {blas_text}",
             f"# {'; '.join(set_or_not.values())}", f"# {torch}"]
    if env["device"] == "cuda":
        lines.append(f"# device cuda: {env['gpu']}; torch on CUDA: {env['torch_cuda']}")
    return lines


@contextlib.contextmanager
def _threads(n: int | None, use_torch: bool = True):
    """NumPy's BLAS, minivolo's chunked elementwise ops and torch on ``n`` threads (torch on every core
    when None), restored afterwards."""
    from .functional import nn as ops
    torch = _torch() if use_torch else None
    before = torch.get_num_threads() if torch else None
    elementwise_threads = ops.ELEMENTWISE_THREADS
    if torch:
        torch.set_num_threads(n or os.cpu_count() or 1)
    if n is not None:
        ops.ELEMENTWISE_THREADS = min(n, elementwise_threads)
    limits = contextlib.nullcontext()
    if n is not None:
        try:
            import threadpoolctl
            limits = threadpoolctl.threadpool_limits(n, user_api="blas")
        except ImportError:
            print("# --threads: threadpoolctl is not installed, NumPy's BLAS threads unchanged", file=sys.stderr)
    try:
        with limits:
            yield
    finally:
        ops.ELEMENTWISE_THREADS = elementwise_threads
        if torch:
            torch.set_num_threads(before)


# --- timing -------------------------------------------------------------------------------------------
def _median_ms(fns: list, syncs: list, repeat: int) -> list[float]:
    """Median wall time of each callable in ms, after one warm-up call each (first-touch page faults,
    lazy imports, allocator pools). The callables take turns, so a busy machine slows them alike; each
    call is followed by its device's synchronisation (a no-op on the CPU)."""
    for fn, sync in zip(fns, syncs):
        fn()
        sync()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, sync, t in zip(fns, syncs, times):
            start = time.perf_counter()
            fn()
            sync()
            t.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def _peak_device_mib(ours, theirs) -> dict:
    """Peak device memory of one call each, in MiB: minivolo's CuPy memory pool after emptying its cache
    (the pool keeps what it took, so its size after the call is its high-water mark, rounding included),
    torch's ``max_memory_allocated`` and, the pool's counterpart, ``max_memory_reserved``."""
    backend.device_memory_pool_bytes(free_cached=True)
    ours()
    backend.synchronize("cuda")
    peaks = {"minivolo_peak_mib": backend.device_memory_pool_bytes() / 2 ** 20, "torch_peak_mib": None,
             "torch_peak_reserved_mib": None}
    if theirs is not None:
        torch = _torch()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        theirs()
        torch.cuda.synchronize()
        peaks.update(torch_peak_mib=torch.cuda.max_memory_allocated() / 2 ** 20,
                     torch_peak_reserved_mib=torch.cuda.max_memory_reserved() / 2 ** 20)
    return peaks


def resolve(names: Iterable[str] | None, device: str = "cpu") -> list[Benchmark]:
    """The benchmarks ``names`` (all that run on ``device`` when None); a clear error for unknown ones."""
    if not names:
        return [b for b in BENCHMARKS.values() if device in b.devices]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(map(repr, unknown))}; known: {', '.join(BENCHMARKS)}")
    wrong = [n for n in names if device not in BENCHMARKS[n].devices]
    if wrong:
        runs_there = [b.name for b in BENCHMARKS.values() if device in b.devices]
        raise ValueError(f"benchmark(s) {', '.join(map(repr, wrong))} do not run on device {device!r}; "
                         f"those that do: {', '.join(runs_there)}")
    return [BENCHMARKS[n] for n in names]


def run(names: Iterable[str] | None = None, repeat: int = 5, device: str = "cpu", threads: int | None = None,
        quick: bool = False, json_path: str | None = None) -> dict:
    """Run the benchmarks ``names`` (all for ``device`` when None); print the header and a table, write
    ``{"header": ..., "rows": [...]}`` to ``json_path`` ("-": stdout, the table then goes to stderr) and
    return it. A row: name, unit ("ms" or "MiB"), minivolo, torch, ratio = minivolo / torch (torch and
    ratio None without torch), the threads, and on "cuda" the peak device memory of each."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    benchmarks = resolve(names, device)
    out = sys.stderr if json_path == "-" else sys.stdout
    if json_path not in (None, "-"):  # a bad path fails now, not after the benchmarks
        folder = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"--json: cannot write {json_path!r}: {folder!r} is not a writable folder")
    result = _run_all(benchmarks, repeat, device, threads, quick, out)
    if json_path not in (None, "-"):
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    if json_path == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    return result


def _run_all(benchmarks: list, repeat: int, device: str, threads: int | None, quick: bool, out) -> dict:
    rows = []
    with _threads(threads):
        header = environment(device)
        header.update(repeat=repeat, quick=quick, threads=threads)
        print("\n".join(_header_lines(header)), file=out)
        memory_cols = f"{'minivolo MiB':>14}{'torch MiB':>11}" if device == "cuda" else ""
        print(f"{'benchmark':<20}{'minivolo':>12}{'torch':>12}{'ratio':>8}  unit{memory_cols}", file=out)
        for bench in benchmarks:
            row = _run_one(bench, repeat, device, threads, quick)
            gc.collect()  # the benchmark's models and graphs (reference cycles) go before the next one
            rows.append(row)
            mine, ref, ratio = row["minivolo"], row["torch"], row["ratio"]
            line = (f"{bench.name:<20}{mine:>12.1f}" + (f"{ref:>12.1f}{ratio:>7.2f}x" if ref is not None
                                                        else f"{'-':>12}{'-':>8}") + f"  {row['unit']:<4}")
            if device == "cuda" and "minivolo_peak_mib" in row:
                peak_ref = row["torch_peak_mib"]
                line += f"{row['minivolo_peak_mib']:>14.0f}" + (f"{peak_ref:>11.0f}" if peak_ref else f"{'-':>11}")
            print(line, file=out, flush=True)
    return {"header": header, "rows": rows}


def _run_one(bench: Benchmark, repeat: int, device: str, threads: int | None, quick: bool) -> dict:
    torch = _torch()
    blas = _blas_info()
    row = {"name": bench.name, "description": bench.doc,
           "numpy_blas_threads": max((b["num_threads"] for b in blas), default=None) if isinstance(blas, list)
           else None, "torch_threads": torch.get_num_threads() if torch else None}
    if bench.kind == "memory":
        ours, theirs = bench.make(quick, device, threads=threads)
        a = ours()
        b = theirs() if theirs is not None else None
        mine, ref = a["peak_mib"], (b["peak_mib"] if b else None)
        row.update(unit="MiB", minivolo_sys_s=a["sys_s"], torch_sys_s=b["sys_s"] if b else None)
    else:
        ours, theirs = bench.make(quick, device)
        fns = [ours] + ([theirs] if theirs is not None else [])
        syncs = [lambda: backend.synchronize(device)]
        if theirs is not None:
            syncs.append(torch.cuda.synchronize if device == "cuda" else (lambda: None))
        mine, ref = (_median_ms(fns, syncs, repeat) + [None])[:2]
        row.update(unit="ms")
        if device == "cuda":
            row.update(_peak_device_mib(ours, theirs))
    row.update(minivolo=mine, torch=ref, ratio=mine / ref if ref else None)
    return row


# --- inputs and model pairs ---------------------------------------------------------------------------
def _inputs(*shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def _op_pair(shapes: list, ours_fn: Callable, theirs_fn: Callable | None, device: str):
    """forward + backward of an op on fresh leaf tensors of ``shapes`` (the first is the input), with a
    fixed output gradient; each callable returns (output, gradient of every input). ``theirs`` is None
    when ``theirs_fn`` is or torch cannot run on ``device``."""
    from .tensor import no_grad
    arrays = _inputs(*shapes)
    with no_grad():
        out_shape = ours_fn(*[Tensor(a, device=device) for a in arrays]).shape
    g = _inputs(out_shape, seed=1)[0]
    gd = Tensor(g, device=device)

    def ours():
        ts = [Tensor(a, requires_grad=True, device=device) for a in arrays]
        out = ours_fn(*ts)
        out.backward(gd)
        return (out,) + tuple(t.grad for t in ts)

    dev = _torch_device(device)
    if dev is None or theirs_fn is None:
        return ours, None
    torch = _torch()
    t_arrays, tg = [torch.from_numpy(a).to(dev) for a in arrays], torch.from_numpy(g).to(dev)

    def theirs():
        ts = [a.clone().requires_grad_() for a in t_arrays]
        out = theirs_fn(*ts)
        out.backward(tg)
        return (out,) + tuple(t.grad for t in ts)
    return ours, theirs


def _copy_weights(ours, theirs) -> None:
    """Load minivolo module ``ours``'s state_dict into the torch module ``theirs`` (same names)."""
    torch = _torch()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})


# The configurations (timm's VOLO arguments). D1 as in the paper; the tiny ones as minivolo's volo_tiny.
D1 = dict(layers=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12))
D1_QUICK = dict(D1, layers=(1, 1, 1, 1), img_size=64)
TINY = dict(layers=(1, 1, 1, 1), embed_dims=(64, 128, 128, 128), num_heads=(2, 4, 4, 4), patch_size=4,
            stem_hidden_dim=32, img_size=32, num_classes=10)


def _step_pair(config: dict, batch: int, device: str):
    """One training step's forward + backward (train mode, cross-entropy), minivolo's VOLO(**config)
    against timm's with the same weights; each callable returns (loss, gradient of the stem's first conv)."""
    from . import manual_seed
    from .models import VOLO
    manual_seed(0)
    model = VOLO(**config).train()
    size, chans = config.get("img_size", 224), config.get("in_chans", 3)
    classes = config.get("num_classes", 1000)
    x = _inputs((batch, chans, size, size))[0]
    y = np.arange(batch) % classes
    probe = "patch_embed.conv.0.weight"
    params = dict(model.named_parameters())
    model.to(device)
    xd, yd = Tensor(x, device=device), Tensor(y, device=device)

    def ours():
        model.zero_grad()
        loss = F.cross_entropy(model(xd), yd)
        loss.backward()
        return loss, params[probe].grad

    timm, dev = _import_timm(), _torch_device(device)
    if isinstance(timm, str) or dev is None:
        return ours, None
    torch = _torch()
    reference = timm.models.volo.VOLO(**config).train()
    _copy_weights(model, reference)
    reference.to(dev)
    tx, ty = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

    def theirs():
        reference.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(tx), ty)
        loss.backward()
        return loss, reference.get_parameter(probe).grad
    return ours, theirs


# --- training steps -----------------------------------------------------------------------------------
@register("volo_d1_step", devices=("cpu", "cuda"))
def _volo_d1_step(quick: bool = False, device: str = "cpu"):
    """VOLO-D1 training step (layers 4,4,8,2; dims 192/384), batch 8 (32 on cuda), 3x224x224."""
    if quick:
        return _step_pair(D1_QUICK, 2, device)
    return _step_pair(D1, 32 if device == "cuda" else 8, device)


@register("volo_tiny3_step")
def _volo_tiny3_step(quick: bool = False, device: str = "cpu"):
    """tiny training step (layers 1,1,1,1; dims 64/128; stem 64; patch 4), batch 64, 3x32x32."""
    return _step_pair(dict(TINY, stem_hidden_dim=64, in_chans=3), 4 if quick else 64, device)


@register("volo_tiny_step", devices=("cpu", "cuda"))
def _volo_tiny_step(quick: bool = False, device: str = "cpu"):
    """volo_tiny training step (stem 32), batch 64, 1x32x32, 10 classes."""
    return _step_pair(dict(TINY, in_chans=1), 4 if quick else 64, device)


# --- ops at VOLO-D1 shapes (float32, forward + backward) ----------------------------------------------
def _nn():
    return _torch().nn.functional


@register("gelu")
def _gelu(quick: bool = False, device: str = "cpu"):
    """GELU of the D1 stage-1 MLP hidden activation (8, 28, 28, 576)."""
    shape = (2, 4, 4, 576) if quick else (8, 28, 28, 576)
    return _op_pair([shape], F.gelu, lambda x: _nn().gelu(x), device)


@register("layer_norm")
def _layer_norm(quick: bool = False, device: str = "cpu"):
    """layer norm over C of (8, 28, 28, 192), with weight and bias."""
    shape = (2, 4, 4, 192) if quick else (8, 28, 28, 192)
    return _op_pair([shape, (192,), (192,)], lambda x, w, b: F.layer_norm(x, (192,), w, b),
                    lambda x, w, b: _nn().layer_norm(x, (192,), w, b), device)


@register("softmax")
def _softmax(quick: bool = False, device: str = "cpu"):
    """softmax of the D1 stage-1 outlook attention weights (8, 6, 196, 9, 9) over the last axis."""
    shape = (2, 6, 4, 9, 9) if quick else (8, 6, 196, 9, 9)
    return _op_pair([shape], lambda x: F.softmax(x, -1), lambda x: _nn().softmax(x, -1), device)


@register("attention")
def _attention(quick: bool = False, device: str = "cpu"):
    """scaled_dot_product_attention at D1 stage-2 shapes: q, k, v (8, 12, 196, 32)."""
    shape = (2, 3, 7, 8) if quick else (8, 12, 196, 32)
    return _op_pair([shape] * 3, F.scaled_dot_product_attention,
                    lambda q, k, v: _nn().scaled_dot_product_attention(q, k, v), device)


@register("linear")
def _linear(quick: bool = False, device: str = "cpu"):
    """linear (8*28*28, 192) -> 576 with bias (D1 stage-1 MLP fc1)."""
    rows = 32 if quick else 8 * 28 * 28
    return _op_pair([(rows, 192), (576, 192), (576,)], F.linear, lambda x, w, b: _nn().linear(x, w, b), device)


@register("stem_conv7x7")
def _stem_conv7x7(quick: bool = False, device: str = "cpu"):
    """the stem's first conv: 7x7 stride 2 padding 3, 3 -> 64, (8, 3, 224, 224) -> (8, 64, 112, 112)."""
    shape = (2, 3, 16, 16) if quick else (8, 3, 224, 224)
    return _op_pair([shape, (64, 3, 7, 7)], lambda x, w: F.conv2d(x, w, stride=2, padding=3),
                    lambda x, w: _nn().conv2d(x, w, stride=2, padding=3), device)


@register("stem_conv3x3")
def _stem_conv3x3(quick: bool = False, device: str = "cpu"):
    """the stem's 3x3 conv: padding 1, 64 -> 64, (8, 64, 112, 112)."""
    shape = (2, 64, 8, 8) if quick else (8, 64, 112, 112)
    return _op_pair([shape, (64, 64, 3, 3)], lambda x, w: F.conv2d(x, w, padding=1),
                    lambda x, w: _nn().conv2d(x, w, padding=1), device)


@register("outlook_attention")
def _outlook_attention(quick: bool = False, device: str = "cpu"):
    """D1 stage-1 outlook attention module: (8, 28, 28, 192), 6 heads, kernel 3, stride 2."""
    from . import manual_seed
    from .models import OutlookAttention
    manual_seed(0)
    module = OutlookAttention(192, 6, kernel_size=3, padding=1, stride=2)
    shape = (2, 6, 6, 192) if quick else (8, 28, 28, 192)
    timm, dev = _import_timm(), _torch_device(device)
    reference = None
    if not isinstance(timm, str) and dev is not None:
        reference = timm.models.volo.OutlookAttention(192, 6, kernel_size=3, padding=1, stride=2)
        _copy_weights(module, reference)
        reference.to(dev)
    return _op_pair([shape], module.to(device), reference, device)


@register("unfold_fold")
def _unfold_fold(quick: bool = False, device: str = "cpu"):
    """fold(unfold(x)), x (64, 192, 28, 28), kernel 3, padding 1."""
    shape = (2, 8, 6, 6) if quick else (64, 192, 28, 28)
    size = shape[2:]
    return _op_pair([shape], lambda x: F.fold(F.unfold(x, 3, padding=1), size, 3, padding=1),
                    lambda x: _nn().fold(_nn().unfold(x, 3, padding=1), size, 3, padding=1), device)


@register("conv2d")
def _conv2d(quick: bool = False, device: str = "cpu"):
    """conv2d 3x3 padding 1, 64 -> 64 with bias, x (64, 64, 16, 16)."""
    shape = (2, 64, 5, 5) if quick else (64, 64, 16, 16)
    return _op_pair([shape, (64, 64, 3, 3), (64,)], lambda x, w, b: F.conv2d(x, w, b, padding=1),
                    lambda x, w, b: _nn().conv2d(x, w, b, padding=1), device)


# --- peak memory of a D1 training step ----------------------------------------------------------------
@register("volo_d1_memory", kind="memory")
def _volo_d1_memory(quick: bool = False, device: str = "cpu", threads: int | None = None):
    """peak resident memory of two D1 training steps (batch 8, 3x224x224) in a fresh process."""
    from . import manual_seed
    from .models import VOLO
    config, batch = (D1_QUICK, 2) if quick else (D1, 8)
    manual_seed(0)
    weights = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    with weights:
        np.savez(weights, **VOLO(**config).state_dict())
    job = dict(config=config, batch=batch, weights=weights.name, threads=threads)

    def child(library: str):
        def call() -> dict:
            env = dict(os.environ)
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            env["MINIVOLO_DEVICE"] = "cpu"
            code = "import sys, minivolo.bench as b; b._memory_child(sys.argv[1], sys.argv[2])"
            done = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "-c", code, library,
                                   json.dumps(job)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the {library} memory process failed:\n{done.stderr[-2000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])
        return call

    ours = child("minivolo")
    weakref.finalize(ours, os.remove, weights.name)  # the weights go when the benchmark is done
    timm = _import_timm()
    return ours, (None if isinstance(timm, str) else child("torch"))


# Linux counts a forked process's starting memory (its parent's, at the fork) in ru_maxrss, and keeps it
# across exec; so the measured process is started by a small launcher process, not by this large one.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _memory_child(library: str, job: str) -> None:
    """In a fresh process: two training steps of ``library``'s VOLO; prints the losses, the peak resident
    memory (ru_maxrss, KiB on Linux, bytes on macOS) and the system time as one JSON line."""
    import resource
    job = json.loads(job)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()}
    batch, size = job["batch"], config.get("img_size", 224)
    with _threads(job["threads"], use_torch=library == "torch"):
        with np.load(job["weights"]) as z:
            state = dict(z)
        x = _inputs((batch, 3, size, size))[0]
        y = np.arange(batch) % config.get("num_classes", 1000)
        losses = []
        if library == "minivolo":
            from .models import VOLO
            model = VOLO(**config).train()
            model.load_state_dict(state)
            del state
            for _ in range(2):
                model.zero_grad()
                loss = F.cross_entropy(model(Tensor(x)), Tensor(y))
                loss.backward()
                losses.append(float(loss.item()))
        else:
            torch, timm = _torch(), _import_timm()
            model = timm.models.volo.VOLO(**config).train()
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            del state
            for _ in range(2):
                model.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
                loss.backward()
                losses.append(float(loss.item()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps({"peak_mib": peak / 2 ** 20, "sys_s": usage.ru_stime, "losses": losses}))
