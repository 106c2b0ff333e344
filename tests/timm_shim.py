"""Import timm (the reference implementation) in a test environment that has torch but not torchvision.

timm is installed with ``--no-deps``; at import time it only needs a few names from torchvision:
``torchvision.ops.misc.FrozenBatchNorm2d`` (used in isinstance checks and by BN freezing, never by VOLO),
``torchvision.transforms`` (``ToTensor``, subclassed at import), ``InterpolationMode`` and six dataset
class names in ``torchvision.datasets`` (the data pipeline, never used by these tests).
``import_timm()`` puts minimal stand-ins for exactly those into ``sys.modules`` when torchvision is
absent, then imports timm; the test is skipped when torch or timm is missing.
"""
from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import sys
import types

import pytest


class InterpolationMode(enum.Enum):
    """torchvision's enum, with torchvision's string values (timm maps names to it)."""
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _install_fake_torchvision() -> None:
    torch = pytest.importorskip("torch")

    class FrozenBatchNorm2d(torch.nn.Module):
        """Placeholder: timm only checks isinstance against it at import and in BN-freezing helpers."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError("FrozenBatchNorm2d is a test placeholder (torchvision is not installed)")

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        mod.__path__ = []  # a package, so that "import torchvision.x" looks in sys.modules
        sys.modules[name] = mod
        return mod

    def placeholder(name: str) -> type:
        def init(self, *args, **kwargs):
            raise RuntimeError(f"torchvision's {name} is a test placeholder (torchvision is not installed)")
        return type(name, (), {"__init__": init})

    datasets = module("torchvision.datasets", **{n: placeholder(n) for n in
                                                 ("CIFAR100", "CIFAR10", "MNIST", "KMNIST", "FashionMNIST",
                                                  "ImageFolder")})

    functional = module("torchvision.transforms.functional", InterpolationMode=InterpolationMode)
    transforms = module("torchvision.transforms", functional=functional, InterpolationMode=InterpolationMode,
                        ToTensor=placeholder("ToTensor"))
    misc = module("torchvision.ops.misc", FrozenBatchNorm2d=FrozenBatchNorm2d)
    ops = module("torchvision.ops", misc=misc)
    module("torchvision", ops=ops, transforms=transforms, datasets=datasets, __version__="0.0.0+minivolo-shim")


def import_timm():
    """timm, importable with or without torchvision (skips the test when torch or timm is absent)."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _install_fake_torchvision()
    import timm
    return timm
