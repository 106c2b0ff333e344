"""Parameter initialisation, as ``torch.nn.init`` (and timm's ``trunc_normal_``).

Every function fills ``tensor`` in place: it draws in float64 from the CPU generator
(``backend.generator("cpu")``, so ``minivolo.manual_seed`` fixes every initial weight whatever the
device), then replaces ``tensor.data`` with an array of the tensor's own dtype on its own device.
"""
from __future__ import annotations

import math

import numpy as np

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


# Giles, "Approximating the erfinv function" (GPU Computing Gems, 2011), double precision:
# erfinv(y) = y * P(t) with w = -log((1 - y)(1 + y)) and t = w - 3.125 (w < 6.25),
# sqrt(w) - 3.25 (w < 16) or sqrt(w) - 5 (beyond). Coefficients from the highest power down.
_ERFINV_PIECES = (
    (6.25, lambda w: w - 3.125, (
        -3.6444120640178196996e-21, -1.685059138182016589e-19, 1.2858480715256400167e-18,
        1.115787767802518096e-17, -1.333171662854620906e-16, 2.0972767875968561637e-17,
        6.6376381343583238325e-15, -4.0545662729752068639e-14, -8.1519341976054721522e-14,
        2.6335093153082322977e-12, -1.2975133253453532498e-11, -5.4154120542946279317e-11,
        1.051212273321532285e-09, -4.1126339803469836976e-09, -2.9070369957882005086e-08,
        4.2347877827932403518e-07, -1.3654692000834678645e-06, -1.3882523362786468719e-05,
        0.0001867342080340571352, -0.00074070253416626697512, -0.0060336708714301490533,
        0.24015818242558961693, 1.6536545626831027356)),
    (16.0, lambda w: np.sqrt(w) - 3.25, (
        2.2137376921775787049e-09, 9.0756561938885390979e-08, -2.7517406297064545428e-07,
        1.8239629214389227755e-08, 1.5027403968909827627e-06, -4.013867526981545969e-06,
        2.9234449089955446044e-06, 1.2475304481671778723e-05, -4.7318229009055733981e-05,
        6.8284851459573175448e-05, 2.4031110387097893999e-05, -0.0003550375203628474796,
        0.00095328937973738049703, -0.0016882755560235047313, 0.0024914420961078508066,
        -0.0037512085075692412107, 0.005370914553590063617, 1.0052589676941592334,
        3.0838856104922207635)),
    (np.inf, lambda w: np.sqrt(w) - 5.0, (
        -2.7109920616438573243e-11, -2.5556418169965252055e-10, 1.5076572693500548083e-09,
        -3.7894654401267369937e-09, 7.6157012080783393804e-09, -1.4960026627149240478e-08,
        2.9147953450901080826e-08, -6.7711997758452339498e-08, 2.2900482228026654717e-07,
        -9.9298272942317002539e-07, 4.5260625972231537039e-06, -1.9681778105531670567e-05,
        7.5995277030017761139e-05, -0.00021503011930044477347, -0.00013871931833623122026,
        1.0103004648645343977, 4.8499064014085844221)),
)


def _erfinv(y: np.ndarray) -> np.ndarray:
    """Inverse error function of a float64 host array in [-1, 1] (+-1 give +-inf)."""
    with np.errstate(divide="ignore"):
        w = -np.log((1 - y) * (1 + y))
    x = np.copysign(np.inf, y)  # right at +-1, where w is inf; every other element is overwritten
    low = -np.inf
    for high, t, coeffs in _ERFINV_PIECES:
        m = (w >= low) & (w < high)
        x[m] = y[m] * np.polyval(coeffs, t(w[m]))
        low = high
    return x


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
    return _fill(tensor, np.clip(mean + std * math.sqrt(2) * _erfinv(u), a, b))


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
