"""Layers and containers, named and behaving as in ``torch.nn``."""
from .module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential
