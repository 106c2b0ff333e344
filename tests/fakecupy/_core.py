"""fakecupy's machinery: the array, ufuncs, functions, counting. The package __init__ builds the modules."""
from __future__ import annotations

import contextlib
import collections
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as _np

_HERE = os.path.dirname(os.path.abspath(__file__))
# name -> fake object of the cupy module (filled by __init__): the operators and NumPy's dispatch use it
_fake: dict = {}
# NumPy module name -> fake module, for __array_function__ (filled by __init__)
_fake_modules: dict = {}
_SURFACE = json.loads(Path(_HERE, "surface.json").read_text())
# Keywords of ufunc.__call__ (its documentation) for the ufuncs whose docstring gives no signature.
_UFUNC_CALL_KEYWORDS = frozenset({"out", "casting", "dtype"})
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


# --- counting synchronisations and copies -------------------------------------------------------
class Counter:
    """What happened inside one ``counting()`` block: ``syncs``, ``copies`` and ``events``, a list of
    ``(kind, site, what)`` with kind "sync" (device->host) or "copy" (host->device)."""

    def __init__(self):
        self.events: list[tuple[str, str, str]] = []

    syncs = property(lambda self: sum(k == "sync" for k, _, _ in self.events))
    copies = property(lambda self: sum(k == "copy" for k, _, _ in self.events))

    def by_site(self, kind: str | None = None) -> collections.Counter:
        """{(kind, "file:line (function) what"): count}, or {site: count} for one ``kind``."""
        if kind is not None:
            return collections.Counter(f"{s} {w}" for k, s, w in self.events if k == kind)
        return collections.Counter((k, f"{s} {w}") for k, s, w in self.events)

    def report(self) -> str:
        lines = [f"{self.syncs} device->host synchronisations, {self.copies} host->device copies"]
        lines += [f"  {n:4d} x {k} at {site}" for (k, site), n in sorted(self.by_site().items())]
        return "\n".join(lines)


_active: list[Counter] = []


@contextlib.contextmanager
def counting():
    """Count synchronisations and copies made inside the block: ``with fakecupy.counting() as c: ...``."""
    counter = Counter()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)


def _site() -> str:
    frame = sys._getframe(2)
    backend = os.path.join("minivolo", "backend.py")
    while frame is not None and (frame.f_code.co_filename.startswith(_HERE)
                                 or frame.f_code.co_filename.endswith(backend)):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    for root in sys.path:
        if root and path.startswith(root.rstrip(os.sep) + os.sep):
            path = os.path.relpath(path, root)
            break
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"


def _event(kind: str, what: str) -> None:
    if _active:
        site = _site()
        for counter in _active:
            counter.events.append((kind, site, what))


# --- wrapping and unwrapping --------------------------------------------------------------------
def _unsupported(obj) -> TypeError:
    return TypeError(f"Unsupported type {type(obj)}")


def _not_emulated(qualname: str):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"{qualname} exists in CuPy but fakecupy does not emulate it "
                                  "(add it to tests/fakecupy/__init__.py)")
    stub.__name__ = stub.__qualname__ = qualname.rsplit(".", 1)[-1]
    return stub


def _check_kwargs(qualname: str, spec: dict | None, kwargs: dict, extra=frozenset()) -> None:
    """TypeError for a keyword argument that the real CuPy callable does not take."""
    if not kwargs or spec is None or spec.get("var_kw", True) and spec.get("params") is not None:
        return
    allowed = _UFUNC_CALL_KEYWORDS if spec.get("params") is None else spec["params"]
    for key in kwargs:
        if key not in allowed and key not in extra:
            raise TypeError(f"{qualname}() got an unexpected keyword argument '{key}'")


def _unwrap(x, host: str | None = None):
    """The NumPy data behind ``x``. ``host``: None (host arrays refused), "copy" (accepted and counted as
    a host->device copy) or "host" (accepted: CuPy reads them on the host)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        if host is None:
            raise _unsupported(x)
        if host == "copy":
            _event("copy", f"{x.dtype}{list(x.shape)} argument")
        return x
    if type(x) in (list, tuple):
        return type(x)(_unwrap(e, host) for e in x)
    return x


def _wrap(r):
    if isinstance(r, _np.ndarray):
        return ndarray._wrap(r)
    if isinstance(r, _np.generic):
        return ndarray._wrap(_np.asarray(r))
    if type(r) in (list, tuple):
        return type(r)(_wrap(e) for e in r)
    return r


def _call(qualname, np_func, spec, args, kwargs, host=None):
    """Check keywords, unwrap (refusing host arrays except the parameters in ``host``), call, wrap."""
    _check_kwargs(qualname, spec, kwargs)
    params = (spec or {}).get("params") or []
    host = host or {}
    args = [_unwrap(a, host.get(params[i]) if i < len(params) else None) for i, a in enumerate(args)]
    out = kwargs.get("out")
    kwargs = {k: _unwrap(v, host.get(k)) for k, v in kwargs.items()}
    result = np_func(*args, **kwargs)
    return out if isinstance(out, ndarray) else _wrap(result)


# --- the array ----------------------------------------------------------------------------------
def _index(key, setting: bool):
    """An index with device parts unwrapped; host index arrays count as copies, boolean masks in a read
    as synchronisations (the result's size depends on the data)."""
    parts = key if type(key) is tuple else (key,)
    out = []
    for k in parts:
        if isinstance(k, ndarray):
            if k.dtype == bool and not setting and k.ndim > 0:
                _event("sync", "boolean-mask index")
            k = k._a
        elif isinstance(k, (_np.ndarray, list)):
            k = _np.asarray(k)
            if k.dtype.kind not in "iub":
                raise IndexError(f"arrays used as indices must be of integer (or boolean) type, got {k.dtype}")
            _event("copy", f"host index {k.dtype}{list(k.shape)}")
            if k.dtype == bool and not setting:
                _event("sync", "boolean-mask index")
        out.append(k)
    return tuple(out) if type(key) is tuple else out[0]


def _binary(name, reflected=False):
    def op(self, other):
        f = _fake[name]
        return f(other, self) if reflected else f(self, other)
    return op


def _inplace(name):
    def op(self, other):
        _fake[name](self, other, out=self)
        return self
    return op


class ndarray:
    """A device array: NumPy data that only CuPy's rules can reach (see the module docstring)."""

    __slots__ = ("_a", "__weakref__")
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("fakecupy.ndarray: memptr and strides are not emulated")
        self._a = _np.empty(shape, dtype, order=order)

    @classmethod
    def _wrap(cls, a: _np.ndarray) -> "ndarray":
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # attributes
    shape = property(lambda self: self._a.shape)

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._wrap(self._a.T))
    mT = property(lambda self: ndarray._wrap(self._a.mT))
    real = property(lambda self: ndarray._wrap(self._a.real))
    imag = property(lambda self: ndarray._wrap(self._a.imag))
    base = property(lambda self: None if self._a.base is None else ndarray._wrap(self._a.base))
    device = property(lambda self: _Device(0))

    # NumPy interoperability: explicit only
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        fake = _fake.get(ufunc.__name__)
        if fake is None or not (isinstance(fake, ufunc_type) or ufunc.__name__ == "matmul"):
            return NotImplemented
        if method == "__call__":
            return fake(*inputs, **kwargs)
        if not isinstance(fake, ufunc_type) or method not in _SURFACE["ufunc"]:
            return NotImplemented
        return getattr(fake, method)(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        module = _fake_modules.get(func.__module__)
        fake = getattr(module, func.__name__, None) if module is not None else None
        if fake is None or getattr(fake, "_stub", False):
            return NotImplemented
        return fake(*args, **kwargs)

    # device -> host
    def get(self, stream=None, order="C", out=None, blocking=True):
        _event("sync", ".get()")
        if out is not None:
            out[...] = self._a
            return out
        return _np.array(self._a, order=order)

    def item(self, *args):
        _event("sync", ".item()")
        return self._a.item(*args)

    def tolist(self):
        _event("sync", ".tolist()")
        return self._a.tolist()

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        _event("copy", f".set({arr.dtype}{list(arr.shape)})")
        self._a[...] = arr

    def _scalar(self, convert, what):
        _event("sync", what)
        return convert(self._a)

    __float__ = lambda self: self._scalar(float, "float()")
    __int__ = lambda self: self._scalar(int, "int()")
    __bool__ = lambda self: self._scalar(bool, "bool()")
    __complex__ = lambda self: self._scalar(complex, "complex()")
    __index__ = lambda self: self._scalar(lambda a: a.__index__(), "index()")
    __repr__ = lambda self: self._scalar(repr, "repr()")
    __str__ = lambda self: self._scalar(str, "str()")
    __format__ = lambda self, spec: self._scalar(lambda a: format(a, spec), "format()")

    def __contains__(self, value):
        _event("sync", "in")
        return value in self._a

    # containers
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key):
        return _wrap(self._a[_index(key, setting=False)])

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            raise _unsupported(value)
        if isinstance(value, list):
            _event("copy", "list assigned")
        self._a[_index(key, setting=True)] = _unwrap(value, "host")

    def __copy__(self):
        return ndarray._wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._wrap(self._a.copy())

    def __reduce__(self):
        raise TypeError("fakecupy.ndarray cannot be pickled; call .get() first")

    # operators: the ufuncs, which refuse host arrays
    __add__, __radd__, __iadd__ = _binary("add"), _binary("add", True), _inplace("add")
    __sub__, __rsub__, __isub__ = _binary("subtract"), _binary("subtract", True), _inplace("subtract")
    __mul__, __rmul__, __imul__ = _binary("multiply"), _binary("multiply", True), _inplace("multiply")
    __truediv__, __rtruediv__, __itruediv__ = (_binary("true_divide"), _binary("true_divide", True),
                                               _inplace("true_divide"))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (_binary("floor_divide"), _binary("floor_divide", True),
                                                  _inplace("floor_divide"))
    __mod__, __rmod__, __imod__ = _binary("remainder"), _binary("remainder", True), _inplace("remainder")
    __pow__, __rpow__, __ipow__ = _binary("power"), _binary("power", True), _inplace("power")
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __and__, __rand__, __iand__ = _binary("bitwise_and"), _binary("bitwise_and", True), _inplace("bitwise_and")
    __or__, __ror__, __ior__ = _binary("bitwise_or"), _binary("bitwise_or", True), _inplace("bitwise_or")
    __xor__, __rxor__, __ixor__ = _binary("bitwise_xor"), _binary("bitwise_xor", True), _inplace("bitwise_xor")
    __lshift__, __rshift__ = _binary("left_shift"), _binary("right_shift")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")
    __lt__, __le__ = _binary("less"), _binary("less_equal")
    __gt__, __ge__ = _binary("greater"), _binary("greater_equal")
    __divmod__ = _binary("divmod")
    __neg__ = lambda self: _fake["negative"](self)
    __pos__ = lambda self: _fake["positive"](self)
    __abs__ = lambda self: _fake["absolute"](self)
    __invert__ = lambda self: _fake["invert"](self)


# ndarray methods from the surface; those that read data-dependent sizes or bytes synchronise
_SYNC_METHODS = {"nonzero", "tobytes", "tofile", "dump", "dumps"}
_HOST_METHOD_ARGS = {"take": {"indices": "copy"}, "put": {"indices": "copy"}}


def _method(name: str, spec: dict):
    def method(self, *args, **kwargs):
        if name in _SYNC_METHODS:
            _event("sync", f".{name}()")
        np_method = getattr(self._a, name, None)
        if np_method is None:
            raise NotImplementedError(f"cupy.ndarray.{name} exists in CuPy but fakecupy does not emulate it")
        return _call(f"ndarray.{name}", np_method, spec, args, kwargs, _HOST_METHOD_ARGS.get(name))
    method.__name__ = name
    return method


for _name, _spec in _SURFACE["ndarray"].items():
    if _spec["kind"] == "method" and _name not in vars(ndarray):
        setattr(ndarray, _name, _method(_name, _spec))
    elif _spec["kind"] == "attribute" and _name not in vars(ndarray):
        setattr(ndarray, _name, property(_not_emulated(f"cupy.ndarray.{_name}")))


class ufunc:
    """A CuPy ufunc over the NumPy (or SciPy) one: refuses host arrays and lists, checks keywords."""

    def __init__(self, qualname: str, np_ufunc, spec: dict):
        self._qualname, self._np, self._spec = qualname, np_ufunc, spec
        self.__name__ = self.name = qualname.rsplit(".", 1)[-1]
        self.nin = getattr(np_ufunc, "nin", 2)
        self.nout = getattr(np_ufunc, "nout", 1)
        self.nargs = self.nin + self.nout
        self.types = getattr(np_ufunc, "types", [])

    def __repr__(self):
        return f"<ufunc '{self.name}'>"

    def __call__(self, *args, **kwargs):
        for a in args:
            if type(a) in (list, tuple) or isinstance(a, _np.ndarray):
                raise _unsupported(a)
        if self._np is None:
            raise NotImplementedError(f"{self._qualname} exists in CuPy but fakecupy does not emulate it")
        return _call(self._qualname, self._np, self._spec, args, kwargs)

    def _method(self, name, args, kwargs, host=None):
        np_method = getattr(self._np, name, None)
        if np_method is None:
            raise NotImplementedError(f"{self._qualname}.{name} is not emulated")
        return _call(f"{self._qualname}.{name}", np_method, _SURFACE["ufunc"][name], args, kwargs, host)

    def reduce(self, *args, **kwargs):
        return self._method("reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return self._method("accumulate", args, kwargs)

    def reduceat(self, *args, **kwargs):
        return self._method("reduceat", args, kwargs, {"indices": "copy"})

    def outer(self, *args, **kwargs):
        return self._method("outer", args, kwargs)

    def at(self, *args, **kwargs):
        self._method("at", args, kwargs, {"indices": "copy"})


ufunc_type = ufunc


# --- module functions ---------------------------------------------------------------------------
def _function(qualname: str, np_func, spec: dict, host: dict | None = None, sync: bool = False):
    if np_func is None:
        stub = _not_emulated(qualname)
        stub._stub = True
        return stub

    def f(*args, **kwargs):
        if sync:
            _event("sync", qualname.rsplit(".", 1)[-1] + "()")
        return _call(qualname, np_func, spec, args, kwargs, host)
    f.__name__ = f.__qualname__ = qualname.rsplit(".", 1)[-1]
    f.__doc__ = f"{qualname}: numpy's {qualname.rsplit('.', 1)[-1]} under CuPy's rules."
    return f


def _to_device(a, dtype=None, copy=None, order=None):
    """``a`` on the device: device arrays stay (cast if asked); host data is copied once (counted)."""
    if isinstance(a, ndarray):
        r = a._a.astype(dtype, copy=bool(copy)) if dtype is not None else (a._a.copy() if copy else a._a)
        return ndarray._wrap(r)
    if type(a) in (list, tuple) and any(isinstance(e, ndarray) for e in _flatten(a)):
        # a nested sequence of device arrays: CuPy builds it on the device
        return ndarray._wrap(_np.array(_unwrap(a), dtype=dtype, order=order or "K"))
    host = _np.array(a, dtype=dtype, order=order or "K", copy=True)
    _event("copy", f"asarray({type(a).__name__} {host.dtype}{list(host.shape)})")
    return ndarray._wrap(host)


def _flatten(seq):
    for e in seq:
        if type(e) in (list, tuple):
            yield from _flatten(e)
        else:
            yield e


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    return _to_device(a, dtype, copy, order)


def asanyarray(a, dtype=None, order=None, *, blocking=False):
    return _to_device(a, dtype, None, order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    r = _to_device(obj, dtype, copy, order)
    return ndarray._wrap(r._a.reshape((1,) * (ndmin - r.ndim) + r.shape)) if ndmin > r.ndim else r


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    return _fake_modules["numpy"] if any(isinstance(a, ndarray) for a in args) else _np


_allclose_like = {"allclose", "array_equal", "array_equiv"}  # NumPy: a Python bool; CuPy: a 0-d array

# functions whose result size depends on the data: CuPy reads it back (a synchronisation)
_SYNC_FUNCTIONS = {"nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract", "trim_zeros"}
# parameters that may be host arrays, and whether CuPy copies them to the device
_HOST_ARGS = {"take": {"indices": "copy"}, "split": {"indices_or_sections": "host"},
              "array_split": {"indices_or_sections": "host"}, "pad": {"pad_width": "host"}}
_SPECIAL = {"asarray": asarray, "asanyarray": asanyarray, "array": array, "asnumpy": asnumpy,
            "get_array_module": get_array_module}


def _stub_class(qualname: str, spec: dict):
    if "exception" in spec:
        import builtins
        return type(qualname.rsplit(".", 1)[-1], (getattr(builtins, spec["exception"], Exception),), {})

    def init(self, *args, **kwargs):
        raise NotImplementedError(f"{qualname} exists in CuPy but fakecupy does not emulate it")
    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": init, "_stub": True})


def _populate(module, modname: str, np_module, done: dict) -> None:
    """Give ``module`` every name of the real CuPy module ``modname`` (surface.json)."""
    for name, spec in _SURFACE["modules"][modname].items():
        qualname = f"{modname}.{name}"
        if name in done:
            value = done[name]
        elif spec["kind"] == "ufunc":
            np_obj = getattr(np_module, name, None)
            value = ufunc(qualname, np_obj if callable(np_obj) else None, spec)
        elif spec["kind"] == "function":
            np_obj = getattr(np_module, name, None)
            if name in _allclose_like and np_obj is not None:
                np_obj = (lambda g: lambda *a, **k: _np.asarray(g(*a, **k)))(np_obj)
            value = _function(qualname, np_obj if callable(np_obj) else None, spec,
                              _HOST_ARGS.get(name), name in _SYNC_FUNCTIONS)
        elif spec.get("numpy"):
            value = getattr(np_module, name)
        elif spec["kind"] == "class":
            value = _stub_class(qualname, spec)
        elif spec["kind"] == "constant" and "value" in spec:
            value = spec["value"]
        elif spec["kind"] == "module":
            value = types.ModuleType(qualname, f"{qualname}: not emulated by fakecupy")
        else:
            value = _not_emulated(qualname)
        setattr(module, name, value)


# cupy.cuda, hand-made: what minivolo and the benchmarks use
cuda = types.ModuleType("fakecupy.cuda", "cupy.cuda, one emulated device (id 0)")


class _CUDARuntimeError(RuntimeError):
    pass


class _Device:
    """cupy.cuda.Device: ``Device(i).use()``, ``with Device(i):``, ``Device().synchronize()``."""
    count = 1
    _current = 0

    def __init__(self, device=None):
        self.id = _Device._current if device is None else int(device)

    def _check(self):
        if not 0 <= self.id < _Device.count:
            raise _CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    def use(self):
        self._check()
        _Device._current = self.id

    def __enter__(self):
        self._check()
        self._previous, _Device._current = _Device._current, self.id
        return self

    def __exit__(self, *exc):
        _Device._current = self._previous

    def synchronize(self):
        self._check()
        _event("sync", "Device.synchronize()")

    compute_capability = property(lambda self: "90")
    mem_info = property(lambda self: (0, 0))

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class _Event:
    """cupy.cuda.Event: records host time (nothing is asynchronous here)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        _event("sync", "Event.synchronize()")

    done = property(lambda self: True)


class _Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def synchronize(self):
        _event("sync", "Stream.synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


_Stream.null = _Stream(null=True)


def _elapsed_ms(start: _Event, end: _Event) -> float:
    return (end.time - start.time) * 1e3


class _MemoryPool:
    """Reports no memory: fakecupy does not track device memory."""

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_memory_pool, _pinned_pool = _MemoryPool(), _MemoryPool()
_runtime = types.ModuleType("fakecupy.cuda.runtime")
_runtime.getDeviceCount = lambda: _Device.count
_runtime.getDevice = lambda: _Device._current
_runtime.getDeviceProperties = lambda i: {"name": b"fakecupy (NumPy)", "totalGlobalMem": 0, "major": 9,
                                          "minor": 0}
_runtime.runtimeGetVersion = lambda: 13000
_runtime.driverGetVersion = lambda: 13000
_runtime.CUDARuntimeError = _CUDARuntimeError
_runtime.deviceSynchronize = lambda: _event("sync", "deviceSynchronize()")
cuda.runtime = _runtime
cuda.is_available = lambda: True
cuda.Device = _Device
cuda.Event = _Event
cuda.Stream = _Stream
cuda.get_current_stream = lambda device_id=None: _Stream.null
cuda.get_elapsed_time = _elapsed_ms
cuda.get_device_id = lambda: _Device._current
cuda.CUDARuntimeError = _CUDARuntimeError
cuda.memory = types.ModuleType("fakecupy.cuda.memory")
cuda.memory.OutOfMemoryError = type("OutOfMemoryError", (MemoryError,), {})
cuda.MemoryPool = _MemoryPool

