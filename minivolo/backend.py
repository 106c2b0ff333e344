"""The one place that knows about NumPy versus CuPy.

Every array operation in minivolo takes its array module from here (``xp``), so the same code runs on
the CPU (NumPy) and on an NVIDIA GPU (CuPy). No other module imports cupy.

    get_array_module(a)   -> numpy or cupy, whichever owns ``a``
    array_module(device)  -> numpy for "cpu", cupy for "cuda"
    to_device(a, device)  -> the array on that device (a copy only when it has to move)
    to_numpy(a)           -> a host NumPy array (copies from the GPU explicitly)
    default_device()      -> $MINIVOLO_DEVICE, "cpu" when unset
    erf(a)                -> the error function, by scipy.special (host) or cupyx.scipy.special (GPU)
    use_cupy(cupy, cupyx) -> point the backend at another CuPy (the tests' strict stand-in, fakecupy)
    @constant             -> a host-built constant (a divisor, indices, a matrix) cached on each device
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Callable

import numpy as np
import scipy.special

try:  # CuPy is optional; a broken install counts as absent.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None
_cupyx = None  # cupyx, imported on first use (it is slow to import)

DEVICES = ("cpu", "cuda")
_cuda_status: tuple[bool, str] | None = None  # (usable, why not), found once per process


def use_cupy(cupy_module, cupyx_module) -> None:
    """Use ``cupy_module``/``cupyx_module`` for device "cuda" from now on: test-only, for the strict
    stand-in (``pytest --fake-gpu`` calls ``use_cupy(fakecupy, fakecupy.cupyx)``)."""
    global _cupy, _cupyx, _cuda_status
    _cupy, _cupyx, _cuda_status = cupy_module, cupyx_module, None
    _generators.pop("cuda", None)


def _find_cuda_status() -> tuple[bool, str]:
    if _cupy is None:
        return False, "CuPy is not installed (pip install 'minivolo[gpu]')"
    try:
        if not _cupy.cuda.is_available():
            return False, "CuPy is installed but sees no CUDA GPU (cupy.cuda.is_available() is False)"
    except Exception as e:  # pragma: no cover - driver problems
        return False, f"CuPy is installed but the CUDA driver does not answer ({type(e).__name__}: {e})"
    try:  # a driver can answer and still be unable to run kernels (wrong CUDA version, no runtime libraries)
        if int((_cupy.arange(3, dtype=np.int32) + 1).sum()) != 6:
            return False, "CuPy sees a GPU but a test kernel computed a wrong result"
    except Exception as e:  # pragma: no cover - depends on the machine
        return False, (f"CuPy sees a GPU but cannot run a kernel on it ({type(e).__name__}: {e}); "
                       "check that the NVIDIA driver supports the CUDA version of the CuPy wheel")
    return True, ""


def cuda_available() -> bool:
    """True when CuPy is installed, sees a GPU and runs a tiny kernel on it (checked once per process)."""
    global _cuda_status
    if _cuda_status is None:
        _cuda_status = _find_cuda_status()
    return _cuda_status[0]


def _check_device(device: str) -> str:
    device = str(device).lower()
    name, _, index = device.partition(":")
    if name not in DEVICES or (index and (name != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be one of {DEVICES} (or 'cuda:N'), got {device!r}")
    if name == "cuda" and not cuda_available():
        raise RuntimeError(f"device {device!r} requested but {_cuda_status[1]}")
    current = _cupy.cuda.Device().id if index else None
    if index and int(index) != current:
        raise ValueError(f"device {device!r}: minivolo runs on one GPU, the current one (cuda:{current}); "
                         f"select GPU {index} with CUDA_VISIBLE_DEVICES={index} or "
                         f"cupy.cuda.Device({index}).use(), then pass device='cuda'")
    return name


def default_device() -> str:
    """The device new tensors live on: $MINIVOLO_DEVICE ("cpu" or "cuda"), "cpu" when unset."""
    return _check_device(os.environ.get("MINIVOLO_DEVICE", "cpu") or "cpu")


def array_module(device: str):
    """numpy for "cpu", cupy for "cuda"."""
    return _cupy if _check_device(device) == "cuda" else np


def get_array_module(a):
    """The module (numpy or cupy) that owns array ``a``; numpy for anything that is not a CuPy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy
    return np


def device_of(a) -> str:
    return "cuda" if get_array_module(a) is not np else "cpu"


def is_array(a) -> bool:
    return isinstance(a, np.ndarray) or (_cupy is not None and isinstance(a, _cupy.ndarray))


def to_device(a, device: str):
    """``a`` as an array on ``device``; no copy when it is already there."""
    device = _check_device(device)
    if device == "cuda":
        return _cupy.asarray(a)
    return to_numpy(a)


