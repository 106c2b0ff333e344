"""minivolo: VOLO (Vision Outlooker) from scratch on NumPy, with the same code on CuPy for GPUs."""
import os as _os

# OpenBLAS's idle threads spin for 2^28 cycles (about 0.1 s) after every matrix product before they sleep,
# holding the cores that the next elementwise or per-block work (run on two threads of minivolo's own)
# needs: with 2^20 cycles (~0.4 ms) VOLO-D1's training step on 2 cores takes 2.7 s instead of 3.4 s.
# OpenBLAS reads the variable once, when NumPy loads it: this takes effect where minivolo is imported
# before NumPy (``python -m minivolo``, scripts that import minivolo first), and never overrides a value set.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
from .backend import (cuda_available, default_device, get_array_module, manual_seed, to_numpy)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, is_grad_enabled, no_grad
from .tensor_functions import abs, cat, concatenate, exp, log, maximum, sqrt, stack, tanh, tensor, where

from . import functional, nn  # noqa: E402  (after Tensor: they build on it)

__version__ = "0.1.0"
