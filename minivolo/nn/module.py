"""Module, Parameter and the containers: the bookkeeping that turns ops into models.

A Module owns Parameters (trainable tensors), buffers (state such as BatchNorm's running statistics)
and child Modules, registered by plain attribute assignment as in PyTorch. ``state_dict()`` gives every
parameter and buffer as a host NumPy array under its dotted name (``network.0.0.attn.v.weight``), which
is exactly the naming timm uses, so checkpoints move between the two.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (``requires_grad=True``)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model: override ``forward``; call the module to run it."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        if name in self._buffers and (value is None or type(value) is Tensor):
            self._buffers[name] = value  # reassigning a buffer keeps it a buffer, as in PyTorch
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table, {})
            if name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value) -> None:
        """Non-trainable state saved in the state_dict (None registers nothing but the name)."""
        self._buffers[name] = None if value is None else (value if isinstance(value, Tensor) else Tensor(value))

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- traversal -----------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple]:
        """(dotted name, module) for this module and every descendant, depth first; a module reachable
        by several paths comes once unless ``remove_duplicate=False`` (as torch)."""
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, module = stack.pop()
            if remove_duplicate and id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            stack.extend(reversed([(f"{name}.{k}" if name else k, m)
                                   for k, m in module._modules.items() if m is not None]))

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple]:
        return ((k, m) for k, m in self._modules.items() if m is not None)

    def children(self) -> Iterator["Module"]:
        return (m for _, m in self.named_children())

    def _named(self, table: str, prefix: str = "", recurse: bool = True) -> Iterator[tuple]:
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        seen = set()
        for mname, module in modules:
            for k, v in getattr(module, table).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mname}.{k}" if mname else k), v

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple]:
        return self._named("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple]:
        return self._named("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        return (b for _, b in self.named_buffers(recurse=recurse))

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    def apply(self, fn) -> "Module":
        for m in list(self.modules())[::-1]:
            fn(m)
        return self

    # --- modes, devices, gradients -------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, device: str | None = None, dtype=None) -> "Module":
        """Move every parameter and buffer to ``device`` and/or cast floating ones to ``dtype``, in place."""
        for t in list(self.parameters()) + list(self.buffers()):
            data = t.data if device is None else backend.to_device(t.data, device)
            if dtype is not None and data.dtype.kind == "f":
                data = data.astype(dtype)
            t.data = data
            if t.grad is not None:
                t.grad = None
        return self

    def double(self) -> "Module":
        return self.to(dtype=np.float64)

    def float(self) -> "Module":
        return self.to(dtype=np.float32)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state_dict ----------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter, then every buffer, of each module in order, as host NumPy copies.

        A module used in several places appears under each of its names, as in torch.
        """
        out = OrderedDict()
        for mname, module in self.named_modules(remove_duplicate=False):
            for table in (module._parameters, module._buffers):
                for k, v in table.items():
                    if v is not None:
                        out[f"{mname}.{k}" if mname else k] = np.array(backend.to_numpy(v.data))
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters and buffers of the same names.

        Values may be NumPy/CuPy arrays or anything ``np.asarray`` takes (CPU torch tensors too).
        Shape mismatches are always an error; with ``strict``, missing and unexpected keys are too.
        All problems are reported together in one ``KeyError``/``ValueError`` message.
        """
        state_dict = dict(state_dict)  # the defaults below go into a copy, not the caller's dict
        own = OrderedDict()
        for mname, module in self.named_modules(remove_duplicate=False):
            module._state_defaults(state_dict, f"{mname}." if mname else "")
            for table in (module._parameters, module._buffers):
                for k, v in table.items():
                    if v is not None:
                        own[f"{mname}.{k}" if mname else k] = v
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = []
        arrays = {}
        for k, target in own.items():
            if k not in state_dict:
                continue
            value = state_dict[k]
            value = value.data if isinstance(value, Tensor) else value
            value = value if backend.is_array(value) else np.asarray(value)
            if tuple(value.shape) != tuple(target.shape):
                wrong.append(f"{k}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}")
            else:
                arrays[k] = value
        problems = ([f"wrong shape for {w}" for w in wrong]
                    + ([f"missing key {k!r}" for k in missing] + [f"unexpected key {k!r}" for k in unexpected]
                       if strict else []))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed "
                             f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
        for k, value in arrays.items():
            target = own[k]
            target.data = backend.to_device(value, target.device).astype(target.dtype, copy=True)
        return IncompatibleKeys(missing, unexpected)

    def _state_defaults(self, state_dict: dict, prefix: str) -> None:
        """Add to ``state_dict`` (in place) the entries this module may take from older checkpoints
        that lack them; ``prefix`` is the module's dotted name plus "."."""

    # --- printing ------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after another; children named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        """The i-th module; a slice gives a Sequential of those modules under their names (as torch)."""
        if isinstance(i, slice):
            part = Sequential()
            for name, m in list(self._modules.items())[i]:
                setattr(part, name, m)
            return part
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules, registered under "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        """The i-th module; a slice gives a new ModuleList, renumbered from 0 (as torch)."""
        modules = list(self._modules.values())[i]
        return ModuleList(modules) if isinstance(i, slice) else modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