def to_numpy(a) -> np.ndarray:
    """A host NumPy array; device arrays are copied explicitly (CuPy forbids the implicit way)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def erf(a):
    """The error function of a float array, in its dtype: ``scipy.special.erf`` for NumPy arrays,
    ``cupyx.scipy.special.erf`` (imported on first use) for CuPy arrays. float32 is computed in float32."""
    if get_array_module(a) is np:
        out = np.asarray(scipy.special.erf(a))  # a 0-d input gives a NumPy scalar: make it an array again
    else:
        global _cupyx
        if _cupyx is None:
            import cupyx.scipy.special  # noqa: F401
            _cupyx = sys.modules["cupyx"]
        out = _cupyx.scipy.special.erf(a)
    return out.astype(a.dtype) if a.dtype.kind == "f" and out.dtype != a.dtype else out  # float16


def constant(make: Callable[..., np.ndarray]) -> Callable:
    """Decorator for ``make(*args) -> host array`` whose arguments are hashable (shapes, modes, dtypes):
    the decorated ``make(*args, device=...)`` returns the array on that device, built and copied once per
    (args, device), then cached, so that a step does not rebuild it on the host and copy it every call.
    The array is shared: never write into it."""
    @functools.lru_cache(maxsize=1024)
    def cached(args, device, module_id):
        out = to_device(make(*args), device)
        if isinstance(out, np.ndarray):
            out.flags.writeable = False  # shared between calls
        return out

    @functools.wraps(make)
    def get(*args, device: str):
        return cached(args, device, id(array_module(device)))
    return get


def manual_seed_device(seed: int) -> None:
    """Seed CuPy's global generator too, when it is present and usable."""
    if cuda_available():
        _cupy.random.seed(seed)


# --- random numbers -------------------------------------------------------------------------------
# One generator per device. Host randomness (shuffling, augmentation, mix-token boxes) uses the NumPy
# generator; dropout and drop-path masks are drawn on the device that holds the activations.
_generators: dict = {}


def manual_seed(seed: int) -> None:
    """Seed every minivolo random generator (parameter init, dropout, data order, augmentation)."""
    _generators.clear()
    _generators["cpu"] = np.random.default_rng(seed)
    if cuda_available():
        _generators["cuda"] = _cupy.random.default_rng(seed)


def generator(device: str = "cpu"):
    """The generator of ``device`` (numpy.random.Generator or cupy.random.Generator)."""
    if device not in _generators:
        _generators[device] = (np.random.default_rng() if device == "cpu"
                               else _cupy.random.default_rng())
    return _generators[device]


# --- timing and memory (minivolo.bench) ---------------------------------------------------------------
def synchronize(device: str = "cuda") -> None:
    """Wait until the work queued on ``device`` has finished (benchmarks only; a no-op on the CPU)."""
    if _check_device(device) == "cuda":
        _cupy.cuda.Device().synchronize()


def device_memory_pool_bytes(free_cached: bool = False) -> int:
    """Bytes held by CuPy's default memory pool; it keeps what it took, so after a step this is the
    step's high-water mark. ``free_cached`` first returns the cached, unused blocks to the device."""
    pool = array_module("cuda").get_default_memory_pool()
    if free_cached:
        pool.free_all_blocks()
    return pool.total_bytes()


def device_name() -> str:
    """The current GPU's name, e.g. "NVIDIA H100 80GB HBM3"."""
    name = array_module("cuda").cuda.runtime.getDeviceProperties(_cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


# --- distributed training (minivolo.distributed): GPUs and NCCL ------------------------------------
def contiguous(a):
    """``a`` in C order (no copy when it already is): what MPI and NCCL buffers need."""
    return get_array_module(a).ascontiguousarray(a)


def nccl_available() -> bool:
    """True when CuPy was built with NCCL (``cupy.cuda.nccl`` imports)."""
    if _cupy is None:
        return False
    try:
        nccl = importlib.import_module(f"{_cupy.__name__}.cuda.nccl")
        return bool(getattr(nccl, "available", True))
    except Exception:  # pragma: no cover - depends on the machine
        return False


def cuda_device_count() -> int:
    return _cupy.cuda.runtime.getDeviceCount() if cuda_available() else 0


def use_cuda_device(index: int) -> None:
    """Make GPU ``index`` the current device of this process (one GPU per rank)."""
    _cupy.cuda.Device(index).use()


def nccl_process_group(world_size: int, rank: int, use_mpi: bool):
    """A ``cupyx.distributed`` NCCL communicator: its all_reduce(in, out, op), broadcast(a, root),
    send_recv(in, out, peer), barrier(). ``use_mpi``: rendezvous through MPI (under mpiexec); else
    through cupyx's TCP store ($CUPYX_DISTRIBUTED_HOST / $CUPYX_DISTRIBUTED_PORT)."""
    import cupyx.distributed
    return cupyx.distributed.init_process_group(world_size, rank, use_mpi=use_mpi)
