"""fakecupy.random: cupy.random's names; the draws come from NumPy's generators, on the "device".

``default_rng(seed)`` returns a Generator with only the methods of cupy.random.Generator (no
``normal``, ``permutation``, ``choice``, ...), each taking only CuPy's keywords. Values differ from real
CuPy's (a different bit generator); distributions and dtypes are the same.
"""
from __future__ import annotations

import sys as _sys

import numpy as _np

from . import _core

_SPEC = _core._SURFACE["modules"]["cupy.random"]
_GENERATOR_SPEC = _core._SURFACE["random.Generator"]
_this = _sys.modules[__name__]


# NumPy Generator methods that draw in the asked dtype themselves (float32 draws differ from float64 ones)
_NUMPY_DTYPE = {"random", "standard_normal", "standard_exponential", "standard_gamma", "integers"}


def _draw(qualname: str, method, spec: dict, args, kwargs):
    """Call a NumPy drawing method under CuPy's keywords; ``out``, and ``dtype`` where NumPy's method
    lacks it, are applied here."""
    _core._check_kwargs(qualname, spec, kwargs)
    out = kwargs.pop("out", None)
    numpy_dtype = isinstance(getattr(method, "__self__", None), _np.random.Generator) and \
        method.__name__ in _NUMPY_DTYPE
    dtype = None if numpy_dtype else kwargs.pop("dtype", None)
    args = [_core._unwrap(a) for a in args]
    kwargs = {k: _core._unwrap(v) for k, v in kwargs.items()}
    r = _np.asarray(method(*args, **kwargs))
    if dtype is not None:
        r = r.astype(dtype, copy=False)
    if out is not None:
        out._a[...] = r
        return out
    return _core.ndarray._wrap(r)


class BitGenerator:
    def __init__(self, seed=None):
        self._seed_seq = _np.random.SeedSequence(seed)

    def _numpy(self):
        return _np.random.PCG64(self._seed_seq)


class XORWOW(BitGenerator):
    pass


class MRG32k3a(BitGenerator):
    pass


class Philox4x3210(BitGenerator):
    pass


class Generator:
    """cupy.random.Generator: the methods of the real one, drawn by NumPy."""

    def __init__(self, bit_generator):
        self.bit_generator = bit_generator
        self._rng = _np.random.Generator(bit_generator._numpy())


def _generator_method(name: str, spec: dict):
    def method(self, *args, **kwargs):
        np_method = getattr(self._rng, name, None)
        if np_method is None:
            raise NotImplementedError(f"cupy.random.Generator.{name} is not emulated")
        return _draw(f"Generator.{name}", np_method, spec, args, kwargs)
    method.__name__ = name
    return method


for _name, _spec in _GENERATOR_SPEC.items():
    if _spec["kind"] == "method":
        setattr(Generator, _name, _generator_method(_name, _spec))


def default_rng(seed=None):
    return Generator(XORWOW(seed))


class RandomState:
    """cupy.random.RandomState over numpy.random.RandomState."""

    def __init__(self, seed=None, method=None):
        self._rs = _np.random.RandomState(seed)

    def seed(self, seed=None):
        self._rs.seed(seed)

    def __getattr__(self, name):
        spec = _SPEC.get(name)
        np_method = getattr(self._rs, name, None)
        if spec is None or np_method is None or name.startswith("_"):
            raise AttributeError(f"'RandomState' object has no attribute '{name}'")
        return lambda *args, **kwargs: _draw(f"RandomState.{name}", np_method, spec, args, kwargs)


_state = RandomState()


def seed(seed=None):
    _state.seed(seed)


def get_random_state():
    return _state


def set_random_state(rs):
    global _state
    _state = rs


def reset_states():
    set_random_state(RandomState())


_DONE = {"BitGenerator": BitGenerator, "XORWOW": XORWOW, "MRG32k3a": MRG32k3a,
         "Philox4x3210": Philox4x3210, "Generator": Generator, "RandomState": RandomState,
         "default_rng": default_rng, "seed": seed, "get_random_state": get_random_state,
         "set_random_state": set_random_state, "reset_states": reset_states}


def _module_function(name: str, spec: dict):
    if not hasattr(_np.random.RandomState, name):
        return _core._not_emulated(f"cupy.random.{name}")

    def f(*args, **kwargs):
        return _draw(f"cupy.random.{name}", getattr(_state._rs, name), spec, args, kwargs)
    f.__name__ = name
    return f


for _name, _spec in _SPEC.items():
    if _name not in _DONE:
        setattr(_this, _name, _module_function(_name, _spec) if _spec["kind"] == "function"
                else _core._not_emulated(f"cupy.random.{_name}"))
del _name, _spec
