"""minivolo: VOLO (Vision Outlooker) from scratch on NumPy, with the same code on CuPy for GPUs."""
from .backend import (cuda_available, default_device, get_array_module, manual_seed, to_numpy)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, is_grad_enabled, no_grad
from .tensor_functions import abs, cat, concatenate, exp, log, maximum, sqrt, stack, tanh, tensor, where

from . import functional, nn  # noqa: E402  (after Tensor: they build on it)

__version__ = "0.1.0"
