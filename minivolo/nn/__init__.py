"""Layers and containers, named and behaving as in ``torch.nn``."""
from .module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential
from . import init
from .layers import (AvgPool2d, BatchNorm2d, Conv2d, DropPath, Dropout, GELU, Identity, LayerNorm, Linear,
                     ReLU, Softmax)
from .sync_batchnorm import SyncBatchNorm
