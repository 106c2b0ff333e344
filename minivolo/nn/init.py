"""Parameter initialisation, as ``torch.nn.init`` (and timm's ``trunc_normal_``).

Every function fills ``tensor`` in place: it draws in float64 from the CPU generator
(``backend.generator("cpu")``, so ``minivolo.manual_seed`` fixes every initial weight whatever the
device), then replaces ``tensor.data`` with an array of the tensor's own dtype on its own device.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special

from .. import backend
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_",
           "kaiming_uniform_", "xavier_uniform_"]


def _fill(tensor: Tensor, values) -> Tensor:
    """Write ``values`` (host array or scalar) into ``tensor`` with its dtype and device."""
    values = np.broadcast_to(np.asarray(values, dtype=tensor.dtype), tensor.shape)
    tensor.data = backend.to_device(np.array(values), tensor.device)
    return tensor


def uniform_(tensor: Tensor, a: float = 0., b: float = 1.) -> Tensor:
    """Fill with U(a, b)."""
    return _fill(tensor, backend.generator("cpu").uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0., std: float = 1.) -> Tensor:
    """Fill with N(mean, std^2)."""
    return _fill(tensor, backend.generator("cpu").normal(mean, std, tensor.shape))


def trunc_normal_(tensor: Tensor, mean: float = 0., std: float = 1., a: float = -2., b: float = 2.) -> Tensor:
    """Fill with N(mean, std^2) truncated to [a, b] (a, b in absolute units, as PyTorch and timm).

    Inverse-CDF sampling, as PyTorch: u ~ U(2 Phi(alpha) - 1, 2 Phi(beta) - 1) with
    alpha = (a - mean)/std, beta = (b - mean)/std, then x = mean + std sqrt(2) erfinv(u), clipped to [a, b].
    """
    if std <= 0 or a >= b:
        raise ValueError(f"trunc_normal_: need std > 0 and a < b, got std={std}, a={a}, b={b}")

    def norm_cdf(v: float) -> float:
        return (1 + math.erf(v / math.sqrt(2))) / 2
    low, high = norm_cdf((a - mean) / std), norm_cdf((b - mean) / std)
    u = backend.generator("cpu").uniform(2 * low - 1, 2 * high - 1, tensor.shape)
    return _fill(tensor, np.clip(mean + std * math.sqrt(2) * scipy.special.erfinv(u), a, b))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    return _fill(tensor, val)


def zeros_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 0)


def ones_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 1)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (as ``torch.nn.init.calculate_gain``)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope must be a number, got {slope!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple:
    """(fan_in, fan_out) = (shape[1], shape[0]) times the receptive field size prod(shape[2:])."""
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor of at least 2 dims, got shape {tensor.shape}")
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """Fill with U(-bound, bound), bound = gain * sqrt(3 / fan) (He et al., 2015)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_uniform_: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if tensor.size == 0:
        return tensor
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / (fan_in if mode == "fan_in" else fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_uniform_(tensor: Tensor, gain: float = 1.) -> Tensor:
    """Fill with U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)
