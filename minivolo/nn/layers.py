"""The standard layers, with PyTorch's parameter names, shapes, default initialisation and repr.

New parameters are float32 on ``backend.default_device()``; their initial values come from the CPU
generator (``minivolo.manual_seed``), so a seed gives the same model on every device.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from ..functional.conv import _pair
from ..tensor import Tensor
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "Conv2d", "BatchNorm2d", "LayerNorm", "GELU", "ReLU", "Dropout", "DropPath",
           "Identity", "AvgPool2d", "Softmax"]


def _parameter(*shape: int) -> Parameter:
    """An uninitialised float32 parameter on the default device (the caller fills it)."""
    return Parameter(backend.array_module(backend.default_device()).empty(shape, dtype=np.float32))


def _buffer(value, dtype) -> Tensor:
    return Tensor(backend.to_device(np.asarray(value, dtype=dtype), backend.default_device()))


def _reset_linear(weight: Parameter, bias: Parameter | None) -> None:
    """PyTorch's default for Linear and Conv: W ~ kaiming_uniform_(a=sqrt 5), i.e. U(+-1/sqrt(fan_in)),
    and b ~ U(+-1/sqrt(fan_in))."""
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(bias, -bound, bound)


class Identity(Module):
    """Returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Linear(Module):
    """``y = x W^T + b``.  x (*, in_features) -> (*, out_features); weight (out, in), bias (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _parameter(out_features, in_features)
        self.bias = _parameter(out_features) if bias else None
        _reset_linear(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution.  x (N, C_in, H, W) -> (N, C_out, H', W').

    weight (C_out, C_in / groups, kH, kW), bias (C_out,);
    H' = floor((H + 2 padding - dilation (kH - 1) - 1) / stride) + 1, likewise W'.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.weight = _parameter(out_channels, in_channels // groups, *self.kernel_size)
        self.bias = _parameter(out_channels) if bias else None
        _reset_linear(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) for each channel.  x (N, C, H, W) -> (N, C, H, W).

    weight (C,) = 1, bias (C,) = 0 (when affine; bias=False drops the bias); buffers running_mean (C,) = 0,
    running_var (C,) = 1 and
    num_batches_tracked (int64, shape ()). momentum=None makes the running statistics a cumulative
    average (factor 1 / num_batches_tracked), as PyTorch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = init.ones_(_parameter(num_features)) if affine else None
        self.bias = init.zeros_(_parameter(num_features)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", _buffer(np.zeros(num_features), np.float32))
            self.register_buffer("running_var", _buffer(np.ones(num_features), np.float32))
            self.register_buffer("num_batches_tracked", _buffer(0, np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected input (N, C, H, W), got shape {x.shape}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        # eval mode without running statistics normalises with the batch's own
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch,
                            factor, self.eps)

    def _state_defaults(self, state_dict: dict, prefix: str) -> None:
        """Checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: keep our count, as torch."""
        if self.num_batches_tracked is not None:
            state_dict.setdefault(prefix + "num_batches_tracked", self.num_batches_tracked.data)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` dims; weight = 1, bias = 0 of that shape."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = init.ones_(_parameter(*shape)) if elementwise_affine else None
        self.bias = init.zeros_(_parameter(*shape)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class GELU(Module):
    """``x Phi(x)`` (approximate='none') or its tanh approximation (approximate='tanh')."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """``max(x, 0)``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Dropout(Module):
    """Zero elements with probability p while training (the rest scaled by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=False"


class DropPath(Module):
    """Stochastic depth (timm): drop whole samples of a residual branch with probability drop_prob."""

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        if not 0 <= drop_prob <= 1:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return F.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class AvgPool2d(Module):
    """Average pooling over kernel_size windows.  x (N, C, H, W) -> (N, C, H', W')."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.ceil_mode, self.count_include_pad = padding, ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Softmax(Module):
    """Softmax along ``dim``."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
